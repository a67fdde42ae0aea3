"""The paper's lm-evaluation-harness benchmark: 15 zero-shot tasks and the metric reported for each.

LaMini-LM (Table 8, Tables 9-14) evaluates every student on these tasks, in this order, and reports
one metric per task: length-normalised accuracy (acc_norm) where the choices differ in length and
the harness offers it, F1 for ReCoRD, plain accuracy elsewhere. `EvalConfig.metrics` overrides the
choice per task (e.g. {piqa: acc}); a task outside the 15 reports `acc` unless overridden.

Pure data and pure functions: nothing here imports lm_eval (the runner checks the names against
the installed harness, and a test does too).
"""

from __future__ import annotations

from dataclasses import dataclass

from lamini.evaluate.config import EvalConfig


@dataclass(frozen=True)
class PaperTask:
    """One benchmark task: lm-eval's name, the paper's display name, the metric the paper reports."""

    name: str
    display: str
    metric: str


# Table 8 of LaMini-LM, in the paper's column order. EvalConfig.metrics overrides `metric`.
PAPER_TASKS: tuple[PaperTask, ...] = (
    PaperTask("openbookqa", "OpenBookQA", "acc_norm"),
    PaperTask("sciq", "SciQ", "acc_norm"),
    PaperTask("race", "RACE", "acc"),
    PaperTask("arc_challenge", "ARC-C", "acc_norm"),
    PaperTask("piqa", "PIQA", "acc_norm"),
    PaperTask("record", "ReCoRD", "f1"),
    PaperTask("sst2", "SST", "acc"),
    PaperTask("mrpc", "MRPC", "acc"),
    PaperTask("rte", "RTE", "acc"),
    PaperTask("mnli", "MNLI", "acc"),
    PaperTask("mnli_mismatch", "MNLI (mm)", "acc"),
    PaperTask("wsc273", "Winograd", "acc"),
    PaperTask("winogrande", "WinoGrande", "acc"),
    PaperTask("wic", "WiC", "acc"),
    PaperTask("hellaswag", "HellaSwag", "acc_norm"),
)

PAPER_TASK_NAMES: tuple[str, ...] = tuple(t.name for t in PAPER_TASKS)
_BY_NAME: dict[str, PaperTask] = {t.name: t for t in PAPER_TASKS}
DEFAULT_METRIC = "acc"


def eval_tasks(cfg: EvalConfig) -> list[str]:
    """The task names to run: cfg.tasks in its order (duplicates dropped), or the paper's 15."""
    return list(dict.fromkeys(cfg.tasks)) if cfg.tasks else list(PAPER_TASK_NAMES)


def metric_for(task: str, overrides: dict[str, str] | None = None) -> str:
    """Task name (+ EvalConfig.metrics) -> the metric reported for it: the override, the paper's, else acc."""
    if overrides and task in overrides:
        return overrides[task]
    t = _BY_NAME.get(task)
    return t.metric if t else DEFAULT_METRIC


def display_name(task: str) -> str:
    """Task name -> the paper's label for it (e.g. arc_challenge -> ARC-C); other tasks keep their name."""
    t = _BY_NAME.get(task)
    return t.display if t else task


def metric_key(metric: str) -> str:
    """A metric as configured -> its key in lm-eval's results: `acc` -> `acc,none`.

    A metric with a filter already (`exact_match,strict-match`) is kept as written, so generation
    tasks with several filters can be reported too.
    """
    return metric if "," in metric else f"{metric},none"


def stderr_key(metric: str) -> str:
    """`acc` -> `acc_stderr,none`; `exact_match,strict-match` -> `exact_match_stderr,strict-match`."""
    name, _, filt = metric_key(metric).partition(",")
    return f"{name}_stderr,{filt}"
