"""Teacher backends as Ray Data actor pools.

`apply_teacher(ds, ...)` maps a dataset of request rows (`id`, `prompt`, ...) through a
teacher and returns the same rows with RESULT_COLUMNS added. The pool autoscales between
`min_actors` and `max_actors` (Ray Data's ActorPoolStrategy; `concurrency=` is deprecated).

HTTP teachers (io_bound) run as *async* UDFs: Ray Data gives the actor one event loop, and
`max_concurrent_calls_per_actor` lets several batches await the teacher at once on it, all
sharing the teacher's in-flight semaphore and connection pool. Without that a batch's slow
tail would leave the pool idle. They ask for a fraction of a CPU: they mostly wait.
Local-model teachers run as plain sync UDFs, one batch at a time per actor, a whole CPU
(or GPU) each.
"""

from __future__ import annotations

import os
import time
from typing import Any, AsyncIterator

import pyarrow as pa

from lamini.teachers.base import RESULT_COLUMNS, Secret, build_request, result_to_columns

# Arrow types of the result columns, so every output block has the same schema (an all-null
# `error` column would otherwise be typed `null` and clash with a block that has errors).
RESULT_SCHEMA = pa.schema(
    [
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("attempts", pa.int64()),
        ("latency_s", pa.float64()),
        ("teacher", pa.string()),
        ("completed_at", pa.float64()),
    ]
)


def teacher_label(teacher_cfg: Any) -> str:
    """A short provenance label for the output rows: backend:model."""
    model = getattr(teacher_cfg, "model", None) or "embedded-smollm2-135m-instruct"
    return f"{teacher_cfg.backend}:{model}"


def _append_results(batch: pa.Table, results: list, label: str) -> pa.Table:
    cols = {name: [] for name in RESULT_COLUMNS}
    for r in results:
        for k, v in result_to_columns(r).items():
            cols[k].append(v)
    now = time.time()
    cols["teacher"] = [label] * len(results)
    cols["completed_at"] = [now] * len(results)
    for field in RESULT_SCHEMA:
        batch = batch.append_column(field, pa.array(cols[field.name], type=field.type))
    return batch


class _TeacherUDFBase:
    def __init__(
        self, teacher_cfg: Any, gen: Any, system_prompt: str | None, share: float = 1.0, secrets: dict | None = None
    ):
        import os

        from lamini.teachers import make_teacher

        # The teacher reads its key from the environment; put the driver's there (see Secret). It
        # wins over a variable of that name a worker node happens to have: the job runs as configured.
        for name, secret in (secrets or {}).items():
            os.environ[name] = secret.get()

        self.teacher = make_teacher(teacher_cfg, share)
        self.gen = gen
        self.system_prompt = system_prompt
        self.label = teacher_label(teacher_cfg)

    def __del__(self):
        # Ray Data deletes the UDF when it shuts the pool down: close HTTP clients and models
        # cleanly instead of leaving aiohttp to warn about unclosed sessions.
        teacher = getattr(self, "teacher", None)
        if teacher is not None:
            try:
                teacher.close()
            except Exception:  # noqa: BLE001 - shutting down; nothing useful to do with it
                pass

    def _requests(self, batch: pa.Table) -> list:
        return [build_request(p, self.system_prompt, self.gen) for p in batch.column("prompt").to_pylist()]


class AsyncTeacherUDF(_TeacherUDFBase):
    """For HTTP teachers: many batches in flight per actor on one event loop."""

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        results = await self.teacher.agenerate(self._requests(batch))
        yield _append_results(batch, results, self.label)


class SyncTeacherUDF(_TeacherUDFBase):
    """For local-model teachers: batched generate, one batch at a time per actor."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.teacher.generate(self._requests(batch))
        return _append_results(batch, results, self.label)


def apply_teacher(ds, teacher_cfg: Any, gen: Any, system_prompt: str | None, pipeline: Any):
    """Map `ds` (needs `prompt`) through the teacher on an autoscaling actor pool."""
    from ray.data import ActorPoolStrategy

    from lamini.teachers import BACKENDS

    io_bound = BACKENDS[teacher_cfg.backend].io_bound
    num_cpus = pipeline.num_cpus_per_actor or (0.25 if io_bound else 1.0)
    # Whole-run rate limits are split evenly over the largest pool the run may have.
    share = 1.0 / pipeline.max_actors
    # Ray Data scales a pool up when in-flight tasks / concurrency exceeds 175%, so an async
    # actor must be allowed to queue twice the batches it runs at once, or it never scales.
    concurrent = pipeline.max_concurrent_batches_per_actor if io_bound else 1
    compute = ActorPoolStrategy(
        min_size=pipeline.min_actors,
        max_size=pipeline.max_actors,
        max_tasks_in_flight_per_actor=max(pipeline.max_tasks_in_flight_per_actor, 2 * concurrent),
        max_concurrent_calls_per_actor=concurrent if io_bound else None,
    )
    udf = AsyncTeacherUDF if io_bound else SyncTeacherUDF
    key_env = getattr(teacher_cfg, "api_key_env", None)
    secrets = {key_env: Secret(os.environ[key_env])} if key_env and os.environ.get(key_env) else {}
    kwargs: dict[str, Any] = {}
    if pipeline.num_gpus_per_actor:
        kwargs["num_gpus"] = pipeline.num_gpus_per_actor
    return ds.map_batches(
        udf,
        fn_constructor_kwargs=dict(
            teacher_cfg=teacher_cfg, gen=gen, system_prompt=system_prompt, share=share, secrets=secrets
        ),
        batch_size=pipeline.batch_size,
        batch_format="pyarrow",
        compute=compute,
        num_cpus=num_cpus,
        **kwargs,
    )
