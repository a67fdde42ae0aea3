"""Ray Data's progress on a non-interactive stdout (a `ray job submit` log, a CI log, `| tee`) as
one compact line per interval.

Ray Data logs progress there through its LoggingExecutionProgressManager: every interval
(RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL, 10 s) a block of 2 + 2 x operators lines between two
"=====" delimiters, so a 20-minute responses job writes thousands of lines. Ray has no compact
mode, so this filter, installed on that manager's logger, folds each block into one line:

    [dataset_12_0] 1,200/5,000 rows | MapBatches(EngineUDF) 1,180/5,000 (actors 2, in flight 4) | Write 1,150/5,000

Blocks are told apart by thread: each dataset's executor logs from its own thread, and the herd
runs several datasets at once.
"""

from __future__ import annotations

import logging
import re
import threading

RAY_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"

_START = re.compile(r"^=+ Running Dataset: (?P<ds>\S+) =+$")
_END = re.compile(r"^=+$")
_COUNT = re.compile(r"^\s*(?:- )?(?P<name>.+?): (?P<done>\d+)/(?P<total>\d+|\?)$")
_ACTORS = re.compile(r"Actors: (\d+)")
_IN_FLIGHT = re.compile(r"tasks_in_flight=(\d+)")
_TASKS = re.compile(r"^\s*Tasks: (\d+)")


def _n(v: str) -> str:
    return f"{int(v):,}" if v.isdigit() else v


class CompactProgress(logging.Filter):
    """Drops the lines of each progress block and rewrites its closing delimiter as one line."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[int, dict] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        with self._lock:
            if m := _START.match(msg):
                self._blocks[record.thread] = {"ds": m["ds"], "parts": [], "total": None}
                return False
            block = self._blocks.get(record.thread)
            if block is None:  # not inside a block: another message of that logger, keep it
                return True
            if _END.match(msg):
                del self._blocks[record.thread]
                record.msg, record.args = self._line(block), None
                return True
            self._add(block, msg)
            return False

    @staticmethod
    def _add(block: dict, msg: str) -> None:
        if m := _COUNT.match(msg):
            if m["name"] == "Total Progress":
                block["total"] = f"{_n(m['done'])}/{_n(m['total'])} rows"
            else:
                block["parts"].append([f"{m['name']} {_n(m['done'])}/{_n(m['total'])}"])
        elif msg.strip() and block["parts"]:  # an operator's status line: keep actors and tasks only
            notes = []
            if (a := _ACTORS.search(msg)) and a[1] != "0":
                notes.append(f"actors {a[1]}")
                if (f := _IN_FLIGHT.search(msg)) and f[1] != "0":
                    notes.append(f"in flight {f[1]}")
            elif (t := _TASKS.search(msg)) and t[1] != "0":
                notes.append(f"tasks {t[1]}")
            if notes:
                block["parts"][-1].append(f"({', '.join(notes)})")

    @staticmethod
    def _line(block: dict) -> str:
        ops = " | ".join(" ".join(p) for p in block["parts"])
        return " | ".join(x for x in (f"[{block['ds']}] {block['total'] or ''}".strip(), ops) if x)


_installed = CompactProgress()


def install_compact_progress() -> None:
    """Fold Ray Data's non-interactive progress blocks into one line each (idempotent)."""
    logger = logging.getLogger(RAY_PROGRESS_LOGGER)
    if _installed not in logger.filters:
        logger.addFilter(_installed)
