"""Small pieces every report uses: Markdown tables, and PNG figures drawn on the Agg canvas and
written to a run directory."""

from __future__ import annotations

import io
from typing import Any, Protocol, Sequence


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """Headers + rows -> a GitHub Markdown table. Floats print with one decimal; None as an en dash.
    align: one character per column, l or r (default: first column left, the rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return f"{v:.1f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(":---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class FigureDir(Protocol):
    """Where a figure is written: a lamini.runs.rundir.RunDir (this module sits below runs, so it
    names only the two methods it calls)."""

    def write_bytes(self, rel: str, data: bytes) -> None: ...

    def uri_of(self, *parts: str) -> str: ...


def new_figure(width: float = 6.5, height: float = 4.0, ncols: int = 1, dpi: int = 120):
    """(figure, axes) on the Agg canvas: `ncols` axes side by side in a `width` x `height` inch
    figure. No pyplot: its global backend and figure list are left alone (cluster nodes, workers
    and tests have no display), and nothing has to be closed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def save_figure(run: FigureDir, rel: str, fig) -> str:
    """Write `fig` as PNG (at its own dpi) to run/rel, atomically on any RunDir filesystem; returns
    its URI. Layout is the caller's: call fig.tight_layout() (with its rect, if any) before."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    run.write_bytes(rel, buf.getvalue())
    return run.uri_of(rel)


def grouped_bars(run: FigureDir, rel: str, names: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str) -> str:
    """One group of bars per name (a student), one bar per series (a judge, a prompt group) -> run/rel PNG."""
    fig, ax = new_figure(width=max(6.0, 1.2 * len(names)))
    width = 0.8 / max(1, len(series))
    for j, (label, values) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(names))], list(values), width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], list(names), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(run, rel, fig)


def stacked_bars(run: FigureDir, rel: str, names: Sequence[str], shares: dict[str, Sequence[float]], colors: Sequence[str],
                 xlabel: str, title: str) -> str:
    """One horizontal bar per name (a model), split into segments (e.g. the share of A/B/C/D, in
    order, summing to 100) -> run/rel PNG. The layout of LaMini-LM's Figure 5."""
    fig, ax = new_figure(width=7.5, height=max(2.5, 0.45 * len(names) + 1.5))
    left = [0.0] * len(names)
    for (label, values), color in zip(shares.items(), colors):
        values = list(values)
        bars = ax.barh(list(names), values, left=left, color=color, label=label, edgecolor="white")
        for bar, v, x in zip(bars, values, left):
            if v >= 6:  # a label fits the segment
                ax.text(x + v / 2, bar.get_y() + bar.get_height() / 2, f"{v:.0f}", ha="center", va="center", fontsize=8)
        left = [x + v for x, v in zip(left, values)]
    ax.invert_yaxis()  # the first model on top
    ax.set_xlim(0, 100)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return save_figure(run, rel, fig)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters over any set of labels, from (label of rater 1, label of rater 2)
    per item both rated; None when undefined (no pairs, or chance agreement is 1)."""
    from collections import Counter

    n = len(pairs)
    if not n:
        return None
    po = sum(a == b for a, b in pairs) / n
    ca, cb = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    pe = sum(ca[k] * cb[k] for k in ca) / (n * n)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def agreement(a: Any, b: Any, item: tuple[str, str], label: str) -> dict[str, Any]:
    """Two judges' tables (pyarrow) over the items both labelled -> {n, agree (fraction), cohen_kappa}.
    item: the two columns naming an item (student, question); label: the column of the judgement
    (null = not judged, left out)."""
    la = {(r[item[0]], r[item[1]]): r[label] for r in a.to_pylist() if r[label]}
    pairs = [(x, r[label]) for r in b.to_pylist() if r[label] and (x := la.get((r[item[0]], r[item[1]])))]
    k = cohen_kappa(pairs)
    return {
        "n": len(pairs),
        "agree": round(sum(x == y for x, y in pairs) / len(pairs), 4) if pairs else None,
        "cohen_kappa": None if k is None else round(k, 4),
    }
