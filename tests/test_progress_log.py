"""Ray Data's progress on a non-interactive stdout is one compact line per interval.

A real CLI run under a pipe is tests/test_responses_pipeline.py::test_cli_progress_in_a_log_is_one_line_per_interval;
Ray's own logging calls, test_ray_datas_non_interactive_progress_block_becomes_one_line there."""

from __future__ import annotations

import logging


def test_filter_folds_a_block_and_keeps_other_messages():
    from lamini.runs.progress_log import CompactProgress

    f = CompactProgress()

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.INFO, __file__, 1, msg, None, None)

    block = ["======= Running Dataset: ds_7 =======", "Total Progress: 120/400", "Active resources: 2/2 CPU", "",
             "MapBatches(EngineUDF): 100/400",
             "  Tasks: 0; Actors: 2 (running=2, restarting=0, pending=0, active=2, idle=0, util=1.0, tasks_in_flight=4); Queued",
             "Write: 80/400", "  Tasks: 3; Actors: 0; Queued blocks: 0 (0.0B)", "======================================="]  # fmt: skip
    kept = [r for r in map(rec, block) if f.filter(r)]
    assert [r.getMessage() for r in kept] == [
        "[ds_7] 120/400 rows | MapBatches(EngineUDF) 100/400 (actors 2, in flight 4) | Write 80/400 (tasks 3)"]
    other = rec("Progress will be logged because stdout is a non-interactive terminal.")
    assert f.filter(other) and other.getMessage().startswith("Progress will be logged")


def test_blocks_of_datasets_running_at_once_stay_apart():
    """The herd runs several Ray Data executions at once, each logging from its own thread."""
    from lamini.runs.progress_log import CompactProgress

    f = CompactProgress()

    def rec(msg: str, thread: int) -> logging.LogRecord:
        r = logging.LogRecord("x", logging.INFO, __file__, 1, msg, None, None)
        r.thread = thread
        return r

    a = ["======= Running Dataset: ds_a =======", "Total Progress: 1/10", "Read: 1/10", "=" * 38]
    b = ["======= Running Dataset: ds_b =======", "Total Progress: 7/9", "Write: 7/9", "=" * 38]
    interleaved = [rec(m, t) for pair in zip(a, b) for m, t in zip(pair, (1, 2))]
    assert [r.getMessage() for r in interleaved if f.filter(r)] == ["[ds_a] 1/10 rows | Read 1/10", "[ds_b] 7/9 rows | Write 7/9"]
