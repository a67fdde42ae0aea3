"""`lamini analyze`: Tables 1-2 and Figure 2 of the paper for a run or a LaMini-schema dataset.

    from lamini.analysis.report import run_analyze
    summary = run_analyze(AnalyzeConfig(input="runs/dataset"))   # -> runs/dataset/report/report.md

In: ``cfg.input``, a run directory (every ``dataset/*.parquet`` but the failed requests,
``errors.parquet``, is read: ``lamini_instruction.parquet`` of a dataset run, whose toxic rows
are set aside in ``rejected/``, ``responses.parquet`` of a responses run) or a Parquet file/folder with the
columns ``instruction``, ``response`` and ``cfg.group_by`` (in a `lamini filter-toxic` run
folder, ``dropped.parquet`` beside ``kept.parquet`` is likewise left out).
Out, in ``cfg.output_dir`` (default ``INPUT/report``; beside the file for a file input):
``report.md`` (both tables, ours beside the paper's where it has the subset, images linked),
``table1.json``, ``table2.json``, ``lengths.png`` + ``.json``, ``tsne_<a>__<b>.png`` + ``.json``.

Plan: Ray Data reads only the three columns; ``map_batches`` turns each batch into a pickled
:class:`~lamini.analysis.stats.BlockSummary` (tokenising and hashing run in parallel on the
workers); the driver folds them in stream order (``preserve_order``, so the MATTR of the
concatenated stream is deterministic) into a :class:`~lamini.analysis.stats.StatsAccumulator`.
Driver memory is bounded as documented in :mod:`lamini.analysis.stats`. The t-SNE sample (a
seeded bottom-k sketch, ``cfg.tsne_sample`` per subset) is embedded and projected on the driver.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lamini.analysis.config import AnalyzeConfig
from lamini.analysis.embed import (
    TFIDF_SVD,
    get_embedder,
    scatter_figure,
    tsne_2d,
    tsne_perplexity,
)
from lamini.analysis.stats import StatsAccumulator, SubsetStats, summarise_block
from lamini.corpus.schema import INSTRUCTION, RESPONSE
from lamini.reporting import new_figure, save_figure
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

BATCH_ROWS = 4096  # rows per map_batches call: ~64 KB of hashes per subset back to the driver
# Rows a run set aside, never part of the dataset: failed requests (no response to analyse), and
# the rows `lamini dataset`'s toxicity filter dropped where runs written before `rejected/` existed
# kept them (dataset/toxic_dropped.parquet; a re-run of such a run removes it).
EXCLUDED_FILES = {"errors.parquet", "toxic_dropped.parquet"}


@dataclass
class AnalyzeSummary:
    """What `lamini analyze` did; ``line()`` is the CLI's one-line summary."""

    report_path: str
    output_dir: str
    rows: int
    subsets: dict[str, int]
    files: list[str]
    tsne: list[str] = field(default_factory=list)  # PNG names written
    embedding: str = ""
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    missing: int = 0  # rows that could not be analysed: none, every row read is counted

    def line(self) -> str:
        return (f"analyze: {self.rows:,} rows in {len(self.subsets)} subsets, {len(self.tsne)} t-SNE plot(s)"
                f" -> {self.report_path} ({self.wall_s:.1f} s)")  # fmt: skip


# ----------------------------------------------------------------------------- input


def _toxic_dropped(path: str, found: set[str]) -> bool:
    """`lamini filter-toxic`'s dropped rows: dropped.parquet with its kept.parquet beside it."""
    from lamini.scoring.detoxify import DROPPED, KEPT

    folder, name = posixpath.split(path)
    return name == DROPPED and posixpath.join(folder, KEPT) in found


