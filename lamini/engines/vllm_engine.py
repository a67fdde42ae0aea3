"""The `vllm` engine: vLLM engines on GPUs through Ray's own `ray.data.llm` processor.

`apply_vllm(ds, ...)` is this engine's Ray Data stage for the teacher: rows with `id`, `prompt`, ...
in; the same rows with RESULT_COLUMNS (plus `teacher`, `completed_at`, as
lamini.engines.actors writes them) out. Ray's processor runs the chat template,
tokenizer, vLLM engine actors and detokenizer; this module only maps our rows into and
out of it, with pure functions testable without vLLM or a GPU. `VLLMEngine` is the same
engine in-process (`vllm.LLM`) behind the small Engine interface.

vllm is the optional `[gpu]` extra: it is imported only inside the engine actors (by Ray)
and by `VLLMEngine`, never when this module is imported.

Ray 2.60's processor columns, read in ray/llm/_internal/batch/stages/:
  chat_template_stage.py  reads `messages`, writes `prompt` (the templated text)
  tokenize_stage.py       reads `prompt`, writes `tokenized_prompt`
  vllm_engine_stage.py    pops `prompt`, `tokenized_prompt`, `sampling_params`,
                          `multimodal_data`, `mm_processor_kwargs`, `multimodal_uuids`,
                          `tokenization_kwargs`; reads `model` (a LoRA name if it differs
                          from the engine's model); writes vLLMOutputData: `prompt`,
                          `prompt_token_ids`, `num_input_tokens`, `generated_tokens`,
                          `generated_text`, `num_generated_tokens`, `embeddings`, `metrics`,
                          `logprobs`, `prompt_logprobs`; and per row `request_id`,
                          `batch_uuid`, `time_taken_llm`, `params`, `__inference_error__`
                          ("" on success, "ExcType: message" on a failed row when
                          should_continue_on_error=True; such rows skip postprocess).
  tokenize_stage.py       DetokenizeStage rewrites `generated_text` from `generated_tokens`.
There is no finish-reason column: it is inferred from the token counts (from_vllm_row).
"""

from __future__ import annotations

import gc
import importlib.util
import time
from functools import partial
from typing import Any

from lamini.config import GenerationParams, PipelineConfig, VLLMTeacherConfig
from lamini.engines.base import (
    ChatRequest,
    ChatResult,
    build_request,
    result_to_columns,
)
from lamini.engines.structured import RESPONSE_SCHEMA, vllm_structured_outputs
from lamini.models.spec import ServedStudent, StudentServing

PROMPT_COLUMN = "prompt"  # lamini.corpus.CORPUS_SCHEMA: the text the teacher is sent
INSTALL_HINT = "pip install 'lamini-lm[gpu]'"

# Columns the processor reads, pops or writes (see the module docstring), plus its own
# internal ones. An input column with one of these names is carried under STASH + name
# and restored by from_vllm_row, so the engine neither clobbers it nor misreads it
# (our corpus rows carry `prompt`, which the chat-template stage overwrites).
ENGINE_COLUMNS = frozenset(
    {
        "messages", "sampling_params", "pooling_params", "prompt", "tokenized_prompt", "model",
        "multimodal_data", "mm_processor_kwargs", "multimodal_uuids", "tokenization_kwargs",
        "prompt_token_ids", "num_input_tokens", "generated_tokens", "generated_text",
        "num_generated_tokens", "embeddings", "metrics", "logprobs", "prompt_logprobs",
        "request_id", "batch_uuid", "time_taken_llm", "params", "__inference_error__",
        "__data", "__idx_in_batch",
    }
)  # fmt: skip
STASH = "__lamini_in__"
MAX_TOKENS_COLUMN = "__lamini_max_tokens"  # to tell "length" from "stop" on the way out


def _is_engine_column(name: str) -> bool:
    """True for the processor's columns and our own carriers, which from_vllm_row drops."""
    return name in ENGINE_COLUMNS or name == MAX_TOKENS_COLUMN or name.startswith(STASH)


def sampling_params_of(req: ChatRequest) -> dict[str, Any]:
    """A ChatRequest's sampling settings -> vllm.SamplingParams keyword arguments."""
    params: dict[str, Any] = {"max_tokens": req.max_tokens, "temperature": req.temperature, "top_p": req.top_p}
    if req.seed is not None:
        params["seed"] = req.seed
    if req.min_tokens:
        params["min_tokens"] = req.min_tokens
    if req.response_schema is not None:  # Ray's vLLM stage makes vllm's StructuredOutputsParams of it
        params["structured_outputs"] = vllm_structured_outputs(req.response_schema)
    return params


