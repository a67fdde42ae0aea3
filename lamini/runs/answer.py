"""Answer a table of prompts with a teacher, resumably: the core every generation stage uses.

In: an Arrow table with `id` (unique, stable) and `prompt` (the user message), any other
columns ride along; a run directory. Out: `dataset/responses.parquet` and
`dataset/errors.parquet` in that run directory with exactly one row per input id, and the
counts. Re-running with the same table sends only ids that have no result yet.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lamini.config import GenerationParams, PipelineConfig, RayInitConfig, TeacherConfig
from lamini.runs.rundir import RunDir
from lamini.runs.shards import SHARDS, FinalCounts, finalize, scan_shards

log = logging.getLogger(__name__)


@dataclass
class TeacherRun:
    """What one call did: rows sent now, rows found done, pipeline seconds, final counts."""

    sent: int
    already_done: int
    pipeline_s: float
    counts: FinalCounts

    @property
    def sent_per_s(self) -> float:
        return round(self.sent / self.pipeline_s, 2) if self.sent and self.pipeline_s > 0 else 0.0


def _blocks(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    # Slicing on the driver gives Ray Data ready-made blocks: no repartition shuffle, and each
    # block becomes one shard file as soon as its rows are answered (the unit lost on a kill).
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)]


def answer_table(
    table: pa.Table,
    run: RunDir,
    *,
    teacher: TeacherConfig,
    generation: GenerationParams,
    system_prompt: str | None,
    pipeline: PipelineConfig,
    ray_cfg: RayInitConfig,
    retry_errors: bool = True,
) -> TeacherRun:
    """Send every row of `table` with no result in `run` yet through the teacher, then finalize."""
    import ray

    from lamini.engines import engine_stage
    from lamini.runs.ray_env import init_ray

    done = scan_shards(run)
    skip = done.ok if retry_errors else (done.ok | done.failed)
    ids = table.column("id")
    pending = table.filter(pc.invert(pc.is_in(ids, value_set=pa.array(sorted(skip), pa.string()))))
    already_done = table.num_rows - pending.num_rows
    log.info("%s: %d rows, %d already answered, %d to send", run.uri, table.num_rows, already_done, pending.num_rows)

    pipeline_s = 0.0
    if pending.num_rows:
        init_ray(ray_cfg)
        t0 = time.time()  # rows/s of the pipeline itself, not of starting Ray
        # from_blocks keeps our blocks as they are (one block = one shard = the unit of resume)
        # and builds their metadata on the driver, where from_arrow runs a remote task per block
        # before the first request. It is a DeveloperAPI, hence the fallback.
        make = getattr(ray.data, "from_blocks", ray.data.from_arrow)
        ds = make(_blocks(pending, pipeline.rows_per_block))
        ds = engine_stage(teacher)(ds, teacher, generation, system_prompt, pipeline)
        ds.write_parquet(run.uri_of(SHARDS))
        pipeline_s = time.time() - t0
    # Nothing written since the scan above: it still describes the shards, so reuse it.
    counts = finalize(run, set(ids.to_pylist()), index=None if pending.num_rows else done)
    return TeacherRun(sent=pending.num_rows, already_done=already_done, pipeline_s=pipeline_s, counts=counts)
