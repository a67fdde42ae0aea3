"""Per-row durability of a teacher run: an append-only journal per actor, folded into the shards.

Ray Data writes a shard only when a whole block is answered, so a kill used to lose every
answered row of every block in progress (actors x batches in flight x block rows) and send them
all again. Now each HTTP-teacher actor also appends to `journal/<actor>.jsonl`, as it happens:

    {"a": id, "p": prompt_bytes, "m": max_tokens}   before each attempt is sent (write-ahead)
    {"r": {...the whole output row...}}             when a row is answered (or fails for good)

On a local run directory every line is one `os.write` on an O_APPEND file: once written it
survives `kill -9` of the actor (the kernel has it), so a kill loses at most the requests in
flight. On an object store (no appends) lines are buffered and written as one segment file per
`flush_s` (1 s), so a kill loses at most about a second more.

`fold_journals` runs on the driver before a run scans its shards and after the pipeline: rows
of the journals that no shard holds yet (the twin of a shard row has the same id and latency)
become a shard file `shards/journal-*.parquet`, attempts that never got a row ("unsettled":
in flight at the kill, or retrying) are added to `accounting.json`, and the journals are
deleted. The ledger is keyed by journal name, so folding the same journal twice (a kill during
a fold) counts it once.

Why not Ray Data's own checkpointing or a shared actor: see lamini.runs.shards; a per-actor
file needs no coordination and costs one small write per event.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lamini.engines.abort import RunAborted
from lamini.engines.actors import AsyncEngineUDF
from lamini.engines.base import (
    RESULT_SCHEMA,
    ChatResult,
    append_results,
    result_to_columns,
)
from lamini.engines.http_guards import prompt_tokens_max
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

JOURNAL = "journal"
LEDGER = "accounting.json"
SHARDS = "shards"  # lamini.runs.shards.SHARDS (not imported: shards imports this module)


class Journal:
    """One actor's journal in `run`/journal/ (a RunDir or its URI). `attempt` and `row` are what the
    teacher UDF calls."""

    def __init__(self, run: str | RunDir, flush_s: float = 1.0) -> None:
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        self.run.makedirs(JOURNAL)
        self.name = uuid.uuid4().hex
        self._fd: int | None = None
        self._buf: list[bytes] = []
        self._lock = threading.Lock()
        self._seq = 0
        if isinstance(self.run.fs, pafs.LocalFileSystem):
            self._fd = os.open(self.run.path(JOURNAL, f"{self.name}.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        else:  # no appends on object stores: one segment per flush_s, from a daemon thread
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._flush_loop, args=(flush_s,), daemon=True)
            self._thread.start()

    def attempt(self, row_id: str, prompt_bytes: int, max_tokens: int) -> None:
        """Before an attempt is sent: so a request is counted even if the process dies waiting for it."""
        self._write(b'{"a":%s,"p":%d,"m":%d}\n' % (json.dumps(row_id).encode(), prompt_bytes, max_tokens))

    def row(self, row: dict[str, Any]) -> None:
        """A finished row: its input columns and its result columns, as it would be in a shard."""
        self._write(json.dumps({"r": row}, ensure_ascii=False, default=str).encode() + b"\n")

    def stop(self, reason: str) -> None:
        """The teacher stopped the run (lamini.engines.abort.RunAborted): the driver raises it after the pipeline."""
        self._write(json.dumps({"stop": reason}).encode() + b"\n")

    def _write(self, line: bytes) -> None:
        if self._fd is not None:
            os.write(self._fd, line)
        else:
            with self._lock:
                self._buf.append(line)

    def _flush_loop(self, every: float) -> None:
        while not self._stop.wait(every):
            self.flush()

    def flush(self) -> None:
        """Remote run directories: write what is buffered as the next segment (atomically)."""
        with self._lock:
            data, self._buf = b"".join(self._buf), []
            seq = self._seq
            self._seq += 1 if data else 0
        if data:
            self.run.write_bytes(f"{JOURNAL}/{self.name}-{seq:08d}.jsonl", data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        elif hasattr(self, "_stop") and not self._stop.is_set():
            self._stop.set()
            self.flush()


@dataclass
class Unsettled:
    """Attempts sent that never got a result row: counted as requests, priced at their maximum."""

    requests: int = 0
    prompt_tokens_max: int = 0  # UTF-8 bytes of the messages: no tokenizer makes more tokens than bytes
    completion_tokens_max: int = 0  # max_tokens of each

    def add(self, other: dict[str, int]) -> None:
        self.requests += other.get("requests", 0)
        self.prompt_tokens_max += other.get("prompt_tokens_max", 0)
        self.completion_tokens_max += other.get("completion_tokens_max", 0)


@dataclass
class Fold:
    """What one fold did: rows moved into shards, twins dropped, journals folded."""

    rows: int = 0
    twins: int = 0
    journals: list[str] = field(default_factory=list)
    stops: list[str] = field(default_factory=list)  # why actors stopped the run, if any did


def _journal_name(path: str) -> str:
    stem = path.rsplit("/", 1)[-1].removesuffix(".jsonl")
    return stem.split("-", 1)[0]  # "<name>" (local) or "<name>-<seq>" (segments)


def _read_lines(run: RunDir, path: str) -> list[dict]:
    with run.fs.open_input_stream(path) as f:
        data = f.read()
    out = []
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except ValueError:  # the last line of a journal cut by a kill (or a full disk)
            log.warning("journal %s: skipping an incomplete line", path)
    return out


def _shard_twins(run: RunDir) -> set[tuple[str, float]]:
    """(id, latency_s) of every shard row: a journal row with the same pair is already in a shard."""
    keys: set[tuple[str, float]] = set()
    for path in run.list_files(SHARDS, ".parquet"):
        try:
            t = pq.read_table(path, columns=["id", "latency_s"], filesystem=run.fs)
        except Exception:  # noqa: BLE001 - scan_shards sets unreadable shards aside and says so
            continue
        keys.update(zip(t.column("id").to_pylist(), t.column("latency_s").to_pylist()))
    return keys


def _rows_table(rows: list[dict]) -> pa.Table:
    """Journal rows -> a table with the result columns typed as the engines write them."""
    t = pa.Table.from_pylist(rows)
    types = {f.name: f.type for f in RESULT_SCHEMA}
    for i, f in enumerate(t.schema):
        # A column all null in these rows has Arrow type null; every such column of a shard is a string.
        want = types.get(f.name, pa.string() if pa.types.is_null(f.type) else f.type)
        if want != f.type:
            t = t.set_column(i, f.with_type(want), t.column(i).cast(want))
    return t


def fold_journals(run: RunDir) -> Fold:
    """Move every journal's rows into the shards and its unsettled attempts into the ledger, then
    delete it. Safe to repeat after a kill at any point (see the module docstring)."""
    files = run.list_files(JOURNAL, ".jsonl")
    fold = Fold()
    if not files:
        return fold
    by_name: dict[str, list[str]] = {}
    for p in files:
        by_name.setdefault(_journal_name(p), []).append(p)
    twins = _shard_twins(run)
    ledger = run.read_json(LEDGER, default={}) or {}
    journals = ledger.setdefault("journals", {})
    for name, paths in sorted(by_name.items()):
        lines = [x for p in sorted(paths) for x in _read_lines(run, p)]
        attempts: dict[str, list[tuple[int, int]]] = {}
        answered: dict[str, int] = {}
        new_rows = []
        for x in lines:
            if "stop" in x:
                fold.stops.append(x["stop"])
            elif "a" in x:
                attempts.setdefault(x["a"], []).append((int(x.get("p", 0)), int(x.get("m", 0))))
            elif "r" in x:
                r = x["r"]
                answered[r["id"]] = answered.get(r["id"], 0) + int(r.get("attempts") or 0)
                key = (r["id"], r.get("latency_s"))
                if key in twins:
                    fold.twins += 1
                else:
                    twins.add(key)
                    new_rows.append(r)
        u = Unsettled()
        for rid, sent in attempts.items():
            for p, m in sent[answered.get(rid, 0):]:  # the attempts no finished row accounts for
                u.add({"requests": 1, "prompt_tokens_max": p, "completion_tokens_max": m})
        if new_rows:
            run.makedirs(SHARDS)
            # A fresh name each time: never overwrite the rows an earlier, interrupted fold moved.
            run.write_table(f"{SHARDS}/journal-{name}-{uuid.uuid4().hex[:8]}.parquet", _rows_table(new_rows))
            fold.rows += len(new_rows)
        journals[name] = {"requests": u.requests, "prompt_tokens_max": u.prompt_tokens_max,
                          "completion_tokens_max": u.completion_tokens_max, "folded_at": time.time()}
        fold.journals.append(name)
    run.write_text(LEDGER, json.dumps(ledger, indent=1))
    for p in files:
        run.delete(p)
    if fold.rows:
        log.info("%s: %d answered rows recovered from the journals of a run that stopped early", run.uri, fold.rows)
    return fold


def unsettled(run: RunDir) -> Unsettled:
    """All unsettled attempts the ledger holds (every fold of every run of this directory)."""
    total = Unsettled()
    for entry in (run.read_json(LEDGER, default={}) or {}).get("journals", {}).values():
        total.add(entry)
    return total


class JournaledUDF(AsyncEngineUDF):
    """AsyncEngineUDF + a Journal: every attempt and every finished row is in the journal before
    the row goes on to Ray Data (and, a block later, into a shard). For HTTP teachers only: they
    answer row by row, so there is something to save before the batch is done."""

    def __init__(self, *args: Any, journal_uri: str, budget: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal = Journal(journal_uri)
        if budget is not None:  # a lamini.runs.budget.BudgetClient, built on the driver: each actor has its copy
            self.engine.budget = budget

    async def __call__(self, batch: pa.Table):
        requests = self._requests(batch)
        rows = batch.to_pylist()
        if not hasattr(self.engine, "agenerate_each"):  # an engine without per-request hooks
            results = await self.engine.agenerate(requests)
            for row, r in zip(rows, results):
                self._journal_row(row, r)
            yield append_results(batch, results, self.label, self.label_column)
            return
        bounds = [prompt_tokens_max(r.messages) for r in requests]
        got: dict[int, ChatResult] = {}

        def on_attempt(i: int) -> None:
            self.journal.attempt(rows[i]["id"], bounds[i], requests[i].max_tokens)

        def on_result(i: int, r: ChatResult) -> None:
            self._journal_row(rows[i], r)
            got[i] = r

        try:
            await self.engine.agenerate_each(requests, on_result, on_attempt)
        except RunAborted as e:
            # Not raised on: an exception in a Ray Data UDF fails every task in flight, each with
            # a worker traceback on the console. The stop goes in the journal, this batch and the
            # ones after it drain at once, and the driver raises it when the pipeline is done.
            self.journal.stop(str(e))
        # Only rows with a result go on: those a stopping run or a spent budget never sent are
        # written nowhere and stay pending for a later run.
        keep = sorted(got)
        if len(keep) < len(rows):
            batch = batch.take(pa.array(keep, pa.int64()))
        yield append_results(batch, [got[i] for i in keep], self.label, self.label_column)

    def _journal_row(self, row: dict[str, Any], result: ChatResult) -> None:
        self.journal.row({**row, **result_to_columns(result), self.label_column: self.label, "completed_at": time.time()})

    def __del__(self) -> None:
        journal = getattr(self, "journal", None)
        if journal is not None:
            journal.close()
        super().__del__()