def to_vllm_row(row: dict[str, Any], system_prompt: str | None, gen: GenerationParams) -> dict[str, Any]:
    """Our request row (needs `prompt`) -> the row Ray's vLLM processor takes.

    Adds `messages` (system + user) and `sampling_params` (max_tokens, temperature,
    top_p, seed when set, from `gen`; `structured_outputs` when the row carries a
    RESPONSE_SCHEMA). Keeps every input column
    (`id` included); one whose name the engine uses travels as STASH + name.
    """
    req = build_request(row[PROMPT_COLUMN], system_prompt, gen, row.get(RESPONSE_SCHEMA))
    out = _carry(row)
    out["messages"] = req.messages
    out["sampling_params"] = sampling_params_of(req)
    out[MAX_TOKENS_COLUMN] = req.max_tokens
    return out


def to_vllm_text_row(
    row: dict[str, Any], text_column: str, gen: GenerationParams, ignore_eos: bool = False
) -> dict[str, Any]:
    """A row whose `text_column` is the finished prompt text (no chat template: students see
    the Alpaca wrapper or the raw instruction) -> the row Ray's vLLM processor takes with its
    chat-template stage off. Input columns travel as in `to_vllm_row`. ignore_eos: keep
    writing to max_tokens (benchmarks compare equal-length outputs)."""
    req = build_request(row[text_column], None, gen)
    out = _carry(row)
    out["prompt"] = row[text_column]
    params = sampling_params_of(req)
    if ignore_eos:
        params["ignore_eos"] = True
    out["sampling_params"] = params
    out[MAX_TOKENS_COLUMN] = req.max_tokens
    return out


def _carry(row: dict[str, Any]) -> dict[str, Any]:
    """The input columns, those the engine uses renamed to STASH + name (from_vllm_row restores them)."""
    return {(STASH + k if k in ENGINE_COLUMNS else k): v for k, v in row.items()}


def from_vllm_row(row: dict[str, Any], max_model_len: int | None = None) -> dict[str, Any]:
    """A row out of the processor -> the input columns plus RESULT_COLUMNS.

    finish_reason: "length" when the engine wrote max_tokens tokens (or filled
    max_model_len), else "stop". A non-empty `__inference_error__` becomes an error result
    (error_kind "generation"). completion_tokens counts the EOS token, as vLLM does.
    """
    error = row.get("__inference_error__") or None
    n_in = int(row.get("num_input_tokens") or len(row.get("prompt_token_ids") or []))
    if error:
        result = ChatResult(error=str(error), error_kind="generation", prompt_tokens=n_in)
    else:
        n_gen = int(row.get("num_generated_tokens") or len(row.get("generated_tokens") or []))
        max_tokens = row.get(MAX_TOKENS_COLUMN)
        full = (max_tokens is not None and n_gen >= max_tokens) or (
            max_model_len is not None and n_in + n_gen >= max_model_len
        )
        result = ChatResult(
            text=row.get("generated_text") or "",
            finish_reason="length" if full else "stop",
            prompt_tokens=n_in,
            completion_tokens=n_gen,
            latency_s=max(float(row.get("time_taken_llm") or 0.0), 0.0),  # -1 marks a failed row
        )
    out = {k: v for k, v in row.items() if not _is_engine_column(k)}
    out.update({k[len(STASH) :]: v for k, v in row.items() if k.startswith(STASH)})
    out.update(result_to_columns(result))
    return out


def results_table(batch, label: str, max_model_len: int | None = None, label_column: str = "teacher"):
    """A pyarrow batch out of the processor -> input columns + RESULT_SCHEMA columns, typed.

    Typed on purpose: a block whose rows all succeeded would otherwise get a `null`-typed
    `error` column, and its Parquet shard would not concatenate with one that has errors.
    Input columns keep the Arrow types they came in with.
    """
    import pyarrow as pa

    from lamini.engines.base import RESULT_SCHEMA

    rows = [from_vllm_row(r, max_model_len) for r in batch.to_pylist()]
    now = time.time()
    for r in rows:
        r[label_column] = label
        r["completed_at"] = now
    result_schema = [f.with_name(label_column) if f.name == "teacher" else f for f in RESULT_SCHEMA]
    result_names = set(RESULT_SCHEMA.names) | {label_column}
    fields = []
    for name in batch.schema.names:
        if name.startswith(STASH):
            fields.append(batch.schema.field(name).with_name(name[len(STASH) :]))
        elif not _is_engine_column(name) and name not in result_names:
            fields.append(batch.schema.field(name))
    schema = pa.schema(fields + result_schema)
    return pa.Table.from_pylist(rows, schema=schema)


