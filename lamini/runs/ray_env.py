"""Connecting the driver to Ray: a cluster when there is one, else a local Ray."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from lamini.config import RayInitConfig

log = logging.getLogger(__name__)

# Ray Data's progress report when stdout is not a terminal (a job log, a CI run, `| tee`).
PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"
_PROGRESS_LINE = re.compile(r"^\s*-?\s*(.+?): (\d+)/(\d+|\?)$")


class CompactProgress(logging.Filter):
    """Ray Data logs its non-interactive progress as a block of a dozen lines every interval
    (delimiters, resource summaries, one line per operator); this keeps one line per interval:
    `Ray Data <dataset>: Total Progress: 120/5000 | MapBatches(JournaledUDF): 120/5000 | Write: 96/5000`.
    Ray has no setting for the format (only RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL for the
    interval), hence a filter on its logger: it drops the block's records and rewrites the last."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if msg.startswith("======= Running Dataset:"):
            self.parts = [f"Ray Data {msg.strip('= ').removeprefix('Running Dataset:').strip()}:"]
            return False
        if self.parts is None:
            return True
        if msg and set(msg) == {"="}:  # the block's closing delimiter: emit the one line instead
            head, *progress = self.parts
            record.msg, record.args, self.parts = f"{head} {' | '.join(progress)}", None, None
            return True
        m = _PROGRESS_LINE.match(msg)
        if m:
            self.parts.append(f"{m.group(1)}: {m.group(2)}/{m.group(3)}")
        return False


def compact_progress_logs() -> None:
    """Install CompactProgress on Ray Data's progress logger (once per process)."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    if not any(isinstance(f, CompactProgress) for f in logger.filters):
        logger.addFilter(CompactProgress())


def init_ray(cfg: RayInitConfig, dashboard: bool = False) -> None:
    """Attach to cfg.address or $RAY_ADDRESS (set by `ray job submit`); else start a local Ray.

    Idempotent: a driver that already called ray.init (a test, a notebook) keeps its Ray.
    dashboard: start a local Ray with its dashboard, which serves the State API (Ray Train's
    placement-group cleaner needs it to free the workers of a Tune trial that was stopped).
    """
    import ray

    compact_progress_logs()
    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    kwargs: dict[str, Any] = {"include_dashboard": dashboard}
    if cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg.temp_dir:
        os.makedirs(cfg.temp_dir, exist_ok=True)
        kwargs["_temp_dir"] = os.path.abspath(cfg.temp_dir)
    ray.init(**kwargs)
