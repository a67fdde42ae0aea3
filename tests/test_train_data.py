"""Training data and DeepSpeed config: pure functions, no Ray, no training."""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import shared_data

from lamini.models.templates import ALPACA_PROMPT_NO_INPUT, alpaca_prompt
from lamini.train.config import DEFAULT_LR, TrainConfig
from lamini.train.data import (
    IGNORE_INDEX,
    EncodeStats,
    ExampleEncoder,
    collate,
    encode_decoder,
    encode_seq2seq,
    label_tokens,
    micro_batches,
    model_inputs,
    pack,
)


@pytest.fixture(scope="module")
def causal_tok(tiny_lms):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lms.causal)


@pytest.fixture(scope="module")
def seq2seq_tok(tiny_lms):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lms.seq2seq)


def alpaca_rows(n: int = 40) -> list[tuple[str, str]]:
    rows = json.loads(shared_data("alpaca_5000.json").read_text(encoding="utf-8"))[:n]
    return [(r["instruction"] + (f":{r['input']}" if r["input"] else ""), r["output"]) for r in rows]


def test_alpaca_wrapper_is_exact():
    assert ALPACA_PROMPT_NO_INPUT == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:"
    )
    assert alpaca_prompt("Say hi.").endswith("### Instruction:\nSay hi.\n\n### Response:")


def test_decoder_labels_cover_exactly_the_response_and_eos(causal_tok):
    stats = EncodeStats()
    for instruction, response in alpaca_rows():
        ex = encode_decoder(instruction, response, causal_tok, max_length=4096, stats=stats)
        n_prompt = next(i for i, lab in enumerate(ex.labels) if lab != IGNORE_INDEX)
        # everything before the boundary is masked, everything after is learned
        assert all(lab == IGNORE_INDEX for lab in ex.labels[:n_prompt])
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
        assert ex.input_ids[-1] == causal_tok.eos_token_id
        # tokenized together: the ids are those of the whole text, and the boundary falls where the prompt ends
        together = causal_tok(alpaca_prompt(instruction) + response)["input_ids"]
        assert ex.input_ids[:-1] == together
        assert causal_tok.decode(ex.input_ids[:n_prompt]) == alpaca_prompt(instruction)
        assert causal_tok.decode(ex.labels[n_prompt:-1]) == response
    assert stats.rows == 40 and stats.boundary_merged == 0


@pytest.fixture(scope="module")
def merging_tok():
    """A byte-level BPE like the tiny students', trained where '::' is common, so it has the merge.

    The tiny students' tokenizer has no token that starts with ':' (its corpus rarely repeats
    punctuation), so nothing can merge across the wrapper's final ':' with it; this one can. It
    also puts a BOS in front of every sequence, as Llama's tokenizer does."""
    from tokenizers import processors

    from lamini.testing.tiny_models import BOS, train_tokenizer

    texts = [f"{i}" for i, _ in alpaca_rows(40)] + ["note:: see:: here::", "a::b c::d"] * 50
    tok = train_tokenizer(texts, vocab_size=400)
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.convert_tokens_to_ids(BOS))]
    )
    return tok


def test_a_token_spanning_the_boundary_stays_in_the_prompt(merging_tok):
    # byte-level BPE may merge the wrapper's last ':' with what follows; that token must not be learned
    stats = EncodeStats()
    ex = encode_decoder("Smile.", ":)", merging_tok, max_length=512, stats=stats)
    assert stats.boundary_merged == 1  # "...Response::)" -> "::" spans the boundary, ")" is the response
    learned = [t for t in ex.labels if t != IGNORE_INDEX]
    assert learned[-1] == merging_tok.eos_token_id
    assert merging_tok.convert_ids_to_tokens(learned[:-1]) == [")"]  # only response characters are learned
    assert ex.input_ids[0] == merging_tok.bos_token_id and ex.labels[0] == IGNORE_INDEX


