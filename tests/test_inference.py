"""Batch inference for students: engine choice, sizing, the vLLM row mapping (pure, no vLLM), the
HF actors on a local Ray, and (GPU only) the vLLM path through ray.data.llm."""

from __future__ import annotations

import importlib.util

import pyarrow as pa
import pytest

from lamini.config import GenerationParams, RayInitConfig
from lamini.engines.vllm_engine import (
    STASH,
    from_vllm_row,
    sampling_params_of,
    to_vllm_text_row,
)
from lamini.evaluate.config import StudentSpec
from lamini.evaluate.inference import (
    StudentRun,
    choose_engine,
    generate_for_students,
    gpus_for,
    plan_serving,
)
from lamini.models.templates import wrap
from lamini.runs.fingerprint import stale_parts, stamp
from lamini.runs.rundir import RunDir

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_choose_engine_prefers_vllm_only_where_it_serves():
    assert choose_engine("auto", "decoder", "llama", False, 8, True) == ("vllm", "decoder-only model vLLM serves, on a GPU cluster")
    for args, why in [
        (("auto", "encoder-decoder", "t5", False, 8, True), "encoder-decoder"),
        (("auto", "decoder", "gpt_neo", False, 8, True), "gpt_neo"),
        (("auto", "decoder", "llama", True, 8, True), "GGUF"),
        (("auto", "decoder", "llama", False, 0, True), "no GPU"),
        (("auto", "decoder", "llama", False, 8, False), "not installed"),
    ]:
        engine, reason = choose_engine(*args)
        assert engine == "hf" and why in reason
    # Asked for explicitly: an impossible vLLM is an error; a driver without vllm is not (its GPU workers may have it).
    with pytest.raises(ValueError, match="encoder-decoder"):
        choose_engine("vllm", "encoder-decoder", "t5", False, 8, True)
    assert choose_engine("vllm", "decoder", "gpt2", False, 8, False)[0] == "vllm"
    assert choose_engine("hf", "decoder", "llama", False, 8, True)[0] == "hf"


def test_plan_serving_reads_family_params_and_sizes_gpus(tiny_lms):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    causal, s2s = tiny_lms
    dec = plan_serving(StudentSpec(name="d", base=str(causal)), cluster_gpus=0, have_vllm=False)
    enc = plan_serving(StudentSpec(name="e", base=str(s2s)), cluster_gpus=0, have_vllm=False)
    assert (dec.family, dec.wrapper, dec.engine, dec.device, dec.num_gpus) == ("decoder", "alpaca", "hf", "cpu", 0)
    assert (enc.family, enc.wrapper) == ("encoder-decoder", "none")
    # Counted on the meta device, equal to the loaded model's count.
    assert dec.params == AutoModelForCausalLM.from_pretrained(causal).num_parameters()
    assert enc.params == AutoModelForSeq2SeqLM.from_pretrained(s2s).num_parameters()
    # On a GPU cluster a small student gets a quarter GPU (four share one) and bf16.
    g = plan_serving(StudentSpec(name="g", base=str(causal)), cluster_gpus=8, have_vllm=True)
    assert (g.engine, g.num_gpus, g.device, g.dtype) == ("vllm", 0.25, "cuda", "bfloat16")
    assert [gpus_for(p) for p in (124e6, 774e6, 1.5e9, 7e9)] == [0.25, 0.5, 0.5, 1.0]
    assert wrap("Name a fruit.", "alpaca").endswith("### Instruction:\nName a fruit.\n\n### Response:")  # as trained
    assert wrap("Name a fruit.", "none") == "Name a fruit."


def test_vllm_text_row_mapping_keeps_columns_and_sampling():
    gen = GenerationParams(max_tokens=32, temperature=0.0, top_p=1.0, seed=3)
    row = {"id": "q1", "instruction": "Name a fruit.", "prompt": "### Instruction:\nName a fruit.\n\n### Response:\n", "row_index": 4}
    out = to_vllm_text_row(row, "prompt", gen)
    assert out["prompt"] == row["prompt"] and "messages" not in out  # no chat template for students
    assert out[STASH + "prompt"] == row["prompt"] and out["id"] == "q1" and out["row_index"] == 4
    assert out["sampling_params"] == {"max_tokens": 32, "temperature": 0.0, "top_p": 1.0, "seed": 3}
    assert to_vllm_text_row(row, "prompt", gen, ignore_eos=True)["sampling_params"]["ignore_eos"] is True
    # The same sampling parameters the HF engine uses (one GenerationParams for both).
    from lamini.engines.base import build_request

    assert out["sampling_params"] == sampling_params_of(build_request("x", None, gen))
    engine_out = {k: v for k, v in out.items() if k != "sampling_params"}
    engine_out.update(generated_text=" An apple.", num_generated_tokens=4, num_input_tokens=12, time_taken_llm=0.1,
                      __inference_error__="")  # fmt: skip
    back = from_vllm_row(engine_out)
    assert back["prompt"] == row["prompt"] and back["id"] == "q1" and back["row_index"] == 4
    assert (back["response"], back["completion_tokens"], back["finish_reason"], back["error"]) == (" An apple.", 4, "stop", None)


def test_vllm_processor_config_shares_a_gpu_between_small_students(tiny_lms):
    from lamini.engines.vllm_engine import student_processor_config

    causal, _ = tiny_lms
    serving = plan_serving(StudentSpec(name="g", base=str(causal), batch_size=24, max_actors=3), cluster_gpus=8, have_vllm=True)
    pc = student_processor_config(serving)
    assert pc.model_source == str(causal) and pc.batch_size == 24 and pc.concurrency == (1, 3)
    assert pc.engine_kwargs["gpu_memory_utilization"] == 0.225 and pc.engine_kwargs["dtype"] == "bfloat16"
    assert pc.placement_group_config["bundles"] == [{"CPU": 1, "GPU": 0.25}]
    assert pc.chat_template_stage is False and pc.should_continue_on_error is True


