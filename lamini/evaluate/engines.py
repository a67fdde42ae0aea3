"""The two student engines, as Ray Data stages with one contract.

In: a dataset whose `prompt` column holds each request's finished text (the Alpaca wrapper or
the raw instruction, see lamini.evaluate.inference.wrap). Out: the same rows plus
RESULT_COLUMNS (`response`, `finish_reason`, token counts, `error`, ...) and `engine`.

- `apply_hf(ds, serving, gen)`: HF transformers on an autoscaling actor pool, batched generate
  (causal or encoder-decoder). The only engine for T5/Flan-T5 (vLLM never served T5), GPT-Neo,
  GGUF files and CPU-only clusters.
- `apply_vllm(ds, serving, gen)`: Ray's own `ray.data.llm` vLLM processor (continuous batching,
  autoscaling engine actors), chat-template stage off, fractional GPUs for small students.

Same sampling on both: max_tokens, temperature, top_p and seed from one GenerationParams.
torch, transformers and vllm load inside the actors, never when this module is imported.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pyarrow as pa

from lamini.teachers.actors import _append_results


class HFStudentUDF:
    """Ray Data callable class: a batch with `prompt` -> the batch with result columns.

    serving: a lamini.evaluate.inference.Serving (student spec, family, device, dtype);
    gen: GenerationParams; min_tokens > 0 suppresses EOS until that many tokens (benchmarks).
    """

    def __init__(self, serving: Any, gen: Any, min_tokens: int = 0):
        from lamini.evaluate.inference import load_for_generation
        from lamini.teachers.hf_local import model_eos_ids

        self.serving, self.gen, self.min_tokens = serving, gen, min_tokens
        self.model, self.tokenizer = load_for_generation(serving)
        self.eos_ids = model_eos_ids(self.model, self.tokenizer)
        self.label = f"hf:{serving.student.name}"

    def generate(self, prompts: list[str]) -> list:
        """Prompts -> ChatResults in the same order, in chunks of the student's batch_size,
        sorted by length so a chunk wastes little on padding."""
        from lamini.teachers.hf_local import batched_generate, by_length_chunks

        def chunk(ps: list[str]) -> list:
            return batched_generate(
                self.model,
                self.tokenizer,
                ps,
                max_tokens=self.gen.max_tokens,
                temperature=self.gen.temperature,
                top_p=self.gen.top_p,
                seed=self.gen.seed,
                eos_ids=self.eos_ids,
                max_input_tokens=self.serving.student.max_input_tokens,
                min_tokens=self.min_tokens,
            )

        return by_length_chunks(prompts, self.serving.student.batch_size, chunk)

    def __call__(self, batch: pa.Table) -> pa.Table:
        results = self.generate(batch.column("prompt").to_pylist())
        return _teacher_to_engine(_append_results(batch, results, self.label))


def apply_hf(ds, serving: Any, gen: Any, min_tokens: int = 0):
    """Map `ds` (needs `prompt`) through HF actors sized by `serving` (Serving)."""
    from ray.data import ActorPoolStrategy

    s = serving.student
    kwargs: dict[str, Any] = {"num_gpus": serving.num_gpus} if serving.num_gpus else {}
    return ds.map_batches(
        HFStudentUDF,
        fn_constructor_kwargs=dict(serving=serving, gen=gen, min_tokens=min_tokens),
        batch_size=s.batch_size * 4,  # a few generate() chunks per task: less Ray overhead per row
        batch_format="pyarrow",
        compute=ActorPoolStrategy(min_size=s.min_actors, max_size=s.max_actors, max_tasks_in_flight_per_actor=2),
        num_cpus=s.num_cpus_per_actor,
        **kwargs,
    )


def vllm_processor_config(serving: Any):
    """Serving -> ray.data.llm.vLLMEngineProcessorConfig (needs no vLLM; unit-tested on CPU).

    A student smaller than a GPU gets a fractional GPU bundle and the same fraction of GPU
    memory, so several engines share one GPU (vLLM otherwise claims 90% of the device).
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    s = serving.student
    engine_kwargs: dict[str, Any] = {"tensor_parallel_size": s.tensor_parallel_size}
    if serving.dtype != "auto":
        engine_kwargs["dtype"] = serving.dtype
    if s.max_model_len is not None:
        engine_kwargs["max_model_len"] = s.max_model_len
    if s.trust_remote_code:
        engine_kwargs["trust_remote_code"] = True
    extra: dict[str, Any] = {}
    if serving.num_gpus < 1:
        engine_kwargs["gpu_memory_utilization"] = round(0.9 * serving.num_gpus, 3)
        extra["placement_group_config"] = {
            "bundles": [{"CPU": 1, "GPU": serving.num_gpus}] * s.tensor_parallel_size,
            "strategy": "PACK",
        }
    engine_kwargs.update(s.engine_kwargs)
    return vLLMEngineProcessorConfig(
        model_source=serving.source,
        engine_kwargs=engine_kwargs,
        batch_size=s.batch_size,
        concurrency=(s.min_actors, s.max_actors),
        # Students are not chat models: the prompt column is already the text they continue.
        chat_template_stage=False,
        tokenize_stage=True,
        detokenize_stage=True,
        should_continue_on_error=True,
        **extra,
    )


def apply_vllm(ds, serving: Any, gen: Any, min_tokens: int = 0):
    """Map `ds` (needs `prompt`) through vLLM engine actors. min_tokens > 0: ignore EOS."""
    from ray.data.llm import build_processor

    from lamini.teachers.vllm_engine import results_table, to_vllm_text_row

    processor = build_processor(vllm_processor_config(serving))
    ds = ds.map(partial(to_vllm_text_row, text_column="prompt", gen=gen, ignore_eos=bool(min_tokens)))
    ds = processor(ds)
    ds = ds.map_batches(
        results_table,
        fn_kwargs={"label": f"vllm:{serving.student.name}", "max_model_len": serving.student.max_model_len},
        batch_format="pyarrow",
    )
    return ds.map_batches(_teacher_to_engine, batch_format="pyarrow")


def _teacher_to_engine(batch: pa.Table) -> pa.Table:
    return batch.rename_columns([("engine" if n == "teacher" else n) for n in batch.column_names])


ENGINES = {"hf": apply_hf, "vllm": apply_vllm}
