"""Training accounting: the step plan of an epochs run, FLOPs/MFU per model family, and which tune
checkpoint is recorded as best. Pure functions on tiny models and tokenizers; one test uses Ray Data."""

from __future__ import annotations

import json
import math

import pytest
from conftest import shared_data

from lamini.train.config import TrainConfig
from lamini.train.data import (
    ExampleEncoder,
    batch_token_split,
    batch_tokens,
    collate,
    encode_seq2seq,
)
from lamini.train.loop import epoch_sequences, plan_steps


@pytest.fixture(scope="module")
def causal_tok(tiny_lms):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lms.causal)


def alpaca_rows(n: int) -> list[tuple[str, str]]:
    rows = json.loads(shared_data("alpaca_5000.json").read_text(encoding="utf-8"))[:n]
    return [(r["instruction"] + (f":{r['input']}" if r["input"] else ""), r["output"]) for r in rows]


def _cfg(base="x", data=None, **kw) -> TrainConfig:
    cfg = {
        "model": {"base": str(base)},
        "data": {"corpora": [{"format": "alpaca", "path": "x"}], "max_length": 512, **(data or {})},
        "global_batch_size": 4,
        "micro_batch_size": 4,
        "epochs": 2,
        **kw,
    }
    return TrainConfig.model_validate(cfg)


# ------------------------------------------------------------------ B: the step plan of an epochs run


