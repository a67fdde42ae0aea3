"""The `vllm` backend's row mapping (pure, no vLLM needed) and, on a GPU with vLLM, end to end."""

from __future__ import annotations

import importlib.util
from functools import partial

import pyarrow as pa
import pytest

from lamini import SYSTEM_PROMPT
from lamini.config import GenerationParams, PipelineConfig, VLLMTeacherConfig
from lamini.engines.base import RESULT_COLUMNS, build_request
from lamini.engines.vllm_engine import (
    from_vllm_row,
    processor_config,
    results_table,
    to_vllm_row,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None

ROW = {
    "id": "alpaca-17",
    "instruction": "Give three tips for staying healthy.",
    "input": "",
    "prompt": "Give three tips for staying healthy.",
    "source": "alpaca",
    "subset": "",
}


def _engine_output(row: dict, text: str, n_gen: int, n_in: int = 30) -> dict:
    """What Ray 2.60's processor makes of a preprocessed row (ray/llm/_internal/batch/stages/):
    the chat-template stage overwrites `prompt`, the engine stage pops `tokenized_prompt` and
    `sampling_params` and adds vLLMOutputData plus its bookkeeping columns."""
    out = {k: v for k, v in row.items() if k not in ("sampling_params",)}
    out.update(
        prompt="<|im_start|>system\n...<|im_start|>assistant\n",
        prompt_token_ids=list(range(n_in)),
        num_input_tokens=n_in,
        generated_tokens=list(range(n_gen)),
        generated_text=text,
        num_generated_tokens=n_gen,
        embeddings=None,
        metrics=None,
        logprobs=None,
        prompt_logprobs=None,
        request_id=3,
        batch_uuid="0f" * 16,
        time_taken_llm=0.25,
        params="SamplingParams(...)",
        __inference_error__="",
    )
    return out


def _error_output(row: dict) -> dict:
    """A failed row as vLLMEngineStageUDF._generate_with_error_handling builds it."""
    out = _engine_output(row, "", 0, 0)
    out.update(prompt_token_ids=None, generated_tokens=[], request_id=-1, time_taken_llm=-1, params="")
    out["__inference_error__"] = "ValueError: prompt is longer than max_model_len"
    return out


def test_to_vllm_row_builds_messages_and_sampling_params():
    gen = GenerationParams(max_tokens=64, temperature=0.3, top_p=0.9, seed=5)
    out = to_vllm_row(ROW, SYSTEM_PROMPT, gen)
    assert out["messages"] == build_request(ROW["prompt"], SYSTEM_PROMPT, gen).messages
    assert out["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert out["sampling_params"] == {"max_tokens": 64, "temperature": 0.3, "top_p": 0.9, "seed": 5}
    assert out["id"] == ROW["id"] and out["source"] == "alpaca"
    # `prompt` is an engine column (the chat template overwrites it): carried aside.
    assert "prompt" not in out and ROW["prompt"] in out.values()

    no_seed = to_vllm_row(ROW, None, GenerationParams(max_tokens=8, temperature=0.0))
    assert no_seed["sampling_params"] == {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0}
    assert no_seed["messages"] == [{"role": "user", "content": ROW["prompt"]}]


def test_round_trip_restores_input_and_adds_results():
    gen = GenerationParams(max_tokens=16, temperature=0.0)
    done = from_vllm_row(_engine_output(to_vllm_row(ROW, SYSTEM_PROMPT, gen), "Eat well.", n_gen=4))
    assert {k: done[k] for k in ROW} == ROW
    assert set(done) == set(ROW) | set(RESULT_COLUMNS)
    assert done["response"] == "Eat well." and done["finish_reason"] == "stop"
    assert (done["prompt_tokens"], done["completion_tokens"]) == (30, 4)
    assert done["error"] is None and done["attempts"] == 1 and done["latency_s"] == 0.25

    full = from_vllm_row(_engine_output(to_vllm_row(ROW, None, gen), "x" * 16, n_gen=16))
    assert full["finish_reason"] == "length"
    # Stopped by the context length before max_tokens: also "length".
    ctx = from_vllm_row(_engine_output(to_vllm_row(ROW, None, gen), "x", n_gen=10, n_in=54), max_model_len=64)
    assert ctx["finish_reason"] == "length"


def test_error_rows_map_to_error_columns():
    done = from_vllm_row(_error_output(to_vllm_row(ROW, None, GenerationParams())))
    assert {k: done[k] for k in ROW} == ROW
    assert done["response"] is None and done["finish_reason"] is None
    assert done["error_kind"] == "generation" and "max_model_len" in done["error"]
    assert done["completion_tokens"] == 0 and done["latency_s"] == 0.0


def test_results_table_is_typed_like_the_actor_stage():
    from lamini.engines.base import RESULT_SCHEMA

    gen = GenerationParams(max_tokens=16)
    pre = to_vllm_row(ROW, None, gen)
    ok_only = pa.Table.from_pylist([_engine_output(pre, "Eat well.", 3)])
    mixed = pa.Table.from_pylist([_engine_output(pre, "Eat well.", 3), _error_output(pre)])
    for batch in (ok_only, mixed):
        table = results_table(batch, label="vllm:tiny")
        assert table.schema.names == list(ROW) + RESULT_SCHEMA.names
        for field in RESULT_SCHEMA:
            assert table.schema.field(field.name).type == field.type  # never `null`
        assert table.column("prompt").to_pylist()[0] == ROW["prompt"]
        assert table.column("teacher").to_pylist()[0] == "vllm:tiny"
    assert mixed.num_rows == 2 and results_table(mixed, "t").column("error_kind").to_pylist() == [None, "generation"]


def test_to_vllm_row_through_ray_data(ray_local):
    import ray

    gen = GenerationParams(max_tokens=32, temperature=0.7, seed=1)
    rows = [dict(ROW, id=f"r{i}", prompt=f"Question {i}?") for i in range(4)]
    out = ray.data.from_items(rows).map(partial(to_vllm_row, system_prompt=SYSTEM_PROMPT, gen=gen)).take_all()
    out.sort(key=lambda r: r["id"])
    assert [r["messages"][-1]["content"] for r in out] == [f"Question {i}?" for i in range(4)]
    assert all(r["sampling_params"] == {"max_tokens": 32, "temperature": 0.7, "top_p": 1.0, "seed": 1} for r in out)


def test_processor_config_from_our_configs():
    teacher = VLLMTeacherConfig(
        model="/models/teacher", tensor_parallel_size=2, batch_size=32, max_model_len=4096,
        accelerator_type="H100", engine_kwargs={"gpu_memory_utilization": 0.8},
    )  # fmt: skip
    cfg = processor_config(teacher, PipelineConfig(min_actors=1, max_actors=3))
    assert cfg.model_source == "/models/teacher" and cfg.batch_size == 32
    assert cfg.concurrency == (1, 3) and cfg.accelerator_type == "H100"
    assert cfg.should_continue_on_error is True
    kw = cfg.engine_kwargs
    assert kw["tensor_parallel_size"] == 2 and kw["max_model_len"] == 4096 and kw["gpu_memory_utilization"] == 0.8
    with pytest.raises(ValueError, match="max_model_len"):
        VLLMTeacherConfig(model="m", engine_kwargs={"max_model_len": 10})


@pytest.mark.skipif(HAS_VLLM, reason="checks the message shown when vllm is absent")
def test_without_vllm_and_gpu_the_error_says_what_to_install():
    import ray

    from lamini.engines.vllm_engine import VLLMEngine, apply_vllm

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0):
        pytest.skip("this Ray cluster has a GPU")
    teacher = VLLMTeacherConfig(model="m")
    with pytest.raises(RuntimeError, match=r"lamini-lm\[gpu\]"):
        apply_vllm(None, teacher, GenerationParams(), None, PipelineConfig())
    with pytest.raises(ImportError, match=r"lamini-lm\[gpu\]"):
        VLLMEngine(teacher)


@pytest.mark.gpu
def test_apply_vllm_end_to_end_on_tiny_model(tmp_path, request):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not HAS_VLLM:
        pytest.skip("needs a CUDA GPU and vllm (pip install 'lamini-lm[gpu]')")
    ray = request.getfixturevalue("ray_local")  # only once we know the test runs

    from lamini.engines.vllm_engine import apply_vllm
    from lamini.testing.tiny_models import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path / "tiny")
    teacher = VLLMTeacherConfig(
        model=str(model),
        batch_size=4,
        max_model_len=512,
        engine_kwargs={"gpu_memory_utilization": 0.3, "enforce_eager": True},
    )
    rows = [dict(ROW, id=f"r{i}", prompt=f"Question number {i}?") for i in range(6)]
    gen = GenerationParams(max_tokens=8, temperature=0.0)
    ds = apply_vllm(ray.data.from_items(rows), teacher, gen, SYSTEM_PROMPT, PipelineConfig(min_actors=1, max_actors=1))
    out = sorted(ds.take_all(), key=lambda r: r["id"])
    assert [r["id"] for r in out] == [f"r{i}" for i in range(6)]
    assert [r["prompt"] for r in out] == [f"Question number {i}?" for i in range(6)]
    for r in out:
        assert r["error"] is None, r["error"]
        assert r["finish_reason"] in {"stop", "length"} and 0 < r["completion_tokens"] <= 8 and r["prompt_tokens"] > 0


def test_a_row_with_a_response_schema_gets_structured_outputs():
    """vLLM's structured outputs through Ray's processor: `structured_outputs` in the row's
    sampling_params (Ray 2.60's vLLM stage makes vllm's StructuredOutputsParams of it), the schema
    kept as JSON text; the schema column itself rides along like any input column."""
    schema = '{"properties":{"instructions":{"type":"array"}},"type":"object"}'
    out = to_vllm_row({**ROW, "response_schema": schema}, None, GenerationParams(max_tokens=8, temperature=0.0))
    assert out["sampling_params"]["structured_outputs"] == {"json": schema}
    assert out["response_schema"] == schema
    assert "structured_outputs" not in to_vllm_row(ROW, None, GenerationParams())["sampling_params"]
