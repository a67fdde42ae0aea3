"""Engines as Ray Data actor pools: one UDF for the teacher, the students and the judges.

`apply_engine(ds, factory, to_request, label, pool, ...)` maps a dataset of rows with a `prompt`
column through an engine and returns the same rows with RESULT_SCHEMA's columns added. The
pool autoscales between `pool.min_actors` and `pool.max_actors` (Ray Data's ActorPoolStrategy;
`concurrency=` is deprecated). Two front doors size it:

- `apply_teacher(ds, teacher_cfg, gen, system_prompt, pipeline)`: the teacher (and the judges,
  which are teacher configs): chat requests with the system prompt, label column `teacher`.
- `apply_hf(ds, serving, gen, min_tokens)`: a student on HF transformers: the finished prompt text
  as it is, label column `engine`. The only student engine for T5/Flan-T5 (vLLM never served T5),
  GPT-Neo, GGUF files and CPU-only clusters. vLLM students go through
  lamini.engines.vllm_engine.apply_vllm_student.

HTTP engines (io_bound) run as *async* UDFs: Ray Data gives the actor one event loop, and
`max_concurrent_calls_per_actor` lets several batches await the engine at once on it, all
sharing its in-flight semaphore and connection pool. Without that a batch's slow tail would leave
the pool idle. They ask for a fraction of a CPU: they mostly wait. Local-model engines run as
plain sync UDFs, one batch at a time per actor, a whole CPU (or GPU) each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, AsyncIterator, Callable

import pyarrow as pa

from lamini.config import GenerationParams, PipelineConfig, TeacherConfig
from lamini.engines.base import (
    ChatRequest,
    Engine,
    Secret,
    append_results,
    build_request,
    text_request,
)
from lamini.engines.structured import RESPONSE_SCHEMA
from lamini.models.spec import StudentServing


def teacher_label(teacher_cfg: TeacherConfig) -> str:
    """A short provenance label for the output rows: engine:model."""
    model = getattr(teacher_cfg, "model", None) or "embedded-smollm2-135m-instruct"
    return f"{teacher_cfg.engine}:{model}"


@dataclass(frozen=True)
class Pool:
    """How an engine's actor pool is sized and packed."""

    min_actors: int
    max_actors: int
    batch_size: int  # rows per Ray Data batch handed to one call
    num_cpus: float
    num_gpus: float = 0.0
    max_tasks_in_flight: int = 2
    max_concurrent_calls: int | None = None  # async (io_bound) engines only


class EngineUDF:
    """Ray Data callable class: a batch with `prompt` -> the batch with result columns.

    factory() builds the engine inside the actor (torch, transformers or vllm load there, never
    on the driver); to_request(prompt) turns one row's prompt into a ChatRequest; `secrets` are
    put into the actor's environment before the engine is built (see Secret).
    """

    def __init__(
        self,
        factory: Callable[[], Engine],
        to_request: Callable[[str], ChatRequest],
        label: str,
        label_column: str = "teacher",
        secrets: dict[str, Secret] | None = None,
    ):
        # The engine reads its key from the environment; put the driver's there. It wins over a
        # variable of that name a worker node happens to have: the job runs as configured.
        for name, secret in (secrets or {}).items():
            os.environ[name] = secret.get()
        self.engine = factory()
        self.to_request, self.label, self.label_column = to_request, label, label_column

    def __del__(self):
        # Ray Data deletes the UDF when it shuts the pool down: close HTTP clients and models
        # cleanly instead of leaving aiohttp to warn about unclosed sessions.
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.close()
            except Exception:  # noqa: BLE001 - shutting down; nothing useful to do with it
                pass

    def _requests(self, batch: pa.Table) -> list[ChatRequest]:
        requests = [self.to_request(p) for p in batch.column("prompt").to_pylist()]
        if RESPONSE_SCHEMA in batch.column_names:  # rows that carry their own output schema
            for req, schema in zip(requests, batch.column(RESPONSE_SCHEMA).to_pylist()):
                req.response_schema = schema
        return requests

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.engine.generate(self._requests(batch))
        return append_results(batch, results, self.label, self.label_column)


class AsyncEngineUDF(EngineUDF):
    """For HTTP engines: many batches in flight per actor on one event loop."""

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        results = await self.engine.agenerate(self._requests(batch))
        yield append_results(batch, results, self.label, self.label_column)


