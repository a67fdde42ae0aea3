"""Small pieces every evaluation report uses: Markdown tables and PNG figures in a run directory."""

from __future__ import annotations

import io
from typing import Any, Sequence


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


def new_figure(ncols: int = 1, width: float = 6.5, height: float = 4.0):
    """(figure, axes) on the Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height))
    return fig, axes


def save_figure(run: Any, rel: str, fig) -> str:
    """Write `fig` as PNG to run/rel (atomically, any RunDir filesystem); returns its URI."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    tmp = run.path(rel + ".tmp")
    with run.fs.open_output_stream(tmp) as f:
        f.write(buf.getvalue())
    run.fs.move(tmp, run.path(rel))
    return run.uri_of(rel)


def grouped_bars(run: Any, rel: str, names: Sequence[str], series: dict[str, Sequence[float]], ylabel: str, title: str) -> str:
    """One group of bars per name (a student), one bar per series (a judge, a prompt group) -> run/rel PNG."""
    fig, ax = new_figure(width=max(6.0, 1.2 * len(names)))
    width = 0.8 / max(1, len(series))
    for j, (label, values) in enumerate(series.items()):
        ax.bar([i + j * width for i in range(len(names))], list(values), width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], list(names), rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(run, rel, fig)
