"""The `lamini` command: parse arguments, build the stage's config, call the stage.

Thin on purpose: everything that does work lives in the library, and importing this module
loads no torch, transformers, vllm or deepspeed (`lamini --help` stays fast).

Exit status: 0 success; 1 rows missing, or ended as errors the config did not allow; 2 a bad
config or input (one line naming file and line); 3 the run was stopped because it could not
usefully go on (lamini.engines.abort.RunAborted: endpoint unreachable, key rejected, ...);
130 interrupted (Ctrl-C). Whatever a run wrote before stopping stays: re-running resumes it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from typing import TYPE_CHECKING

from lamini.analysis.config import AnalyzeConfig
from lamini.config import ResponsesConfig, StrictModel, load_config
from lamini.evaluate.config import (
    BenchStudentsConfig,
    EvalConfig,
    HallucinationConfig,
    ToxicityProbeConfig,
    UserOrientedConfig,
)
from lamini.generate.config import DatasetConfig, InstructionsConfig, ToxicityConfig
from lamini.herd.config import HerdConfig
from lamini.train.config import TrainConfig, TuneConfig

if TYPE_CHECKING:  # an annotation only: importing lamini.runs would load pyarrow for `lamini --help`
    from lamini.runs.summary import StageSummary

# subcommand -> (config class, "module:function" that takes the config and returns a StageSummary, help)
STAGES: dict[str, tuple[type[StrictModel], str, str]] = {
    "herd": (
        HerdConfig,
        "lamini.herd.run:run_herd",
        "The whole herd: build the dataset, train every student, evaluate them all, write one report (resumable).",
    ),
    "responses": (
        ResponsesConfig,
        "lamini.generate.responses:run_responses",
        "Teacher responses for whole instruction corpora (resumable; paper section 3.2).",
    ),
    "instructions": (
        InstructionsConfig,
        "lamini.generate.instructions:run_instructions",
        "Generate new instructions from seeds, example- and topic-guided, filtered (paper section 3.1).",
    ),
    "dataset": (
        DatasetConfig,
        "lamini.generate.dataset:run_dataset",
        "The whole section 3: generate, respond, filter, deduplicate, assemble D_ALL, analyse.",
    ),
    "filter-toxic": (
        ToxicityConfig,
        "lamini.generate.toxicity:run_filter_toxic",
        "Score instruction and response with detoxify on Ray actors; drop rows above a threshold.",
    ),
    "analyze": (
        AnalyzeConfig,
        "lamini.analysis.report:run_analyze",
        "Report Tables 1-2 (token statistics, MATTR) and Figure 2 (t-SNE) for a run or dataset.",
    ),
    "train": (
        TrainConfig,
        "lamini.train.trainer:run_train",
        "Fine-tune a student with Ray Train + DeepSpeed ZeRO; re-running resumes from the newest checkpoint.",
    ),
    "tune": (
        TuneConfig,
        "lamini.train.tune:run_tune",
        "Ray Tune search (learning rate, batch size, epochs) over training runs, with ASHA early stopping.",
    ),
    "probe hallucination": (
        HallucinationConfig,
        "lamini.evaluate.probes.hallucination:run_hallucination",
        "The 40 false-premise questions: student answers, LLM and human judges, Table 5.",
    ),
    "probe toxicity": (
        ToxicityProbeConfig,
        "lamini.evaluate.probes.toxicity:run_toxicity_probe",
        "RealToxicityPrompts continuations scored with detoxify, per prompt group and student: Table 6.",
    ),
    "probe user-oriented": (
        UserOrientedConfig,
        "lamini.evaluate.probes.user_oriented:run_user_oriented",
        "The user-oriented human evaluation: ~114 instructions, A-D rating sheets, LLM judges, Figure 5.",
    ),
    "eval": (
        EvalConfig,
        "lamini.evaluate.lm_eval.runner:run_eval",
        "Zero-shot lm-evaluation-harness tasks (the paper's 15) for every student: Tables 9-14, Figure 4.",
    ),
    "bench students": (
        BenchStudentsConfig,
        "lamini.evaluate.bench.run:run_bench_students",
        "Student throughput: tokens/s, requests/s, p50/p95 latency, peak memory per engine and batch size.",
    ),
}
# Two-word stages (`lamini probe toxicity`) are subcommands of a group command.
GROUPS = {"probe": "Probe students: hallucination, toxicity, user-oriented instructions.", "bench": "Benchmarks of students."}

# Stages whose one required input can be given positionally: `lamini analyze RUN_DIR`.
POSITIONAL = {"analyze": ("input", "Run directory or LaMini-schema Parquet file/folder to analyse.")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lamini", description="Distil a teacher LLM into small students on Ray.")
    sub = p.add_subparsers(dest="command", required=True)
    groups = {}
    for name, (cls, _, help_text) in STAGES.items():
        group, _, leaf = name.rpartition(" ")
        if group:
            if group not in groups:
                g = sub.add_parser(group, help=GROUPS[group], description=GROUPS[group])
                groups[group] = g.add_subparsers(dest="subcommand", required=True)
            s = groups[group].add_parser(leaf, help=help_text, description=help_text)
        else:
            s = sub.add_parser(name, help=help_text, description=help_text)
        s.set_defaults(stage=name)
        if name in POSITIONAL:
            field, field_help = POSITIONAL[name]
            s.add_argument(field, nargs="?", help=field_help)
        add_stage_arguments(s, cls)
    return p


def add_stage_arguments(s: argparse.ArgumentParser, cls: type[StrictModel]) -> None:
    s.add_argument("--config", "-c", help="YAML config for the stage (see configs/).")
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a config field, dotted path, YAML value (e.g. --set teacher.max_in_flight=32). Repeatable.",
    )
    if "limit" in cls.model_fields:
        s.add_argument("--limit", type=int, help="Process at most this many rows (shortcut for --set limit=N).")
    if "run_dir" in cls.model_fields:
        s.add_argument("--run-dir", help="Run directory (shortcut for --set run_dir=...).")
    s.add_argument("--json", action="store_true", help="Print the summary as JSON instead of one line.")
    s.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")


def config_from_args(cls: type[StrictModel], args: argparse.Namespace) -> StrictModel:
    overrides = list(args.overrides)
    for field, _ in POSITIONAL.values():
        if getattr(args, field, None) is not None:
            overrides.append(f"{field}={getattr(args, field)}")
    if getattr(args, "limit", None) is not None:
        overrides.append(f"limit={args.limit}")
    if getattr(args, "run_dir", None) is not None:
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(cls, args.config, overrides)


def run_stage(stage: str, args: argparse.Namespace) -> StageSummary:
    cls, ref, _ = STAGES[stage]
    cfg = config_from_args(cls, args)
    module, fn = ref.split(":")
    return getattr(importlib.import_module(module), fn)(cfg)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        summary = run_stage(args.stage, args)
    except KeyboardInterrupt:
        # Ctrl-C is a request, not a crash: one line and the shell's 128+SIGINT, no traceback.
        # Whatever the stage already wrote stays, and re-running the command resumes from it.
        print(f"lamini {args.stage}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # a clear one-line error for config and input problems
        from pydantic import ValidationError

        from lamini.corpus import CorpusError
        from lamini.engines.abort import RunAborted

        if isinstance(e, (ValidationError, CorpusError, FileNotFoundError, ValueError)):
            print(f"lamini {args.stage}: error: {e}", file=sys.stderr)
            return 2
        aborted = RunAborted.find(e)
        if aborted is not None:
            print(f"lamini {args.stage}: stopped: {aborted}; re-run the same command to resume", file=sys.stderr)
            return 3
        raise
    if args.json:
        from dataclasses import asdict

        print(json.dumps(asdict(summary), indent=2))
    else:
        print(summary.line())
    return exit_status(args.stage, summary)


def exit_status(stage: str, summary: StageSummary) -> int:
    """0 for success; 1 (with a line on stderr saying why) when rows went missing or ended as errors
    the config did not allow (`unallowed_errors`, a count only some stages report)."""
    if summary.missing:
        print(f"lamini {stage}: {summary.missing} rows ended neither as output nor as a recorded error", file=sys.stderr)
        return 1
    errors = getattr(summary, "unallowed_errors", 0)
    if errors:
        print(f"lamini {stage}: {errors} rows ended as errors (see the run's dataset/errors.parquet); re-run to retry "
              "them, or set allow_errors: true to accept them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