def vllm_engine_kwargs(
    model_cfg: VLLMTeacherConfig | ServedStudent,
    *,
    dtype: str = "auto",
    num_gpus: float = 1.0,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The vLLM engine arguments for a teacher config or a student spec (both have
    tensor_parallel_size, max_model_len and engine_kwargs): the one place they are built, for
    Ray's processor, the in-process engine and the student benchmark alike.

    An engine smaller than a GPU (num_gpus < 1) gets the same fraction of GPU memory, so several
    engines share one GPU (vLLM otherwise claims 90% of the device). engine_kwargs win.
    """
    kwargs: dict[str, Any] = {"tensor_parallel_size": model_cfg.tensor_parallel_size}
    if dtype != "auto":
        kwargs["dtype"] = dtype
    if model_cfg.max_model_len is not None:
        kwargs["max_model_len"] = model_cfg.max_model_len
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if num_gpus < 1:
        kwargs["gpu_memory_utilization"] = round(0.9 * num_gpus, 3)
    kwargs.update(model_cfg.engine_kwargs)
    return kwargs


def processor_config(teacher_cfg: VLLMTeacherConfig, pipeline: PipelineConfig):
    """The teacher and its pool -> ray.data.llm.vLLMEngineProcessorConfig (needs no vLLM)."""
    from ray.data.llm import vLLMEngineProcessorConfig

    return vLLMEngineProcessorConfig(
        model_source=teacher_cfg.model,
        engine_kwargs=vllm_engine_kwargs(teacher_cfg),
        batch_size=teacher_cfg.batch_size,
        concurrency=(pipeline.min_actors, pipeline.max_actors),
        accelerator_type=teacher_cfg.accelerator_type,
        # A failed row becomes an error result (as for every engine) instead of failing
        # the whole Ray Data job.
        should_continue_on_error=True,
    )


def student_processor_config(serving: StudentServing):
    """Serving -> ray.data.llm.vLLMEngineProcessorConfig (needs no vLLM; unit-tested on CPU).

    A student smaller than a GPU gets a fractional GPU bundle (and, from vllm_engine_kwargs, the
    same fraction of GPU memory), so several engines share one GPU.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    s = serving.student
    extra: dict[str, Any] = {}
    if serving.num_gpus < 1:
        extra["placement_group_config"] = {
            "bundles": [{"CPU": 1, "GPU": serving.num_gpus}] * s.tensor_parallel_size,
            "strategy": "PACK",
        }
    return vLLMEngineProcessorConfig(
        model_source=serving.source,
        engine_kwargs=vllm_engine_kwargs(
            s, dtype=serving.dtype, num_gpus=serving.num_gpus, trust_remote_code=s.trust_remote_code
        ),
        batch_size=s.batch_size,
        concurrency=(s.min_actors, s.max_actors),
        # Students are not chat models: the prompt column is already the text they continue.
        chat_template_stage=False,
        tokenize_stage=True,
        detokenize_stage=True,
        should_continue_on_error=True,
        **extra,
    )


def _check_can_run() -> None:
    """Raise early when this run can never get a vLLM engine: no vllm here and no GPU anywhere.

    vllm may be missing on a CPU-only driver whose GPU workers have it, and an autoscaling
    cluster may have no GPU node yet, so either alone is not an error.
    """
    if importlib.util.find_spec("vllm") is not None:
        return
    import ray

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if not gpus:
        raise RuntimeError(
            "engine 'vllm' needs vLLM on GPU nodes: vllm is not installed here and the "
            f"Ray cluster has no GPU. Install it with `{INSTALL_HINT}` on a GPU machine, or use "
            "the 'hf' or 'openai' engine."
        )


def _through_processor(ds, config, to_row, label: str, max_model_len: int | None, label_column: str):
    """The one vLLM stage: rows -> processor rows (to_row) -> Ray's processor -> result rows."""
    from ray.data.llm import build_processor

    # Identity pre/postprocess: our own maps around the processor can rename and drop
    # columns (a processor preprocess can only add), and error rows skip its postprocess.
    processor = build_processor(config)
    ds = processor(ds.map(to_row))
    return ds.map_batches(
        results_table,
        fn_kwargs={"label": label, "max_model_len": max_model_len, "label_column": label_column},
        batch_format="pyarrow",
    )


def apply_vllm(
    ds, teacher_cfg: VLLMTeacherConfig, gen: GenerationParams, system_prompt: str | None, pipeline: PipelineConfig
):
    """Map `ds` (needs `prompt`) through vLLM engine actors -> the rows with RESULT_COLUMNS added.

    The pipeline's min/max_actors size the engine pool. Lazy like every Ray Data stage.
    """
    from lamini.engines.actors import teacher_label

    _check_can_run()
    to_row = partial(to_vllm_row, system_prompt=system_prompt, gen=gen)
    config = processor_config(teacher_cfg, pipeline)
    return _through_processor(ds, config, to_row, teacher_label(teacher_cfg), teacher_cfg.max_model_len, "teacher")


def apply_vllm_student(ds, serving: StudentServing, gen: GenerationParams, min_tokens: int = 0):
    """Map `ds` (needs `prompt`, the finished text) through a student's vLLM engine actors.
    min_tokens > 0: ignore EOS (benchmarks)."""
    to_row = partial(to_vllm_text_row, text_column="prompt", gen=gen, ignore_eos=bool(min_tokens))
    s = serving.student
    return _through_processor(ds, student_processor_config(serving), to_row, f"vllm:{s.name}", s.max_model_len, "engine")


class VLLMEngine:
    """vllm.LLM in this process as an Engine: `generate(requests) -> results`, `close()`.

    Chat requests go through the model's chat template (`LLM.chat`); text requests (students)
    are continued as they are (`LLM.generate`)."""

    def __init__(self, cfg: VLLMTeacherConfig):
        """Starts the engine; raises without vllm."""
        try:
            import vllm
        except ImportError as e:
            raise ImportError(f"engine 'vllm' needs vLLM and a GPU: `{INSTALL_HINT}`") from e
        self.cfg = cfg
        self._vllm = vllm
        self.llm = vllm.LLM(model=cfg.model, **vllm_engine_kwargs(cfg))

    def describe(self) -> dict[str, Any]:
        """What the run manifest records about this engine."""
        return {"engine": "vllm", "model": self.cfg.model, "tensor_parallel_size": self.cfg.tensor_parallel_size}

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order; a failed batch returns error results."""
        if not requests:
            return []
        params = [self._sampling_params(r) for r in requests]
        t0 = time.perf_counter()
        try:
            if all(r.text is not None for r in requests):
                outputs = self.llm.generate([r.text for r in requests], sampling_params=params, use_tqdm=False)
            else:
                outputs = self.llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - the batch fails, the run goes on
            msg = f"{type(e).__name__}: {e}"
            latency = time.perf_counter() - t0
            return [ChatResult(error=msg, error_kind="generation", latency_s=latency) for _ in requests]
        latency = time.perf_counter() - t0
        results = []
        for out in outputs:
            choice = out.outputs[0]
            results.append(
                ChatResult(
                    text=choice.text,
                    finish_reason="length" if choice.finish_reason == "length" else "stop",
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(choice.token_ids),
                    latency_s=latency,
                )
            )
        return results

    def _sampling_params(self, req: ChatRequest):
        kwargs = sampling_params_of(req)
        if "structured_outputs" in kwargs:
            kwargs["structured_outputs"] = self._vllm.sampling_params.StructuredOutputsParams(**kwargs["structured_outputs"])
        return self._vllm.SamplingParams(**kwargs)

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        return self.generate(requests)

    def close(self) -> None:
        """Drop the engine (frees its GPU memory once collected)."""
        self.llm = None
        gc.collect()


__all__ = [
    "VLLMEngine",
    "apply_vllm",
    "apply_vllm_student",
    "student_processor_config",
    "vllm_engine_kwargs",
    "from_vllm_row",
    "processor_config",
    "results_table",
    "sampling_params_of",
    "to_vllm_row",
    "to_vllm_text_row",
]