def test_left_truncation_keeps_the_bos(merging_tok, causal_tok):
    instruction, response = "Explain photosynthesis in detail. " * 5, "Plants turn light into sugar."
    full = encode_decoder(instruction, response, merging_tok, max_length=10_000)
    assert full.input_ids[0] == merging_tok.bos_token_id
    m = len(full.input_ids) - 30
    left = encode_decoder(instruction, response, merging_tok, max_length=m, truncation_side="left")
    # the prompt's start is cut after the BOS, which stays first; the rest is the full sequence's end
    assert left.input_ids == [merging_tok.bos_token_id] + full.input_ids[-(m - 1):]
    assert left.labels == [IGNORE_INDEX] + full.labels[-(m - 1):]
    # a tokenizer that adds no BOS (the tiny students', GPT-2's) is cut as before
    assert causal_tok("hi")["input_ids"][0] != causal_tok.bos_token_id
    full = encode_decoder(instruction, response, causal_tok, max_length=10_000)
    m = len(full.input_ids) - 30
    assert encode_decoder(instruction, response, causal_tok, max_length=m, truncation_side="left").input_ids == (
        full.input_ids[-m:]
    )


def test_truncation_sides_and_drop(causal_tok):
    instruction, response = "Explain photosynthesis in detail.", "Plants turn light into sugar. " * 20
    full = encode_decoder(instruction, response, causal_tok, max_length=10_000)
    n_prompt = full.labels.index(next(t for t in full.labels if t != IGNORE_INDEX))
    m = n_prompt + 20  # room for the prompt and part of the response
    assert len(full.input_ids) > m + 20
    right = encode_decoder(instruction, response, causal_tok, max_length=m, truncation_side="right")
    left = encode_decoder(instruction, response, causal_tok, max_length=m, truncation_side="left")
    assert len(right.input_ids) == len(left.input_ids) == m
    assert right.input_ids == full.input_ids[:m] and right.labels[n_prompt:] == full.labels[n_prompt:m]
    assert left.input_ids == full.input_ids[-m:] and left.labels[-1] == causal_tok.eos_token_id
    assert all(lab != IGNORE_INDEX for lab in left.labels)  # the prompt went first
    stats = EncodeStats()
    # right-truncating inside the prompt leaves nothing to learn: the row is dropped and counted
    assert encode_decoder(instruction * 10, response, causal_tok, max_length=16, stats=stats) is None
    assert stats.dropped_no_labels == 1 and stats.truncated == 1


def test_seq2seq_source_is_the_raw_instruction(seq2seq_tok):
    instruction, response = alpaca_rows(1)[0]
    ex = encode_seq2seq(instruction, response, seq2seq_tok, 512, 512)
    assert "### Instruction" not in seq2seq_tok.decode(ex.input_ids)
    assert seq2seq_tok.decode(ex.input_ids, skip_special_tokens=True) == instruction
    assert seq2seq_tok.decode(ex.labels, skip_special_tokens=True) == response
    eos = seq2seq_tok.eos_token_id
    assert ex.input_ids[-1] == ex.labels[-1] == eos
    response = "Plants turn light into sugar. " * 5
    ex = encode_seq2seq(instruction, response, seq2seq_tok, 512, 512)
    assert len(ex.input_ids) > 8 and len(ex.labels) > 6
    short = encode_seq2seq(instruction, response, seq2seq_tok, 8, 6, truncation_side="left")
    assert short.input_ids == ex.input_ids[-8:]
    # a cut target still ends with EOS, as T5 is trained (the tokenizer's own truncation does the same)
    assert short.labels == ex.labels[:5] + [eos]
    assert short.labels == seq2seq_tok(text_target=response, truncation=True, max_length=6)["input_ids"]
    right = encode_seq2seq(instruction, response, seq2seq_tok, 8, 6, truncation_side="right")
    assert right.input_ids == ex.input_ids[:7] + [eos]  # the source too