def test_epochs_plan_counts_packed_sequences(causal_tok):
    rows = alpaca_rows(80)
    cfg = _cfg(data={"packing": True})
    packed = list(ExampleEncoder(causal_tok, "decoder", cfg.data).examples(rows))  # what the worker trains on
    kept, n_packed = ExampleEncoder(causal_tok, "decoder", cfg.data).measure(rows)
    assert kept == len(rows) and len(packed) <= len(rows) / 2  # packing: several rows per sequence
    n = epoch_sequences(kept, n_packed, cfg, "decoder")
    assert n == len(packed)
    steps, epochs = plan_steps(n, cfg)
    # the count is of this order; a shuffled epoch packs a little differently: one pass in reserve
    assert (steps, epochs) == (len(packed) // 4 * 2, 3)
    # counting rows, as before, planned over twice the steps the two epochs have: the schedule never decayed
    assert plan_steps(len(rows), cfg)[0] >= 2 * steps
    # fractional epochs: the steps of 1.5 epochs, over 2 passes of the data (and the reserve)
    assert plan_steps(n, _cfg(data={"packing": True}, epochs=1.5)) == (int(len(packed) // 4 * 1.5), 3)
    assert plan_steps(kept, _cfg(epochs=1.5)) == (int(kept // 4 * 1.5), 2)  # an exact count: no reserve
    # a shuffled max_steps run shuffles as many epochs as its steps need
    assert plan_steps(kept, _cfg(max_steps=45)) == (45, math.ceil(45 / (kept // 4)))
    # an encoder-decoder student never packs: its sequences are its examples
    assert epoch_sequences(kept, n_packed, cfg, "encoder-decoder") == kept


def test_epochs_plan_with_two_workers_packing_their_own_shards(causal_tok):
    rows = alpaca_rows(200)
    cfg = _cfg(data={"packing": True}, global_batch_size=8, scaling={"num_workers": 2})
    enc = ExampleEncoder(causal_tok, "decoder", cfg.data)
    per_worker = [len(list(enc.examples(rows[i::2]))) for i in range(2)]  # each packs its half
    n = epoch_sequences(*enc.measure(rows), cfg, "decoder")
    assert abs(n - sum(per_worker)) <= 2  # one partial sequence per worker at most
    # a step is 4 sequences on each worker; the epoch ends when the first worker runs out
    assert abs(plan_steps(n, cfg)[0] - 2 * (min(per_worker) // 4)) <= 2


def test_epochs_plan_leaves_out_rows_truncation_drops(causal_tok):
    rows = alpaca_rows(40)
    long = [("Explain this in detail, please. " * 20, "No.")] * 12  # the prompt alone fills max_length
    cfg = _cfg(data={"max_length": 160})
    enc = ExampleEncoder(causal_tok, "decoder", cfg.data)
    seen = len(list(enc.examples(rows + long)))
    kept, _ = ExampleEncoder(causal_tok, "decoder", cfg.data).measure(rows + long)
    assert kept == seen <= len(rows) and enc.stats.dropped_no_labels >= 12
    assert plan_steps(epoch_sequences(kept, 0, cfg, "decoder"), cfg)[0] == seen // 4 * 2
    with pytest.raises(ValueError, match="fewer than one global batch"):
        plan_steps(3, cfg)
    # fewer sequences than a global batch: each epoch still steps once on its smaller micro batch,
    # so a shuffled run needs one dataset per step (a herd's ablation sample of 16 rows hit this)
    assert plan_steps(3, _cfg(max_steps=7)) == (7, 7)
    assert plan_steps(3, _cfg(max_steps=7, micro_batch_size=2)) == (7, 7)  # micro batches of 2 and 1: one step
    assert plan_steps(1, _cfg(max_steps=7, micro_batch_size=2)) == (7, 1)  # one micro batch of 2 needed: no step
    assert plan_steps(None, _cfg(max_steps=7)) == (7, math.inf)


def test_count_sequences_over_a_ray_dataset(ray_local, tiny_lms, causal_tok):
    """The driver's count (Ray Data tasks, tokenizer loaded in each) is what a worker packs."""
    import ray.data

    from lamini.train.trainer import count_sequences

    rows = alpaca_rows(80)
    cfg = _cfg(base=tiny_lms.causal, data={"packing": True})
    packed = list(ExampleEncoder(causal_tok, "decoder", cfg.data).examples(rows))
    ds = ray.data.from_items([{"instruction": i, "response": r} for i, r in rows])
    assert count_sequences(ds, cfg, "decoder") == (len(rows), len(packed))


# ------------------------------------------------------------------ C: FLOPs of encoder-decoder students


def _tiny_t5(tie: bool):
    """T5 as lamini.testing.tiny_models builds it, with 3 decoder layers; tie=False: flan-t5's own LM head."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(
        vocab_size=1024, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=3, num_heads=4,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0,
    )
    model = T5ForConditionalGeneration(config)
    if not tie:  # (this transformers ties T5's LM head to the embedding whatever tie_word_embeddings says)
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    assert (model.lm_head.weight is model.shared.weight) == tie
    return model


@pytest.mark.parametrize("tie", [False, True])
def test_t5_parameters_split_between_encoder_and_decoder(tie):
    from lamini.models.loading import count_params
    from lamini.train.flops import param_split

    model = _tiny_t5(tie)
    n_enc, n_dec = param_split(model)
    total = count_params(model)
    assert n_enc + n_dec == total  # every parameter counted once
    encoder_own = sum(p.numel() for n, p in model.encoder.named_parameters() if "embed_tokens" not in n)
    assert n_enc == encoder_own  # encoder blocks and final norm; the shared embedding goes with the decoder
    cross = sum(p.numel() for n, p in model.decoder.named_parameters() if "EncDecAttention" in n)
    assert cross > 0
    decoder_stack = sum(p.numel() for n, p in model.decoder.named_parameters() if "embed_tokens" not in n)
    lm_head = 0 if tie else model.lm_head.weight.numel()
    assert n_dec == decoder_stack + model.shared.weight.numel() + lm_head  # cross-attention included
    assert n_dec > n_enc  # 3 decoder layers (with cross-attention) against 2 encoder layers


def test_encoder_decoder_flops_charge_each_side_its_own_parameters(tiny_lms):
    from transformers import AutoTokenizer

    from lamini.train.flops import mfu, param_split, train_flops

    tok = AutoTokenizer.from_pretrained(tiny_lms.seq2seq)
    examples = [encode_seq2seq(i, r, tok, 64, 64) for i, r in alpaca_rows(6)]
    batch = collate(examples, pad_id=tok.pad_token_id)
    # longest source and target both cut at 64: the labels have the input's shape, yet it is seq2seq
    assert batch["labels"].shape == batch["input_ids"].shape
    src, tgt = batch_token_split(batch, encoder_decoder=True)
    assert src == sum(len(e.input_ids) for e in examples) and tgt == sum(len(e.labels) for e in examples)
    assert batch_tokens(batch, encoder_decoder=True) == src + tgt
    model = _tiny_t5(tie=False)
    n_enc, n_dec = param_split(model)
    flops = train_flops(n_enc, n_dec, src, tgt)
    assert flops == 6 * (n_enc * src + n_dec * tgt)
    old = 6 * (n_enc + n_dec) * (src + tgt)  # every token through every parameter
    assert 1.5 < old / flops < 3  # about twice too high
    # per second, on a 1 TFLOP/s device: the MFU the worker reports
    assert mfu(n_enc + n_dec, src + tgt, 1e12, 1) == pytest.approx(old / 1e12)


def test_decoder_only_flops_are_unchanged(tiny_lms, causal_tok):
    from transformers import AutoModelForCausalLM

    from lamini.models.loading import count_params
    from lamini.train.flops import flops_utilisation, mfu, param_split, train_flops

    model = AutoModelForCausalLM.from_pretrained(tiny_lms.causal)
    n = count_params(model)
    assert param_split(model) == (0, n)
    cfg = _cfg()
    batch = collate(list(ExampleEncoder(causal_tok, "decoder", cfg.data).examples(alpaca_rows(4))), pad_id=0)
    enc_tokens, dec_tokens = batch_token_split(batch, encoder_decoder=False)
    assert enc_tokens == 0 and dec_tokens == batch_tokens(batch) == int(batch["attention_mask"].sum())
    flops = train_flops(0, n, enc_tokens, dec_tokens)
    assert flops == 6 * n * dec_tokens
    assert flops_utilisation(flops / 2.0, 1e12, 2) == pytest.approx(mfu(n, dec_tokens / 2.0, 1e12, 2))
    assert flops_utilisation(1.0, 0.0, 1) is None  # unknown peak


# ------------------------------------------------------------------ A: the best tune checkpoint exists


def test_best_checkpoint_is_one_still_in_storage(tmp_path):
    from lamini.train.tune import best_checkpoint

    def ckpt(step: int, keep: bool = True) -> str:
        p = tmp_path / f"checkpoint_{step}"
        if keep:
            p.mkdir()
        return str(p)

    rows = [
        {"step": 1, "loss": 0.1},  # no checkpoint at this report
        {"step": 2, "loss": 0.5, "checkpoint_path": ckpt(2, keep=False)},  # the lowest, deleted by Ray
        {"step": 3, "loss": 0.2, "checkpoint_path": float("nan")},  # the dataframe's NaN: no checkpoint
        {"step": 4, "loss": 0.7, "checkpoint_path": ckpt(4)},
        {"step": 6, "loss": 0.6, "checkpoint_path": ckpt(6)},
        {"step": 8, "loss": float("nan"), "checkpoint_path": ckpt(8)},  # a diverged step is never best
    ]

    def exists(path: str) -> bool:
        import os

        return os.path.isdir(path)

    best = best_checkpoint(rows, "loss", "min", exists)
    assert best == {"path": str(tmp_path / "checkpoint_6"), "step": 6, "metric": "loss", "value": 0.6}
    assert best_checkpoint(rows, "loss", "max", exists)["step"] == 4
    rows.append({"step": 10, "loss": 0.6, "checkpoint_path": ckpt(10)})
    assert best_checkpoint(rows, "loss", "min", exists)["step"] == 10  # a tie goes to the later one, as in Ray
    assert best_checkpoint(rows[:3], "loss", "min", exists) is None


def test_tune_trials_keep_their_best_checkpoints():
    from lamini.train.trainer import checkpoint_config

    cfg = _cfg(keep_checkpoints=3)
    train = checkpoint_config(cfg)  # `lamini train`: the newest (a re-run resumes from the newest anyway)
    assert (train.num_to_keep, train.checkpoint_score_attribute, train.checkpoint_score_order) == (3, "step", "max")
    trial = checkpoint_config(cfg, ("loss", "min"))  # a tune trial: the lowest-loss ones, and Ray keeps the newest
    assert (trial.num_to_keep, trial.checkpoint_score_attribute, trial.checkpoint_score_order) == (3, "loss", "min")
