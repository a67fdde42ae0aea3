"""Result shards of a run: what is done (for resume) and the final exactly-once dataset.

Why our own resume instead of Ray Data's `CheckpointConfig` (beta): on Ray 2.60 it
needs a plan that starts with a Read and ends with a Write, needs a repartition before it
writes anything, and deadlocked on a 2-CPU Ray because its filter actor reserves a whole CPU.
Our plan starts from rows read by our own corpus readers (they report file and line for bad
input, which Ray's readers cannot). So: Ray Data writes one Parquet shard per block as blocks
finish; on a re-run we read only the `id`/`error` columns of the shards, skip the ids already
answered, and the finalize step picks exactly one result per input id. Rows answered in blocks
a kill cut short reach the shards from the actors' journals (lamini.runs.journal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lamini.corpus.schema import LAMINI_FROM_CORPUS, RESPONSE
from lamini.engines.base import RESULT_SCHEMA
from lamini.runs.journal import unsettled
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

SHARDS = "shards"

# (output column, shard column): the LaMini-instruction schema first, then provenance.
RESPONSE_COLUMNS = [
    *LAMINI_FROM_CORPUS.items(),
    ("id", "id"),
    ("subset", "subset"),
    ("source_instruction", "instruction"),
    ("input", "input"),
    ("reference_response", "reference_response"),
    ("teacher", "teacher"),
    ("finish_reason", "finish_reason"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("attempts", "attempts"),
    ("latency_s", "latency_s"),
    ("origin", "origin"),
]
ERROR_COLUMNS = [
    *((out, src) for out, src in LAMINI_FROM_CORPUS.items() if out != RESPONSE),
    ("id", "id"),
    ("subset", "subset"),
    ("error_kind", "error_kind"),
    ("error", "error"),
    ("attempts", "attempts"),
    ("teacher", "teacher"),
    ("origin", "origin"),
]


@dataclass
class ShardIndex:
    """Which ids have a result, read from the `id`, `error`, `completed_at` columns only."""

    ok: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    files: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    keys: pa.Table | None = None  # id, ok, completed_at, file index, row index


def scan_shards(run: RunDir) -> ShardIndex:
    """Index the shards. A shard that cannot be read (a write cut by a kill) is renamed
    `*.corrupt` so it is neither trusted nor read again; its rows count as not done."""
    idx = ShardIndex()
    parts = []
    for path in run.list_files(SHARDS, ".parquet"):
        try:
            t = pq.read_table(path, columns=["id", "error", "completed_at"], filesystem=run.fs)
        except Exception as e:  # noqa: BLE001 - any unreadable file is treated the same way
            log.warning("shard %s is unreadable (%s); its rows will be requested again", path, e)
            run.fs.move(path, path + ".corrupt")
            idx.corrupt.append(path)
            continue
        fi = len(idx.files)
        idx.files.append(path)
        ok = pc.is_null(t.column("error"))
        parts.append(
            pa.table(
                {
                    "id": t.column("id"),
                    "ok": ok,
                    "completed_at": t.column("completed_at"),
                    "file": pa.array([fi] * t.num_rows, pa.int32()),
                    "row": pa.array(range(t.num_rows), pa.int64()),
                }
            )
        )
    if parts:
        keys = pa.concat_tables(parts)
        idx.keys = keys
        ids = keys.column("id").to_pylist()
        oks = keys.column("ok").to_pylist()
        for i, good in zip(ids, oks):
            (idx.ok if good else idx.failed).add(i)
        idx.failed -= idx.ok
    return idx


def _winners(idx: ShardIndex, wanted: set[str]) -> dict[int, list[int]]:
    """For each id in `wanted`, the one shard row that stands: a success over an error,
    then the latest. Returns {file index: sorted row indices}."""
    best: dict[str, tuple[bool, float, int, int]] = {}
    k = idx.keys
    for i, ok, ts, f, r in zip(
        k.column("id").to_pylist(),
        k.column("ok").to_pylist(),
        k.column("completed_at").to_pylist(),
        k.column("file").to_pylist(),
        k.column("row").to_pylist(),
    ):
        if i not in wanted:
            continue
        cand = (ok, ts or 0.0, f, r)
        if i not in best or cand[:2] > best[i][:2]:
            best[i] = cand
    by_file: dict[int, list[int]] = {}
    for _, _, f, r in best.values():
        by_file.setdefault(f, []).append(r)
    return {f: sorted(rows) for f, rows in by_file.items()}


def _project(t: pa.Table, mapping: list[tuple[str, str]]) -> pa.Table:
    cols, names = [], []
    for out_name, in_name in mapping:
        if in_name in t.column_names:
            cols.append(t.column(in_name))
            names.append(out_name)
    return pa.table(dict(zip(names, cols)))


# The engines' result columns keep their types; every other output column is a string.
_TYPES = {f.name: f.type for f in RESULT_SCHEMA}


def _empty(mapping: list[tuple[str, str]]) -> pa.Table:
    """The output columns of `mapping` with no rows (when no shard exists to take types from)."""
    return pa.schema([(out, _TYPES.get(src, pa.string())) for out, src in mapping]).empty_table()


@dataclass
class FinalCounts:
    ok: int = 0
    errors: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0  # every attempt sent: those of all shard rows (superseded ones included) + unsettled
    # Attempts sent that never got a result row (in flight or retrying when a run was killed or
    # stopped), from the journals' ledger: their usage is unknown, so they are priced at a bound.
    unsettled_requests: int = 0
    unsettled_prompt_tokens_max: int = 0
    unsettled_completion_tokens_max: int = 0


def finalize(run: RunDir, input_ids: set[str], index: ShardIndex | None = None) -> FinalCounts:
    """Write dataset/responses.parquet and dataset/errors.parquet with exactly one row per
    input id that has a result; streams shard by shard, so memory stays bounded by a shard.

    `index` is a scan of the shards as they are now (pass it only when nothing was written
    since); without it the shards are scanned here."""
    idx = index if index is not None else scan_shards(run)
    counts = FinalCounts()
    u = unsettled(run)
    counts.unsettled_requests, counts.requests = u.requests, u.requests
    counts.unsettled_prompt_tokens_max, counts.unsettled_completion_tokens_max = u.prompt_tokens_max, u.completion_tokens_max
    run.makedirs("dataset")
    if idx.keys is None:  # no shard at all (e.g. every input row rejected): both files, empty
        run.write_table("dataset/responses.parquet", _empty(RESPONSE_COLUMNS))
        run.write_table("dataset/errors.parquet", _empty(ERROR_COLUMNS))
        counts.missing = len(input_ids)
        return counts
    winners = _winners(idx, input_ids)
    ok_writer = err_writer = None
    empty_ok = empty_err = None  # schemas for a file that gets no rows: it is written empty
    tmp_ok, tmp_err = run.path("dataset", "responses.parquet.tmp"), run.path("dataset", "errors.parquet.tmp")
    try:
        for fi, path in enumerate(idx.files):
            t = pq.read_table(path, filesystem=run.fs)
            if empty_ok is None:
                empty_ok, empty_err = _project(t.slice(0, 0), RESPONSE_COLUMNS), _project(t.slice(0, 0), ERROR_COLUMNS)
            # Tokens and attempts were spent whether or not this row stands.
            counts.prompt_tokens += int(pc.sum(t.column("prompt_tokens")).as_py() or 0)
            counts.completion_tokens += int(pc.sum(t.column("completion_tokens")).as_py() or 0)
            counts.requests += int(pc.sum(t.column("attempts")).as_py() or 0)
            rows = winners.get(fi)
            if not rows:
                continue
            t = t.take(pa.array(rows, pa.int64()))
            ok_mask = pc.is_null(t.column("error"))
            ok_t = _project(t.filter(ok_mask), RESPONSE_COLUMNS)
            err_t = _project(t.filter(pc.invert(ok_mask)), ERROR_COLUMNS)
            if ok_t.num_rows:
                ok_writer = ok_writer or pq.ParquetWriter(tmp_ok, ok_t.schema, filesystem=run.fs)
                ok_writer.write_table(ok_t.cast(ok_writer.schema))
                counts.ok += ok_t.num_rows
            if err_t.num_rows:
                err_writer = err_writer or pq.ParquetWriter(tmp_err, err_t.schema, filesystem=run.fs)
                err_writer.write_table(err_t.cast(err_writer.schema))
                counts.errors += err_t.num_rows
                for kind in err_t.column("error_kind").to_pylist():
                    counts.errors_by_kind[kind or "unknown"] = counts.errors_by_kind.get(kind or "unknown", 0) + 1
    finally:
        for w in (ok_writer, err_writer):
            if w is not None:
                w.close()
    # Both files always exist after a finalize (empty when no row went there), so readers never
    # have to guess whether "absent" means "none" or "not finished".
    for tmp, final, writer, empty in ((tmp_ok, "responses.parquet", ok_writer, empty_ok),
                                      (tmp_err, "errors.parquet", err_writer, empty_err)):  # fmt: skip
        if writer is None and empty is not None:
            pq.write_table(empty, tmp, filesystem=run.fs)
        run.fs.move(tmp, run.path("dataset", final))
    counts.missing = len(input_ids) - counts.ok - counts.errors
    return counts