def apply_engine(
    ds,
    factory: Callable[[], Engine],
    to_request: Callable[[str], ChatRequest],
    label: str,
    pool: Pool,
    *,
    label_column: str = "teacher",
    io_bound: bool = False,
    secrets: dict[str, Secret] | None = None,
    udf: type | None = None,
    udf_kwargs: dict[str, Any] | None = None,
):
    """Map `ds` (needs `prompt`) through the engine `factory` builds, on an autoscaling actor pool.
    `udf` replaces the default UDF class (a subclass of it, with `udf_kwargs` for its constructor)."""
    from ray.data import ActorPoolStrategy

    compute = ActorPoolStrategy(
        min_size=pool.min_actors,
        max_size=pool.max_actors,
        max_tasks_in_flight_per_actor=pool.max_tasks_in_flight,
        max_concurrent_calls_per_actor=pool.max_concurrent_calls if io_bound else None,
    )
    kwargs: dict[str, Any] = {"num_gpus": pool.num_gpus} if pool.num_gpus else {}
    return ds.map_batches(
        udf or (AsyncEngineUDF if io_bound else EngineUDF),
        fn_constructor_kwargs=dict(
            factory=factory, to_request=to_request, label=label, label_column=label_column, secrets=secrets,
            **(udf_kwargs or {}),
        ),
        batch_size=pool.batch_size,
        batch_format="pyarrow",
        compute=compute,
        num_cpus=pool.num_cpus,
        **kwargs,
    )


def apply_teacher(
    ds, teacher_cfg: TeacherConfig, gen: GenerationParams, system_prompt: str | None, pipeline: PipelineConfig,
    udf: type | None = None,
    udf_kwargs: dict[str, Any] | None = None,
):
    """Map `ds` (needs `prompt`) through the teacher (openai or hf; a judge is a teacher config too)
    on an autoscaling actor pool sized by `pipeline`. `udf`, `udf_kwargs`: as in apply_engine (the
    run layer passes lamini.runs.journal.JournaledUDF for HTTP teachers)."""
    from lamini.engines import ENGINES, make_engine

    io_bound = ENGINES[teacher_cfg.engine].io_bound
    # Ray Data scales a pool up when in-flight tasks / concurrency exceeds 175%, so an async
    # actor must be allowed to queue twice the batches it runs at once, or it never scales.
    concurrent = pipeline.max_concurrent_batches_per_actor if io_bound else 1
    pool = Pool(
        min_actors=pipeline.min_actors,
        max_actors=pipeline.max_actors,
        batch_size=pipeline.batch_size,
        num_cpus=pipeline.num_cpus_per_actor or (0.25 if io_bound else 1.0),
        num_gpus=pipeline.num_gpus_per_actor or 0.0,
        max_tasks_in_flight=max(pipeline.max_tasks_in_flight_per_actor, 2 * concurrent),
        max_concurrent_calls=concurrent,
    )
    key_env = getattr(teacher_cfg, "api_key_env", None)
    # The key, and the variables `${VAR}` header values name: secrets the actors need too.
    from lamini.engines.http_guards import header_env_names

    names = [key_env, *header_env_names(getattr(teacher_cfg, "extra_headers", None) or {})]
    secrets = {n: Secret(os.environ[n]) for n in names if n and os.environ.get(n)}
    # Whole-run rate limits are split evenly over the largest pool the run may have.
    factory = partial(make_engine, teacher_cfg, 1.0 / pipeline.max_actors)
    to_request = partial(build_request, system_prompt=system_prompt, gen=gen)
    return apply_engine(
        ds, factory, to_request, teacher_label(teacher_cfg), pool, io_bound=io_bound, secrets=secrets,
        udf=udf, udf_kwargs=udf_kwargs,
    )


def apply_hf(ds, serving: StudentServing, gen: GenerationParams, min_tokens: int = 0):
    """Map `ds` (needs `prompt`, the finished prompt text) through HF student actors sized by
    `serving` (a lamini.evaluate.inference.Serving). min_tokens > 0: suppress EOS until then."""
    from lamini.engines.hf_local import HFEngine

    s = serving.student
    pool = Pool(
        min_actors=s.min_actors,
        max_actors=s.max_actors,
        batch_size=s.batch_size * 4,  # a few generate() chunks per task: less Ray overhead per row
        num_cpus=s.num_cpus_per_actor,
        num_gpus=serving.num_gpus,
    )
    factory = partial(HFEngine.for_student, serving)
    to_request = partial(text_request, gen=gen, min_tokens=min_tokens)
    return apply_engine(ds, factory, to_request, f"hf:{s.name}", pool, label_column="engine")