def test_batched_hf_generation_equals_one_at_a_time(tiny_lms):
    """Left padding and length-sorted chunks must not change what a greedy student writes."""
    from lamini.engines.base import text_request
    from lamini.engines.hf_local import HFEngine

    causal, s2s = tiny_lms
    prompts = [wrap(p, "alpaca") for p in ("Hi.", "Name three red fruits, please.", "Why is the sky blue on a clear day?")]
    gen = GenerationParams(max_tokens=12, temperature=0.0)
    for base, family_prompts in ((causal, prompts), (s2s, ["Hi.", "Name three red fruits.", "Why is the sky blue?"])):
        one = HFEngine.for_student(plan_serving(StudentSpec(name="a", base=str(base), batch_size=1), 0, False))
        many = HFEngine.for_student(plan_serving(StudentSpec(name="b", base=str(base), batch_size=8), 0, False))
        requests = [text_request(p, gen) for p in family_prompts]
        a = [r.text for r in one.generate(requests)]
        b = [r.text for r in many.generate(requests)]
        assert a == b
        assert all(r.completion_tokens > 0 for r in many.generate(requests))


def test_fingerprint_stamp_survives_parquet_and_names_what_changed(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    parts = {"model": {"base": "a"}, "generation": {"max_tokens": 6}, "rows": "abc"}
    table = pa.table({"row_index": [0, 1], "response": ["x", None], "error": [None, None]})
    run.write_table("t.parquet", stamp(table, parts))
    back = run.read_table("t.parquet")
    assert stale_parts(back, parts) == []  # Parquet keeps the schema metadata
    assert stale_parts(back, {**parts, "generation": {"max_tokens": 7}}) == ["generation"]
    assert stale_parts(back, {**parts, "model": {"base": "b"}, "rows": "abd"}) == ["model", "rows"]
    assert stale_parts(table, parts) == ["it has no fingerprint"]  # e.g. written by an older lamini
    # A row with neither a response nor an error is counted as missing, not as an empty answer.
    assert StudentRun(None, back, 0.0).missing == 1


def test_generate_for_students_runs_students_side_by_side_and_resumes(ray_local, tiny_lms, tmp_path, caplog):
    causal, s2s = tiny_lms
    students = [
        StudentSpec(name="dec", base=str(causal), batch_size=4, num_cpus_per_actor=0.5, max_actors=2),
        StudentSpec(name="enc", base=str(s2s), batch_size=4, num_cpus_per_actor=0.5),
    ]
    rows = pa.table({"id": [f"q{i}" for i in range(21)], "instruction": [f"Add {i} and {i}." for i in range(21)]})
    run = RunDir(str(tmp_path / "run"))
    gen = GenerationParams(max_tokens=6, temperature=0.0)
    out = generate_for_students(students, rows, gen, run, "answers", RayInitConfig())
    for name, r in out.items():
        t = r.table
        assert t.column("id").to_pylist() == rows.column("id").to_pylist()  # every row once, in input order
        assert t.column("error").null_count == 21 and set(t.column("engine").to_pylist()) == {f"hf:{name}"}
        assert set(t.column("student").to_pylist()) == {name}
    assert out["dec"].table.column("prompt")[0].as_py().startswith("Below is an instruction")
    assert out["enc"].table.column("prompt")[0].as_py() == "Add 0 and 0."
    again = generate_for_students(students, rows, gen, run, "answers", RayInitConfig())
    assert all(r.reused for r in again.values())
    assert again["dec"].table.equals(out["dec"].table)
    assert max(out["dec"].table.column("completion_tokens").to_pylist()) > 2

    # Other sampling settings for both, and for `dec` another model under the same name: both write
    # again (the warnings say why), and what they write follows the new config.
    caplog.set_level("WARNING", logger="lamini.evaluate.inference")
    short = gen.model_copy(update={"max_tokens": 2})
    students2 = [students[0].model_copy(update={"base": str(s2s)}), students[1]]
    out2 = generate_for_students(students2, rows, short, run, "answers", RayInitConfig())
    assert not any(r.reused for r in out2.values())
    assert all(max(r.table.column("completion_tokens").to_pylist()) <= 2 for r in out2.values())
    assert out2["dec"].table.column("prompt")[0].as_py() == "Add 0 and 0."  # an encoder-decoder now: no wrapper
    why = sorted(m.split("(")[1].split(" differ")[0] for m in caplog.messages if "generating again" in m)
    assert why == ["generation", "generation, model, wrapper"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_VLLM, reason="needs vllm (extra [gpu]) and a GPU")
def test_vllm_students_on_gpu(tmp_path, tiny_lms):
    import ray

    causal, _ = tiny_lms
    ray.init(ignore_reinit_error=True)
    students = [StudentSpec(name="v", base=str(causal), engine="vllm", batch_size=8, max_model_len=512)]
    rows = pa.table({"id": ["a", "b", "c"], "instruction": ["Hi.", "Name a fruit.", "Count to three."]})
    out = generate_for_students(students, rows, GenerationParams(max_tokens=8, temperature=0.0), RunDir(str(tmp_path)), "a", RayInitConfig())
    t = out["v"].table
    assert out["v"].serving.engine == "vllm" and out["v"].serving.num_gpus == 0.25
    assert t.column("error").null_count == 3 and all(n > 0 for n in t.column("completion_tokens").to_pylist())
