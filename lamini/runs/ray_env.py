"""Connecting the driver to Ray: a cluster when there is one, else a local Ray."""

from __future__ import annotations

import logging
import os
from typing import Any

from lamini.config import RayInitConfig

log = logging.getLogger(__name__)


def init_ray(cfg: RayInitConfig, dashboard: bool = False) -> None:
    """Attach to cfg.address or $RAY_ADDRESS (set by `ray job submit`); else start a local Ray.

    Idempotent: a driver that already called ray.init (a test, a notebook) keeps its Ray.
    dashboard: start a local Ray with its dashboard, which serves the State API (Ray Train's
    placement-group cleaner needs it to free the workers of a Tune trial that was stopped).
    """
    import ray

    from lamini.runs.progress_log import install_compact_progress

    install_compact_progress()
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
