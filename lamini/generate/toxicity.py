"""`lamini filter-toxic`: score text columns with detoxify on Ray actors, drop toxic rows.

The OIG corpus's authors warn that it holds red-team material, so a corpus (or D_ALL) can be
passed through detoxify before training. The plan is

    read_parquet(cfg.input) -> map_batches(DetoxifyScorer) on an autoscaling actor pool
      -> blocks streamed to the driver in input order -> split by threshold
      -> run_dir/kept.parquet, run_dir/dropped.parquet (pyarrow streaming writers)

Score columns are named ``tox_<label>_<column>`` (`score_column`), one per detoxify label
and scored column, e.g. ``tox_toxicity_instruction``, ``tox_insult_response``; the labels are
whatever the model returns (the "original" model: toxicity, severe_toxicity, obscene,
threat, insult, identity_attack). A row is dropped when its ``cfg.label`` score in ANY of
``cfg.columns`` is strictly above ``cfg.threshold``. kept.parquet holds the input columns
only (so it stays in the LaMini schema); dropped.parquet holds the input columns, every
score column and ``drop_reason``, e.g. "instruction: toxicity 0.9974 > 0.5".

`cfg.model` is a detoxify model type ("original", "unbiased", "multilingual", ...: those
download their checkpoint, and the transformers config/tokenizer named inside it, on first
use) or a .ckpt file (local path or URI). Offline, use a checkpoint whose
``config.arch.args.model_type`` is a local transformers folder: detoxify then reads config
and tokenizer from disk (lamini.testing.tiny_detoxify builds one). A local checkpoint must
exist on every node that runs an actor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lamini.generate.config import ToxicityConfig
from lamini.runs import manifest as mf
from lamini.runs.rundir import RunDir
from lamini.scoring.detoxify import (
    DROPPED,
    KEPT,
    is_score_column,
    resolve_model,
    score_column,
    score_dataset,
)

log = logging.getLogger(__name__)

DROP_REASON = "drop_reason"


def split_by_threshold(
    table: pa.Table, cfg: ToxicityConfig, input_columns: Sequence[str] | None = None
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """A scored table -> (kept, dropped, counts).

    kept: the rows at or below the threshold, input columns only (`input_columns`, default
    every column that is not a score column). dropped: the other rows with every column
    plus `drop_reason` naming each column over the threshold and its score. counts:
    {"rows", "kept", "dropped", "dropped_by_column": {column: rows over the threshold}}
    (a row over in two columns counts in both).
    """
    over_by_col = {}
    for column in cfg.columns:
        name = score_column(cfg.label, column)
        if name not in table.column_names:
            raise ValueError(f"no score column {name!r}: is {cfg.label!r} one of the model's labels?")
        over_by_col[column] = pc.fill_null(pc.greater(table.column(name), cfg.threshold), False)
    over = pa.array([False] * table.num_rows, pa.bool_())
    for mask in over_by_col.values():
        over = pc.or_(over, mask)

    dropped = table.filter(over)
    reasons = []
    flags = {c: m.filter(over).to_pylist() for c, m in over_by_col.items()}
    values = {c: dropped.column(score_column(cfg.label, c)).to_pylist() for c in cfg.columns}
    for r in range(dropped.num_rows):
        reasons.append(
            "; ".join(
                f"{c}: {cfg.label} {values[c][r]:.4f} > {cfg.threshold:g}" for c in cfg.columns if flags[c][r]
            )
        )
    dropped = dropped.append_column(DROP_REASON, pa.array(reasons, pa.string()))

    if input_columns is None:
        input_columns = [n for n in table.column_names if not is_score_column(n, cfg.columns)]
    kept = table.filter(pc.invert(over)).select(list(input_columns))
    counts = {
        "rows": table.num_rows,
        "kept": kept.num_rows,
        "dropped": dropped.num_rows,
        "dropped_by_column": {c: int(pc.sum(m).as_py() or 0) for c, m in over_by_col.items()},
    }
    return kept, dropped, counts


def _add_counts(total: dict[str, Any], c: dict[str, Any]) -> None:
    for k in ("rows", "kept", "dropped"):
        total[k] = total.get(k, 0) + c[k]
    by = total.setdefault("dropped_by_column", {})
    for col, n in c["dropped_by_column"].items():
        by[col] = by.get(col, 0) + n


def _split_stream(ds, cfg: ToxicityConfig, input_columns: Sequence[str]) -> Iterator[tuple[pa.Table, pa.Table, dict]]:
    """Score `ds` and yield (kept, dropped, counts) per output block, in input order."""
    missing = [c for c in cfg.columns if c not in input_columns]
    if missing:
        raise ValueError(f"input lacks the text columns {missing} (it has {list(input_columns)})")
    scored = score_dataset(ds, cfg)
    # Output in input order, so kept.parquet lines up with the input; blocks still stream
    # (Ray Data holds back only the blocks that finish early).
    scored.context.execution_options.preserve_order = True
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        yield split_by_threshold(batch, cfg, input_columns)


def filter_table(table: pa.Table, cfg: ToxicityConfig) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    """In-memory version for the dataset stage: a table holding cfg.columns -> (kept,
    dropped, counts) as `split_by_threshold` gives them, over the whole table, in its order.
    Scores on Ray Data (connects to Ray with cfg.ray if the driver has not)."""
    import ray

    from lamini.runs.ray_env import init_ray

    init_ray(cfg.ray)
    n = cfg.pipeline.rows_per_block
    blocks = [table.slice(i, n) for i in range(0, table.num_rows, n)] or [table]
    counts: dict[str, Any] = {"rows": 0, "kept": 0, "dropped": 0, "dropped_by_column": {c: 0 for c in cfg.columns}}
    kept_parts, dropped_parts = [], []
    for kept, dropped, c in _split_stream(ray.data.from_arrow(blocks), cfg, table.column_names):
        kept_parts.append(kept)
        dropped_parts.append(dropped)
        _add_counts(counts, c)
    kept = pa.concat_tables(kept_parts, promote_options="default") if kept_parts else table.slice(0, 0)
    if dropped_parts:
        dropped = pa.concat_tables(dropped_parts, promote_options="default")
    else:
        dropped = table.slice(0, 0).append_column(DROP_REASON, pa.array([], pa.string()))
    return kept, dropped, counts


@dataclass
class FilterToxicSummary:
    """What `lamini filter-toxic` did."""

    run_dir: str
    input_rows: int
    kept: int
    dropped: int
    dropped_by_column: dict[str, int]
    label: str
    threshold: float
    model: str
    wall_s: float
    missing: int = 0  # every input row is either kept or dropped (checked), never missing
    outputs: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        by = ", ".join(f"{c}: {n}" for c, n in self.dropped_by_column.items()) or "none"
        return (
            f"filter-toxic: {self.input_rows} rows | {self.kept} kept | {self.dropped} dropped "
            f"({self.label} > {self.threshold:g}; by column {by}) | model {self.model} | "
            f"{self.wall_s:.1f} s -> {self.run_dir}/{KEPT}, {DROPPED}"
        )


class _StreamWriter:
    """A Parquet file written batch by batch under a temporary name, moved into place on close."""

    def __init__(self, run: RunDir, name: str):
        self.run, self.name, self.writer = run, name, None
        self.tmp = run.path(name + ".tmp")

    def write(self, t: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, t.schema, filesystem=self.run.fs)
        # Blocks from different input files may type a column differently (e.g. all-null).
        self.writer.write_table(t.cast(self.writer.schema))

    def close(self, empty_schema: pa.Schema) -> None:
        if self.writer is None:  # no rows at all: still write the file, with its schema
            self.write(empty_schema.empty_table())
        self.writer.close()
        self.run.fs.move(self.tmp, self.run.path(self.name))

    def abort(self) -> None:
        # A failed run must not leave a partial file under the final name.
        if self.writer is not None:
            self.writer.close()
            self.run.delete(self.tmp)


def run_filter_toxic(cfg: ToxicityConfig) -> FilterToxicSummary:
    """cfg.input (LaMini-schema Parquet file/folder, local or URI) -> run_dir/kept.parquet,
    run_dir/dropped.parquet and run_dir/manifest.json; returns the summary.

    Memory stays bounded by a few blocks: Ray Data reads and scores block by block and the
    driver appends each scored block to the two files as it arrives.
    """
    import ray

    from lamini.runs.ray_env import init_ray

    t0 = time.time()
    resolve_model(cfg.model, fetch=False)  # a wrong name or path fails here, not in every actor
    init_ray(cfg.ray)
    run = RunDir(cfg.run_dir)
    ds = ray.data.read_parquet(cfg.input)
    input_schema = ds.schema().base_schema
    input_columns = list(input_schema.names)
    input_rows = ds.count()  # from Parquet metadata: reads no data

    kept_w, dropped_w = _StreamWriter(run, KEPT), _StreamWriter(run, DROPPED)
    counts: dict[str, Any] = {"rows": 0, "kept": 0, "dropped": 0, "dropped_by_column": {c: 0 for c in cfg.columns}}
    dropped_schema = None
    try:
        for kept, dropped, c in _split_stream(ds, cfg, input_columns):
            if dropped_schema is None:
                dropped_schema = dropped.schema
            if kept.num_rows:
                kept_w.write(kept)
            if dropped.num_rows:
                dropped_w.write(dropped)
            _add_counts(counts, c)
    except BaseException:
        kept_w.abort()
        dropped_w.abort()
        raise
    if dropped_schema is None:  # no input rows: the scorer never ran
        dropped_schema = input_schema.append(pa.field(DROP_REASON, pa.string()))
    kept_w.close(input_schema)
    dropped_w.close(dropped_schema)
    if counts["kept"] + counts["dropped"] != input_rows or counts["rows"] != input_rows:
        raise RuntimeError(
            f"row count mismatch: {input_rows} input rows, {counts['kept']} kept + {counts['dropped']} dropped"
        )

    wall_s = round(time.time() - t0, 3)
    outputs = {"kept": run.uri_of(KEPT), "dropped": run.uri_of(DROPPED)}
    mf.write(
        run,
        "filter-toxic",
        cfg,
        model=cfg.model,
        label=cfg.label,
        threshold=cfg.threshold,
        columns=list(cfg.columns),
        score_columns=[n for n in dropped_schema.names if is_score_column(n, cfg.columns)],
        counts={
            "input_rows": input_rows,
            "kept": counts["kept"],
            "dropped": counts["dropped"],
            "dropped_by_column": counts["dropped_by_column"],
            "kept_plus_dropped_equals_input": True,  # checked above; the run fails otherwise
        },
        outputs=outputs,
        wall_s=wall_s,
    )
    summary = FilterToxicSummary(
        run_dir=run.uri,
        input_rows=input_rows,
        kept=counts["kept"],
        dropped=counts["dropped"],
        dropped_by_column=counts["dropped_by_column"],
        label=cfg.label,
        threshold=cfg.threshold,
        model=cfg.model,
        wall_s=wall_s,
        outputs=outputs,
    )
    log.info(summary.line())
    return summary