def resolve_input(uri: str) -> tuple[pafs.FileSystem, list[str], str]:
    """Input path/URI in; its filesystem, the Parquet files to read and the default report URI out."""
    local = "://" not in uri
    if local:
        uri = os.path.abspath(uri)
    fs, path = pafs.FileSystem.from_uri(uri)
    as_uri = (lambda p: p) if local else (lambda p: f"{uri.split('://', 1)[0]}://{p}")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"analyze input {uri} does not exist")
    if info.type == pafs.FileType.File:
        return fs, [path], as_uri(posixpath.join(posixpath.dirname(path), "report"))
    dataset = posixpath.join(path, "dataset")
    run_dir = fs.get_file_info(dataset).type == pafs.FileType.Directory
    sel = pafs.FileSelector(dataset if run_dir else path, recursive=not run_dir)
    report_dir = posixpath.join(path, "report")
    found = {
        i.path for i in fs.get_file_info(sel)
        if i.type == pafs.FileType.File and i.path.endswith(".parquet") and not i.path.startswith(report_dir + "/")
    }  # fmt: skip
    files = sorted(p for p in found if posixpath.basename(p) not in EXCLUDED_FILES and not _toxic_dropped(p, found))
    if not files:
        where = f"{dataset}" if run_dir else path
        raise FileNotFoundError(f"analyze input {uri}: no Parquet files in {where}")
    return fs, files, as_uri(report_dir)