def test_packing_keeps_examples_whole_and_restarts_positions(causal_tok):
    examples = [e for i, r in alpaca_rows(30) if (e := encode_decoder(i, r, causal_tok, 256))]
    packed = list(pack(examples, 512))
    assert len(packed) < len(examples) / 2 and all(len(p.input_ids) <= 512 for p in packed)
    # every example whole, in order, in one sequence; its first label dropped (no token predicts it unpacked)
    unpacked = [(ids, labels) for p in packed for ids, labels in _segments(p)]
    assert [ids for ids, _ in unpacked] == [e.input_ids for e in examples]
    assert [labels for _, labels in unpacked] == [[IGNORE_INDEX, *e.labels[1:]] for e in examples]
    # a sequence closes only when the next example does not fit
    starts = [0, *itertools.accumulate(len(p.segments) for p in packed)]
    for p, nxt in zip(packed, starts[1:-1]):
        assert len(p.input_ids) + len(examples[nxt].input_ids) > 512
    batch = collate(packed[:3], pad_id=0)
    for row, p in enumerate(packed[:3]):
        want = [i for n in p.segments for i in range(n)]
        pad = batch["input_ids"].shape[1] - len(want)
        assert batch["position_ids"][row].tolist() == want + list(range(pad))  # padding: a segment of its own
    assert "attention_mask" not in model_inputs(batch) and "attention_mask" in batch  # kept for counting
    assert "position_ids" not in collate(examples[:2], 0) and model_inputs(collate(examples[:2], 0))["attention_mask"] is not None
    cfg = TrainConfig.model_validate(
        {"model": {"base": "x"}, "data": {"corpora": [{"format": "alpaca", "path": "x"}], "packing": True,
         "max_length": 256}, "global_batch_size": 4, "micro_batch_size": 4}
    )
    enc = ExampleEncoder(causal_tok, "decoder", cfg.data)  # encodes at max_length 256, packs into 256
    by_encoder = list(enc.examples(alpaca_rows(30)))
    assert [x for p in by_encoder for x in p.input_ids] == [x for e in examples for x in e.input_ids]
    assert enc.measure(alpaca_rows(30)) == (len(examples), len(by_encoder))


def _segments(p):
    at = 0
    for n in p.segments:
        yield p.input_ids[at : at + n], p.labels[at : at + n]
        at += n


def _tiny_gpt2(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=2, n_head=4,
                                      eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id))  # fmt: skip


@pytest.mark.parametrize("arch,attn", [("llama", "sdpa"), ("llama", "eager"), ("gpt2", "sdpa")])
def test_packed_loss_equals_unpacked_loss(causal_tok, tiny_lms, arch, attn):
    """Packing changes how examples are laid out, not what the model learns from them: the
    token-weighted loss (and the logits of every example) equal the unpacked ones. Packing the
    old way (one causal mask over the whole sequence) does not."""
    import torch
    from transformers import AutoModelForCausalLM

    if arch == "llama":  # the tiny test student (Llama architecture, rotary positions)
        model = AutoModelForCausalLM.from_pretrained(tiny_lms.causal, attn_implementation=attn)
    else:  # learned absolute positions, as the GPT-2 / GPT-Neo / Cerebras students
        model = _tiny_gpt2(causal_tok).to(torch.float32)
    model.eval()
    examples = [e for i, r in alpaca_rows(16) if (e := encode_decoder(i, r, causal_tok, 256))]
    packed = list(pack(examples, 512))
    assert len(packed) < len(examples) / 2 and any(len(p.segments) >= 3 for p in packed)

    def token_weighted(batches) -> float:
        total = n = 0
        with torch.no_grad():
            for b in batches:
                k = label_tokens(b, encoder_decoder=False)
                total += float(model(**model_inputs(b)).loss) * k
                n += k
        return total / n

    unpacked_loss = token_weighted([collate(examples[i : i + 4], 0) for i in range(0, len(examples), 4)])
    packed_loss = token_weighted([collate(packed[i : i + 2], 0) for i in range(0, len(packed), 2)])
    assert packed_loss == pytest.approx(unpacked_loss, rel=1e-5, abs=1e-5)
    # the first packed sequence's logits, example by example, are the example's own
    b = collate(packed[:1], 0)
    with torch.no_grad():
        logits = model(**model_inputs(b)).logits[0]
        at = 0
        for n in packed[0].segments:
            alone = model(input_ids=b["input_ids"][:, at : at + n]).logits[0]
            assert torch.allclose(logits[at : at + n], alone, atol=1e-4), (at, n)
            at += n
    # one causal mask over the whole sequence (attention crossing examples, positions running on):
    # the later examples' logits are no longer their own, and the loss moves far beyond the tolerance
    crossing = [{k: v for k, v in collate(packed[i : i + 2], 0).items() if k != "position_ids"}
                for i in range(0, len(packed), 2)]  # fmt: skip
    assert abs(token_weighted(crossing) - unpacked_loss) > 1e-4  # an untrained model: small, yet 10x the tolerance
    with torch.no_grad():
        first = packed[0].segments[0]
        mixed = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[0, first:]
        assert not torch.allclose(mixed[: packed[0].segments[1]], model(input_ids=b["input_ids"][:, first : first + packed[0].segments[1]]).logits[0], atol=1e-3)


