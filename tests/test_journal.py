"""lamini.runs.journal without Ray: what a killed actor leaves, and how a fold takes it in."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lamini.engines.base import ChatResult, append_results, result_to_columns
from lamini.engines.http_guards import prompt_tokens_max
from lamini.runs.journal import LEDGER, Journal, fold_journals, unsettled
from lamini.runs.rundir import RunDir
from lamini.runs.shards import finalize, scan_shards


def _batch(ids: list[str]) -> pa.Table:
    return pa.table({"id": ids, "prompt": [f"q {i}" for i in ids], "source": ["t"] * len(ids)})


def _row(rid: str, res: ChatResult) -> dict:
    return {"id": rid, "prompt": f"q {rid}", "source": "t", **result_to_columns(res), "teacher": "openai:m",
            "completed_at": 1.0}


def test_fold_moves_unwritten_rows_drops_twins_and_counts_unanswered_attempts(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    ok = {i: ChatResult(text=f"a {i}", prompt_tokens=3, completion_tokens=2, attempts=1, latency_s=0.1 + int(i) / 100)
          for i in "0123"}
    # A shard as Ray Data writes it holds rows 0 and 1 (the block that finished before the kill).
    run.makedirs("shards")
    pq.write_table(append_results(_batch(["0", "1"]), [ok["0"], ok["1"]], "openai:m"), run.path("shards", "b0.parquet"))
    j = Journal(run)
    for i in "0123":
        j.attempt(i, 20, 8)
        j.row(_row(i, ok[i]))
    j.attempt("4", 20, 8)  # sent twice (a 500, then the retry in flight at the kill): never answered
    j.attempt("4", 20, 8)
    j.attempt("5", 30, 8)  # in flight at the kill
    j.stop("the teacher stopped the run")
    j.close()
    with open(run.path("journal", f"{j.name}.jsonl"), "ab") as f:
        f.write(b'{"r": {"id": "9", "resp')  # the line the kill cut

    fold = fold_journals(run)
    assert (fold.rows, fold.twins) == (2, 2)  # rows 2 and 3 move; 0 and 1 were in the shard already
    assert fold.stops == ["the teacher stopped the run"]
    assert not run.list_files("journal", ".jsonl")
    u = unsettled(run)
    assert (u.requests, u.prompt_tokens_max, u.completion_tokens_max) == (3, 70, 24)
    idx = scan_shards(run)
    assert idx.ok == {"0", "1", "2", "3"}
    counts = finalize(run, {"0", "1", "2", "3", "4", "5"})
    assert (counts.ok, counts.missing) == (4, 2)
    # requests: the 4 answered rows' attempts + 3 unanswered attempts; tokens only of what was answered
    assert (counts.requests, counts.unsettled_requests, counts.completion_tokens) == (7, 3, 8)

    # Folding again (a kill between the ledger and the deletes leaves the same journal) counts it once.
    ledger = json.loads(run.read_text(LEDGER))
    assert list(ledger["journals"]) == [j.name]
    assert fold_journals(run).rows == 0 and unsettled(run).requests == 3


def test_a_refold_of_the_same_journal_keeps_its_rows_and_counts_once(tmp_path):
    """Kill during a fold, after the rows were written but before the journal was deleted."""
    run = RunDir(str(tmp_path / "run"))
    j = Journal(run)
    j.attempt("0", 5, 4)
    j.row(_row("0", ChatResult(text="x", attempts=1, latency_s=0.5)))
    j.attempt("1", 5, 4)
    j.close()
    path = run.path("journal", f"{j.name}.jsonl")
    saved = open(path, "rb").read()
    fold_journals(run)
    with open(path, "wb") as f:  # the journal is back, as if its delete never happened
        f.write(saved)
    assert fold_journals(run).twins == 1
    assert len(run.list_files("shards", ".parquet")) == 1  # nothing rewritten, nothing overwritten
    assert scan_shards(run).ok == {"0"} and unsettled(run).requests == 1


def test_object_store_journal_writes_a_segment_per_flush():
    """No appends on an object store: buffered lines go out as whole segment files."""
    fs, root = pafs.FileSystem.from_uri("mock:///r")
    run = RunDir.__new__(RunDir)
    run.uri, run.fs, run.root = "mock:///r", fs, root
    fs.create_dir(root, recursive=True)
    j = Journal(run, flush_s=3600)  # the flush thread stays asleep: flushes below are explicit
    j.attempt("0", 5, 4)
    assert run.list_files("journal", ".jsonl") == []
    j.flush()
    j.row(_row("0", ChatResult(text="x", attempts=1, latency_s=0.5)))
    j.close()  # flushes the rest
    assert len(run.list_files("journal", ".jsonl")) == 2
    assert fold_journals(run).rows == 1 and unsettled(run).requests == 0


def test_prompt_bound_is_at_least_the_bytes():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "café"}]
    assert prompt_tokens_max(msgs) == len("be brief") + len("café".encode()) + 16
