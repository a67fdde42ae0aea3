"""Reporting `lamini eval`: per-pair records -> results.json, Tables 9-14 (Markdown) and Figure 4 (PNG).

A record is what one (model, task) Ray task returned (see lamini.evaluate.lm_eval.runner): every
metric lm-eval reported, the number of examples, the wrapper flag, the backend, the model's family,
model_type and parameter count; or `status: failed` with the reason. The metric reported for a task
is chosen here, not in the worker, so changing `EvalConfig.metrics` re-reports without re-running.

Pure functions of the records; `figure4` draws with matplotlib (imported lazily).
"""

from __future__ import annotations

import math
from typing import Any

from lamini.evaluate.lm_eval.tasks import (
    display_name,
    metric_for,
    metric_key,
    stderr_key,
)

# model_type (from the model's config) -> the family name of the paper's tables.
FAMILY_LABELS = {
    "t5": "T5 / Flan-T5",
    "gpt2": "GPT-2 / Cerebras-GPT",
    "gpt_neo": "GPT-Neo",
    "gptj": "GPT-J",
    "llama": "LLaMA",
}


def _number(x: Any) -> float | None:
    """lm-eval writes "N/A" for a stderr it did not compute (bootstrap_iters 0); keep real numbers only."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def score_of(record: dict[str, Any], metric: str) -> dict[str, Any]:
    """An ok record + the metric to report -> {metric, value, stderr, n, wrapper}; KeyError names what exists."""
    found = record.get("all_metrics") or {}
    value = _number(found.get(metric_key(metric)))
    if value is None:
        have = sorted({k.split(",")[0] for k in found if "_stderr" not in k and k != "alias"})
        raise KeyError(f"task {record['task']} reported no {metric!r} (it has: {', '.join(have) or 'nothing'})")
    return {
        "metric": metric,
        "value": value,
        "stderr": _number(found.get(stderr_key(metric))),
        "n": int(record["n"]),
        "wrapper": record["wrapper"],
    }


def summarize(
    records: list[dict[str, Any]], models: list[str], tasks: list[str], metrics: dict[str, str]
) -> dict[str, Any]:
    """Per-pair records -> the results.json document.

    models/tasks: the order of the config (tables and plots keep it). For each model: family,
    model_type, params, backend, wrapper, `scores` per task, `average` (mean of the task scores),
    `micro_average` (mean weighted by each task's examples) and how many tasks they cover.
    `failures` lists every (model, task) without a score, with its reason; `missing` counts them.
    """
    by_pair = {(r["model"], r["task"]): r for r in records}
    out_models: dict[str, Any] = {}
    failures: list[dict[str, str]] = []
    for name in models:
        info: dict[str, Any] = {"family": None, "model_type": None, "params": None, "backend": None, "wrapper": None}
        scores: dict[str, Any] = {}
        for task in tasks:
            rec = by_pair.get((name, task))
            if rec is None:
                failures.append({"model": name, "task": task, "error": "not run"})
                continue
            info = {k: v if v is not None else rec.get(k) for k, v in info.items()}
            if rec.get("status") != "ok":
                failures.append({"model": name, "task": task, "error": rec.get("error", "unknown error")})
                continue
            try:
                scores[task] = score_of(rec, metric_for(task, metrics))
            except KeyError as e:
                failures.append({"model": name, "task": task, "error": str(e.args[0])})
        values = [s["value"] for s in scores.values()]
        weights = [s["n"] for s in scores.values()]
        info["scores"] = scores
        info["average"] = sum(values) / len(values) if values else None
        info["micro_average"] = sum(v * w for v, w in zip(values, weights)) / sum(weights) if sum(weights) else None
        info["tasks_scored"] = len(scores)
        out_models[name] = info
    return {
        "tasks": tasks,
        "metrics": {t: metric_for(t, metrics) for t in tasks},
        "models": out_models,
        "failures": failures,
        "missing": len(failures),
    }


def format_params(n: float | None) -> str:
    """124e6 -> 124M, 1.3e9 -> 1.3B, 61440 -> 61K."""
    if not n:
        return "?"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.0f}{unit}" if v >= 100 else f"{v:.3g}{unit}"
    return str(int(n))


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def family_groups(summary: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """[(table title, model names)], one group per student `group` (else per model_type), in the
    order models first appear."""
    groups: dict[str, list[str]] = {}
    for name, m in summary["models"].items():
        mt = m.get("model_type") or "unknown"
        groups.setdefault(m.get("group") or FAMILY_LABELS.get(mt, mt), []).append(name)
    return list(groups.items())


def markdown_tables(summary: dict[str, Any]) -> str:
    """results.json document -> Markdown: one table per model family (rows = tasks, columns = models,
    as the paper's Tables 9-14), each with its Average and Micro-average rows, then an overview of all
    models and the failures."""
    tasks, metrics = summary["tasks"], summary["metrics"]
    lines = [
        "# lm-evaluation-harness, zero-shot (layout of LaMini-LM Tables 9-14)",
        "",
        (
            "Scores in %, each task's reported metric in the second column (the paper's, Table 8, unless "
            "`metrics` overrides it). **Average**: the unweighted mean of a model's task scores. "
            "**Micro-average**: the mean weighted by each task's number of examples. "
            "— marks a task with no score (see Failures)."
        ),
    ]
    for title, names in family_groups(summary):
        models = [summary["models"][n] for n in names]
        lines += ["", f"## {title}", ""]
        lines.append("| Task | Metric | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---:|" * len(names))
        lines.append("| *Parameters* | | " + " | ".join(format_params(m["params"]) for m in models) + " |")
        lines.append("| *Wrapper* | | " + " | ".join(m["wrapper"] or "?" for m in models) + " |")
        for t in tasks:
            cells = [_pct(m["scores"].get(t, {}).get("value")) for m in models]
            lines.append(f"| {display_name(t)} | {metrics[t]} | " + " | ".join(cells) + " |")
        lines.append("| **Average** | mean | " + " | ".join(_avg_cell(m, "average", len(tasks)) for m in models) + " |")
        micro = " | ".join(_avg_cell(m, "micro_average", len(tasks)) for m in models)
        lines.append(f"| **Micro-average** | example-weighted | {micro} |")
    lines += ["", "## All models", ""]
    lines.append("| Model | Family | Params | Backend | Wrapper | Average | Micro-average | Tasks |")
    lines.append("|---|---|---:|---|---|---:|---:|---:|")
    for name, m in summary["models"].items():
        lines.append(
            f"| {name} | {m['family'] or '?'} | {format_params(m['params'])} | {m['backend'] or '?'} | "
            f"{m['wrapper'] or '?'} | {_pct(m['average'])} | {_pct(m['micro_average'])} | "
            f"{m['tasks_scored']}/{len(tasks)} |"
        )
    if summary["failures"]:
        lines += ["", "## Failures", "", "| Model | Task | Reason |", "|---|---|---|"]
        for f in summary["failures"]:
            reason = " ".join(str(f["error"]).split()).replace("|", "\\|")
            lines.append(f"| {f['model']} | {f['task']} | {reason[:300]} |")
    return "\n".join(lines) + "\n"


def _avg_cell(m: dict[str, Any], key: str, n_tasks: int) -> str:
    # An average over fewer tasks than the others is not comparable: say so in the cell.
    cell = _pct(m[key])
    return cell if m[key] is None or m["tasks_scored"] == n_tasks else f"{cell} ({m['tasks_scored']}/{n_tasks})"


def figure4(summary: dict[str, Any]):
    """Figure 4: average score (%) vs parameters (log x), encoder-decoder and decoder-only as two series,
    each point labelled with its model -> a matplotlib Figure (save it with lamini.reporting.save_figure).
    Models without an average or a parameter count are left out."""
    from matplotlib.ticker import FuncFormatter

    from lamini.reporting import new_figure

    fig, ax = new_figure(width=7, height=4.5)
    series = (("encoder-decoder", "Encoder-decoder", "o"), ("decoder", "Decoder-only", "s"))
    for family, label, marker in series:
        pts = sorted(
            (m["params"], 100 * m["average"], name)
            for name, m in summary["models"].items()
            if m["family"] == family and m["average"] is not None and m["params"]
        )
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=label)
        for x, y, name in pts:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_params(x)))
    ax.set_xlabel("Parameters")
    ax.set_ylabel(f"Average score (%), {len(summary['tasks'])} tasks")
    ax.set_title("Average zero-shot score vs model size (LaMini-LM Figure 4)")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    return fig