def test_collate_masks_padding(causal_tok):
    examples = [encode_decoder(i, r, causal_tok, 256) for i, r in alpaca_rows(5)]
    batch = collate(examples, pad_id=0)
    lengths = [len(e.input_ids) for e in examples]
    assert batch["input_ids"].shape == (5, max(lengths))
    for row, n in enumerate(lengths):
        assert int(batch["attention_mask"][row].sum()) == n
        assert (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert [b["input_ids"].shape[0] for b in micro_batches(examples, 2, 0)] == [2, 2, 1]


def _cfg(**kw):
    base = {"model": {"base": "x"}, "data": {"corpora": [{"format": "lamini", "path": "x.parquet"}]}}
    base.update(kw)
    return TrainConfig.model_validate(base)


def test_batch_arithmetic_and_paper_learning_rates():
    cfg = _cfg(global_batch_size=1024, micro_batch_size=8, scaling={"num_workers": 16})
    assert cfg.grad_accum_steps == 8
    with pytest.raises(ValueError, match="not a multiple"):
        _cfg(global_batch_size=1000, micro_batch_size=8, scaling={"num_workers": 16})
    assert DEFAULT_LR == {"encoder-decoder": 5e-4, "decoder": 2e-5}
    with pytest.raises(ValueError, match="offload_params needs zero_stage 3"):
        _cfg(deepspeed={"zero_stage": 2, "offload_params": True})


def test_deepspeed_config_from_yaml_settings():
    from lamini.train.strategy import deepspeed_config

    cfg = _cfg(
        global_batch_size=64, micro_batch_size=4, scaling={"num_workers": 2}, precision="auto",
        deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_params": True,
                   "config": {"zero_optimization": {"reduce_bucket_size": 123}}},
    )
    gpu = deepspeed_config(cfg, lr=1e-4, total_steps=100, use_gpu=True)
    assert gpu["gradient_accumulation_steps"] == 8 and gpu["train_batch_size"] == 64
    assert gpu["bf16"] == {"enabled": True} and "fp16" not in gpu
    z = gpu["zero_optimization"]
    assert z["stage"] == 3 and z["stage3_gather_16bit_weights_on_model_save"]
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    assert z["reduce_bucket_size"] == 123 and z["contiguous_gradients"]  # raw keys merged, others kept
    assert gpu["optimizer"]["params"]["torch_adam"] is False
    sched = gpu["scheduler"]["params"]
    assert sched["total_num_steps"] == 100 and sched["warmup_num_steps"] == 3
    cpu = deepspeed_config(cfg, lr=1e-4, total_steps=100, use_gpu=False)
    assert "bf16" not in cpu and cpu["optimizer"]["params"]["torch_adam"] is True
    assert cpu["zero_force_ds_cpu_optimizer"] is False