def check_columns(fs: pafs.FileSystem, files: list[str], columns: list[str]) -> None:
    """Raise ValueError naming the first file that lacks one of ``columns``."""
    for f in files:
        missing = [c for c in columns if c not in pq.read_schema(f, filesystem=fs).names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {missing}; analyze needs {columns}")


# ----------------------------------------------------------------------------- Ray Data pass


def _summarise_batch(batch: pa.Table, **kwargs: Any) -> pa.Table:
    # One row per batch: Ray Data moves Arrow tables, so the summary rides as pickled bytes.
    return pa.table({"summary": pa.array([pickle.dumps(summarise_block(batch, **kwargs))], pa.binary())})


def collect_stats(cfg: AnalyzeConfig, fs: pafs.FileSystem, files: list[str]) -> StatsAccumulator:
    """One streaming pass over ``files``: per-batch summaries on Ray workers, folded on the driver."""
    import ray

    from lamini.runs.ray_env import init_ray

    init_ray(cfg.ray)
    columns = [INSTRUCTION, RESPONSE, cfg.group_by]
    ds = ray.data.read_parquet(files, filesystem=fs).select_columns(columns)  # projection is pushed into the read
    kwargs = dict(group_by=cfg.group_by, tokenizer=cfg.tokenizer, window=cfg.mattr_window,
                  sample_k=cfg.tsne_sample, seed=cfg.seed)  # fmt: skip
    ds = ds.map_batches(_summarise_batch, batch_format="pyarrow", batch_size=BATCH_ROWS, fn_kwargs=kwargs)
    # The MATTR of a concatenated stream depends (slightly, at block joins) on the order of the
    # blocks: keep file order so a re-run gives the same number. This copy of the context
    # belongs to this dataset only.
    ds.context.execution_options.preserve_order = True
    acc = StatsAccumulator(cfg.mattr_window, cfg.tsne_sample)
    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        for payload in batch.column("summary").to_pylist():
            acc.add(pickle.loads(payload))
    return acc


# ----------------------------------------------------------------------------- paper values


def load_paper_values(path: str | None = None) -> dict:
    """The paper's Tables 1-2 as {"table1": {subset: {key: value}}, "table2": ...}, keyed by
    instruction_source ("total" for D_ALL) with our column keys; from the packaged transcription
    of the paper (lamini.paper) unless ``path`` names a JSON file of that shape."""
    if path is not None:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    from lamini.paper import paper_tables

    t = paper_tables()
    t1, t2 = t["table1_statistics"], t["table2_mattr"]
    keys1 = {"samples": "samples", "instruction_tokens": "instruction_tokens", "avg_instruction_len":
             "avg_instruction_length", "response_tokens": "response_tokens", "avg_response_len": "avg_response_length"}  # fmt: skip
    table1 = {(r["instruction_source"] or "total"): {"paper_label": r["subset"], **{ours: r[k] for k, ours in keys1.items()}}
              for r in t1["rows"]}  # fmt: skip
    # The paper prints MATTR x100; ours is the ratio itself.
    table2 = {(r["instruction_source"] or "total"): {"paper_label": r["subset"],
              "mattr_instruction": r["mattr_x100_instructions"] / 100, "mattr_response": r["mattr_x100_responses"] / 100}
              for r in t2["rows"]}  # fmt: skip
    return {"paper": t["source"], "status": "transcribed from the paper (lamini/paper_tables.json)",
            "note": f"Table 1: {t1['note']}; Table 2: {t2['note']}", "tokenizer": t1["note"],
            "table1": table1, "table2": table2}  # fmt: skip


def _paper_cell(paper: dict, table: str, subset: str, key: str) -> Any:
    return (paper.get(table, {}).get(subset) or {}).get(key)


# ----------------------------------------------------------------------------- rendering


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def markdown_table(rows: list[SubsetStats], total: SubsetStats, cols: list[tuple[str, str, int]],
                   table: str, paper: dict) -> list[str]:  # fmt: skip
    """Rows in, Markdown lines out; a "(paper)" column follows each of ours that the paper has a value for."""
    everyone = rows + [total]
    with_paper = {key for _, key, _ in cols if any(_paper_cell(paper, table, r.subset, key) is not None for r in everyone)}
    head, align = ["subset"], ["---"]
    for title, key, _ in cols:
        head.append(title)
        align.append("---:")
        if key in with_paper:
            head.append(f"{title} (paper)")
            align.append("---:")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    for r in everyone:
        cells = [f"**{r.subset}**" if r is total else r.subset]
        for _, key, digits in cols:
            cells.append(_fmt(getattr(r, key), digits))
            if key in with_paper:
                cells.append(_fmt(_paper_cell(paper, table, r.subset, key), digits))
        lines.append("| " + " | ".join(cells) + " |")
    if not with_paper:
        lines += ["", f"Paper values: not available ({paper.get('status', 'no paper_values.json')})."]
    return lines


TABLE1_COLS = [
    ("# samples", "samples", 0), ("# instruction tokens", "instruction_tokens", 0),
    ("avg. instruction length", "avg_instruction_length", 2), ("# response tokens", "response_tokens", 0),
    ("avg. response length", "avg_response_length", 2), ("unique instructions", "unique_instructions", 0),
    ("unique pairs", "unique_pairs", 0),
]  # fmt: skip
TABLE2_COLS = [
    ("MATTR instructions", "mattr_instruction", 4), ("MATTR responses", "mattr_response", 4),
    ("instruction tokens (MATTR)", "mattr_instruction_tokens", 0), ("response tokens (MATTR)", "mattr_response_tokens", 0),
]  # fmt: skip


def render_report(cfg: AnalyzeConfig, files: list[str], rows: list[SubsetStats], total: SubsetStats,
                  paper: dict, figures: list[dict], notes: list[str]) -> str:  # fmt: skip
    """Everything computed in; the Markdown of report.md out."""
    md = [
        "# Instruction dataset analysis",
        "",
        f"Input: `{cfg.input}` ({len(files)} Parquet file(s)); subsets: values of `{cfg.group_by}`; "
        f"{total.samples:,} rows in {len(rows)} subset(s). Paper: {paper.get('paper', 'n/a')}",
        "",
        "## Table 1: statistics",
        "",
        f"Lengths are in tokens of the `{cfg.tokenizer}` tokenizer"
        + (" (`len(text.split())`)" if cfg.tokenizer == "whitespace" else " (AutoTokenizer ids, no special tokens)")
        + f", averaged per sample. Paper tokenizer: {paper.get('tokenizer') or 'not recorded'}. Unique counts are "
        "counts of distinct 64-bit hashes of the instruction and of the (instruction, response) pair; the total "
        "row's unique counts are over the union of subsets.",
        "",
        *markdown_table(rows, total, TABLE1_COLS, "table1", paper),
        "",
        "![average lengths](lengths.png)",
        "",
        f"## Table 2: lexical diversity (MATTR, window {cfg.mattr_window})",
        "",
        "Moving-average type-token ratio (Covington & McFall 2010) over the concatenated token stream of each "
        "subset in dataset order (instructions and responses separately); tokens as `lexicalrichness` makes them "
        "(lowercased, digits and dashes deleted, other punctuation split off). The total row is the whole "
        "dataset's stream. `—`: fewer tokens than the window.",
        "",
        *markdown_table(rows, total, TABLE2_COLS, "table2", paper),
        "",
        "## Figure 2: t-SNE of instruction embeddings",
        "",
    ]
    for fig in figures:
        a, b = fig["pair"]
        md += [f"### {a} vs {b}", "",
               f"{fig['counts'][a]:,} + {fig['counts'][b]:,} instructions (seeded sample of distinct instructions, "
               f"at most {cfg.tsne_sample} per subset); embedding: {fig['embedding']}; t-SNE perplexity "
               f"{fig['perplexity']:.1f}, seed {cfg.seed}. Points: `{fig['json']}`.", "",
               f"![t-SNE {a} vs {b}]({fig['png']})", ""]  # fmt: skip
    if not figures:
        md += ["No t-SNE plot (see notes).", ""]
    if notes:
        md += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(md)


def lengths_figure(rows: list[SubsetStats], paper: dict, tokenizer: str) -> tuple[Any, dict]:
    """Grouped bars of average instruction/response length per subset (the paper's beside, hatched, if
    known) -> (matplotlib Figure, the plotted values)."""
    import numpy as np

    data = {"subsets": [r.subset for r in rows], "tokenizer": tokenizer,
            "avg_instruction_length": [r.avg_instruction_length for r in rows],
            "avg_response_length": [r.avg_response_length for r in rows],
            "paper_avg_instruction_length": [_paper_cell(paper, "table1", r.subset, "avg_instruction_length") for r in rows],
            "paper_avg_response_length": [_paper_cell(paper, "table1", r.subset, "avg_response_length") for r in rows]}  # fmt: skip
    series = []  # (legend, values, colour, hatch): each paper series right after ours
    for what, colour in (("instruction", "tab:blue"), ("response", "tab:orange")):
        series.append((what, data[f"avg_{what}_length"], colour, None))
        paper_vals = data[f"paper_avg_{what}_length"]
        if any(v is not None for v in paper_vals):
            series.append((f"{what} (paper)", [np.nan if v is None else v for v in paper_vals], colour, "//"))
    fig, ax = new_figure(width=max(6.0, 1.3 * len(rows) + 2), height=4.6)
    x, width = np.arange(len(rows)), 0.8 / len(series)
    for k, (name, vals, colour, hatch) in enumerate(series):
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, vals, width, label=name,
                      color="white" if hatch else colour, edgecolor=colour, hatch=hatch)  # fmt: skip
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    ax.set_xticks(x, data["subsets"], rotation=20 if len(rows) > 3 else 0, ha="right" if len(rows) > 3 else "center")
    ax.set_ylabel(f"average length ({tokenizer} tokens)")
    ax.set_title("Average instruction and response length per subset", fontsize=11)
    tallest = np.nanmax([v for _, vals, _, _ in series for v in vals] + [1.0])
    ax.set_ylim(0, tallest * 1.2)  # headroom so the legend row sits above the bars, never on them
    ax.legend(fontsize=8, loc="upper center", ncol=len(series), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig, data


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "_"


def tsne_figures(cfg: AnalyzeConfig, acc: StatsAccumulator, by_size: list[str], out: RunDir,
                 notes: list[str]) -> tuple[list[dict], str]:  # fmt: skip
    """Figure 2: one t-SNE scatter (PNG + JSON) per pair written to ``out``; (figure records, embedding name) out.

    Pairs are ``cfg.tsne_pairs``, else the two largest subsets (``by_size`` is largest first).
    A pair naming an absent subset, or with under 5 instructions, is skipped with a note.
    """
    pairs = [tuple(p) for p in cfg.tsne_pairs] or ([(by_size[0], by_size[1])] if len(by_size) >= 2 else [])
    if not pairs:
        notes.append("No t-SNE plot: it compares two subsets and this dataset has fewer.")
        return [], ""
    embedder = get_embedder(cfg.embedding_model)
    figures = []
    for a, b in pairs:
        absent = [s for s in (a, b) if s not in acc.subsets]
        if absent:
            notes.append(f"t-SNE pair ({a}, {b}) skipped: {absent} not in the data.")
            continue
        texts = {a: acc.samples(a), b: acc.samples(b)}
        if len(texts[a]) + len(texts[b]) < 5:
            notes.append(f"t-SNE pair ({a}, {b}) skipped: fewer than 5 distinct instructions between them.")
            continue
        all_texts, labels = texts[a] + texts[b], [a] * len(texts[a]) + [b] * len(texts[b])
        # One encode call for both subsets: the TF-IDF+SVD fallback must fit one shared space.
        points = tsne_2d(embedder.encode(all_texts, cfg.seed), cfg.seed)
        stem = f"tsne_{_safe(a)}__{_safe(b)}"
        fig = {"pair": [a, b], "counts": {a: len(texts[a]), b: len(texts[b])}, "embedding": embedder.name,
               "perplexity": tsne_perplexity(len(all_texts)), "seed": cfg.seed,
               "png": stem + ".png", "json": stem + ".json"}  # fmt: skip
        caption = f"embedding: {embedder.name}; seed {cfg.seed}"
        save_figure(out, fig["png"], scatter_figure(points, labels, (a, b), caption))
        points_json = {**fig, "labels": labels, "points": points.round(4).tolist(), "texts": all_texts}
        out.write_text(fig["json"], json.dumps(points_json))
        figures.append(fig)
    if embedder.name.startswith(TFIDF_SVD):
        notes.append("Embeddings: TF-IDF (uni+bigrams, English stop words removed) + TruncatedSVD to <=100 dims, "
                     "L2-normalised (LSA), fitted on each pair's sample: clusters are lexical, not semantic. "
                     "Set `embedding_model` to a sentence-transformers model for semantic embeddings.")  # fmt: skip
    return figures, embedder.name


# ----------------------------------------------------------------------------- the stage


def run_analyze(cfg: AnalyzeConfig) -> AnalyzeSummary:
    """Config in; the report files written and an :class:`AnalyzeSummary` out (see module docstring)."""
    t0 = time.time()
    fs, files, default_out = resolve_input(cfg.input)
    check_columns(fs, files, [INSTRUCTION, RESPONSE, cfg.group_by])
    out = RunDir(cfg.output_dir or default_out)
    acc = collect_stats(cfg, fs, files)
    rows, total = acc.finish()
    paper = load_paper_values()
    notes: list[str] = []
    figures, embedding = tsne_figures(cfg, acc, [r.subset for r in rows], out, notes)
    lengths_fig, lengths = lengths_figure(rows, paper, cfg.tokenizer)
    save_figure(out, "lengths.png", lengths_fig)
    out.write_text("lengths.json", json.dumps(lengths, indent=1))
    meta = {"input": cfg.input, "files": files, "group_by": cfg.group_by, "tokenizer": cfg.tokenizer}
    table1 = {**meta, "rows": [r.table1() for r in rows], "total": total.table1(), "paper": paper.get("table1", {})}
    table2 = {**meta, "window": cfg.mattr_window, "rows": [r.table2() for r in rows], "total": total.table2(),
              "paper": paper.get("table2", {})}  # fmt: skip
    out.write_text("table1.json", json.dumps(table1, indent=1))
    out.write_text("table2.json", json.dumps(table2, indent=1))
    out.write_text("report.md", render_report(cfg, files, rows, total, paper, figures, notes))
    summary = AnalyzeSummary(
        report_path=out.uri_of("report.md"), output_dir=out.uri, rows=total.samples,
        subsets={r.subset: r.samples for r in rows}, files=files, tsne=[f["png"] for f in figures],
        embedding=embedding, notes=notes, wall_s=round(time.time() - t0, 3),
    )  # fmt: skip
    log.info(summary.line())
    return summary
