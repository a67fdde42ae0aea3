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

from lamini.config import (
    GenerationParams,
    PipelineConfig,
    RayInitConfig,
    TeacherBudget,
    TeacherConfig,
)
from lamini.engines.abort import RunAborted
from lamini.runs.budget import (
    CAP_NAMES,
    BudgetClient,
    Prices,
    budget_keeper,
    budget_left,
)
from lamini.runs.journal import JournaledUDF, fold_journals
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
    budget_exhausted: str | None = None  # the cap (max_requests, max_tokens, max_cost_usd) that left rows unsent
    unsent: int = 0  # rows the budget left unsent (counted in counts.missing; a later run sends them)

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
    budget: TeacherBudget | None = None,
) -> TeacherRun:
    """Send every row of `table` with no result in `run` yet through the teacher, then finalize.
    `budget`: caps on what `run` may spend in all (HTTP teachers; lamini.runs.budget)."""
    import ray

    from lamini.engines import ENGINES, engine_stage
    from lamini.runs.ray_env import init_ray

    fold_journals(run)  # rows a killed run answered but never wrote to a shard count as done
    done = scan_shards(run)
    skip = done.ok if retry_errors else (done.ok | done.failed)
    ids = table.column("id")
    pending = table.filter(pc.invert(pc.is_in(ids, value_set=pa.array(sorted(skip), pa.string()))))
    already_done = table.num_rows - pending.num_rows
    log.info("%s: %d rows, %d already answered, %d to send", run.uri, table.num_rows, already_done, pending.num_rows)

    pipeline_s = 0.0
    io_bound = ENGINES[teacher.engine].io_bound
    caps = budget if budget is not None and io_bound and budget != TeacherBudget() else None
    left: dict[str, float] | None = None
    exhausted = None
    if caps is not None and pending.num_rows:
        prices = Prices(teacher.price_per_1m_prompt_tokens or 0.0, teacher.price_per_1m_completion_tokens or 0.0)
        left = budget_left(caps, run, prices)
        exhausted = next((CAP_NAMES[k] for k, v in left.items() if v <= 0), None)
        if exhausted:
            log.warning("%s: budget %s already spent; nothing is sent", run.uri, exhausted)
    if pending.num_rows and teacher.engine == "openai_batch":  # the Batch API: files and polling, no actors
        from lamini.runs.batch_api import answer_with_batches

        t0 = time.time()
        answer_with_batches(pending, run, teacher, generation, system_prompt)
        pipeline_s = time.time() - t0
    elif pending.num_rows and not exhausted:
        init_ray(ray_cfg)
        t0 = time.time()  # rows/s of the pipeline itself, not of starting Ray
        # from_blocks keeps our blocks as they are (one block = one shard = the unit of resume)
        # and builds their metadata on the driver, where from_arrow runs a remote task per block
        # before the first request. It is a DeveloperAPI, hence the fallback.
        make = getattr(ray.data, "from_blocks", ray.data.from_arrow)
        ds = make(_blocks(pending, pipeline.rows_per_block))
        # HTTP teachers journal every attempt and answered row as it happens: a kill then loses
        # at most the requests in flight, not whole blocks (lamini.runs.journal).
        extra: dict = {"udf": JournaledUDF, "udf_kwargs": {"journal_uri": run.uri}} if io_bound else {}
        keeper = None
        if left is not None:
            keeper = budget_keeper(left)
            share = 16 * pipeline.max_actors  # allowance per request to the keeper; see lamini.runs.budget
            extra["udf_kwargs"]["budget"] = BudgetClient(keeper, prices, {k: v / share for k, v in left.items()})
        ds = engine_stage(teacher)(ds, teacher, generation, system_prompt, pipeline, **extra)
        try:
            ds.write_parquet(run.uri_of(SHARDS))
        except Exception as e:
            # A teacher that stopped the run (RunAborted in an actor) reaches us wrapped in Ray's
            # and Ray Data's exceptions: hand on only the reason. Any other failure is a bug.
            aborted = RunAborted.find(e)
            if aborted is None:
                raise
            raise aborted from None
        finally:
            if keeper is not None:
                refused = ray.get(keeper.state.remote())["exhausted"]
                exhausted = CAP_NAMES[refused] if refused else None
                ray.kill(keeper)
        pipeline_s = time.time() - t0
        fold = fold_journals(run)  # every row is in a shard now: this drops the twins, keeps the accounting
        if fold.stops:  # an actor's teacher stopped the run (the journal says why; see JournaledUDF)
            raise RunAborted(fold.stops[0])
    # Nothing written since the scan above: it still describes the shards, so reuse it.
    counts = finalize(run, set(ids.to_pylist()), index=None if pending.num_rows else done)
    # With a cap reached, the rows without a result are the ones the budget did not cover (every
    # row sent is journaled): they were not sent, not lost.
    unsent = counts.missing if exhausted else 0
    return TeacherRun(sent=pending.num_rows - unsent, already_done=already_done, pipeline_s=pipeline_s, counts=counts,
                      budget_exhausted=exhausted, unsent=unsent)
