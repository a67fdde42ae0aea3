"""Validation: a seeded held-out share (or a file), eval_loss at reports and at the end, the best
checkpoint chosen by it, and Tune's metric switching to it."""

from __future__ import annotations

import json

import pytest
from conftest import shared_data

from lamini.train.config import TrainConfig, TuneConfig
from lamini.train.trainer import read_history

ALPACA = {"format": "alpaca", "path": "x"}


def _cfg(**kw) -> dict:
    base = {"model": {"base": "x"}, "data": {"corpora": [ALPACA]}, "global_batch_size": 8, "micro_batch_size": 4}
    return {**base, **kw}


def test_validation_settings_are_checked():
    assert TrainConfig.model_validate(_cfg()).validation is None
    v = TrainConfig.model_validate(_cfg(validation={"fraction": 0.05})).validation
    assert (v.max_rows, v.seed, v.every_n_steps) == (2000, None, None)
    with pytest.raises(ValueError, match="either fraction"):
        TrainConfig.model_validate(_cfg(validation={}))
    with pytest.raises(ValueError, match="either fraction"):
        TrainConfig.model_validate(_cfg(validation={"fraction": 0.1, "corpora": [ALPACA]}))
    with pytest.raises(ValueError, match="not a multiple of log_every_n_steps"):
        TrainConfig.model_validate(_cfg(validation={"fraction": 0.1, "every_n_steps": 15}, log_every_n_steps=10))
    # Tune compares eval_loss when there is a validation set, training loss otherwise
    tune = {"train": _cfg()}
    assert TuneConfig.model_validate(tune).metric == "loss"
    assert TuneConfig.model_validate({"train": _cfg(validation={"fraction": 0.1})}).metric == "eval_loss"
    with pytest.raises(ValueError, match="needs train.validation"):
        TuneConfig.model_validate({**tune, "asha": {"metric": "eval_loss"}})
    with pytest.raises(ValueError, match="every_n_steps must be unset"):
        TuneConfig.model_validate({"train": _cfg(validation={"fraction": 0.1, "every_n_steps": 20})})


def test_held_out_rows_are_a_seeded_share_and_never_trained_on(ray_local):
    from lamini.train.trainer import build_dataset, build_validation
    from lamini.train.validation import held_out

    path = str(shared_data("alpaca_5000.json"))
    cfg = TrainConfig.model_validate(_cfg(data={"corpora": [{"format": "alpaca", "path": path}], "limit": 1000},
                                          validation={"fraction": 0.1, "max_rows": None}))  # fmt: skip
    train = [(r["instruction"], r["response"]) for r in build_dataset(cfg).iter_rows()]
    val = [(r["instruction"], r["response"]) for r in build_validation(cfg).iter_rows()]
    assert not set(train) & set(val) and len(train) + len(val) == 1000
    assert 60 <= len(val) <= 140  # about a tenth
    # the split is a function of the row and the seed, not of its position
    ins, res = zip(*val)
    assert held_out(list(ins[::-1]), list(res[::-1]), 0.1, 0).all()
    other = held_out([i for i, _ in train + val], [r for _, r in train + val], 0.1, 1)
    assert 60 <= other.sum() <= 140 and set(map(tuple, (v for v, o in zip(train + val, other) if o))) != set(val)
    capped = TrainConfig.model_validate(cfg.model_dump() | {"validation": {"fraction": 0.1, "max_rows": 25}})
    assert build_validation(capped).count() == 25


def test_eval_loss_does_not_depend_on_the_micro_batch_or_packing(ray_local, tiny_lms):
    import ray.data
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamini.train.data import ExampleEncoder, pad_token_id
    from lamini.train.validation import evaluate

    tok = AutoTokenizer.from_pretrained(tiny_lms.causal)
    model = AutoModelForCausalLM.from_pretrained(tiny_lms.causal)
    rows = json.loads(shared_data("alpaca_5000.json").read_text(encoding="utf-8"))[:24]
    ds = ray.data.from_items([{"instruction": r["instruction"], "response": r["output"]} for r in rows])

    def loss(micro: int, packing: bool) -> float:
        cfg = TrainConfig.model_validate(_cfg(data={"corpora": [ALPACA], "packing": packing, "max_length": 512}))
        enc = ExampleEncoder(tok, "decoder", cfg.data)
        out = evaluate(model, ds.iterator(), enc, micro, pad_token_id(tok), 1, "cpu", seq2seq=False)
        assert out["eval_tokens"] > 1000
        return out["eval_loss"]

    one = loss(1, False)
    assert loss(8, False) == pytest.approx(one, rel=1e-5)
    assert loss(2, True) == pytest.approx(one, rel=1e-5)
    assert model.training  # evaluate puts the model back in training mode


def test_run_reports_eval_loss_and_keeps_the_best_checkpoint(ray_local, tmp_path, tiny_lms):
    from lamini.train.trainer import run_train

    cfg = TrainConfig.model_validate({
        "name": "student", "run_dir": str(tmp_path / "runs"), "model": {"base": str(tiny_lms.causal)},
        "data": {"corpora": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json"))}], "limit": 300,
                 "max_length": 128},
        "validation": {"fraction": 0.1, "every_n_steps": 8},
        "optim": {"lr": 3e-3}, "global_batch_size": 8, "micro_batch_size": 4, "max_steps": 24,
        "log_every_n_steps": 4, "checkpoint_every_n_steps": 12, "keep_checkpoints": 1, "export": False,
        "scaling": {"num_workers": 1, "cpus_per_worker": 2},
    })  # fmt: skip
    summary = run_train(cfg)
    history = read_history(tmp_path / "runs" / "student")
    assert [h["step"] for h in history] == [4, 8, 12, 16, 20, 24]
    # evaluated every 8 steps, at every checkpoint (12, 24) and at the end
    assert [h["step"] for h in history if "eval_loss" in h] == [8, 12, 16, 24]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert evals[-1] < 0.97 * evals[0] and all(h["eval_tokens"] > 300 for h in history if "eval_loss" in h)
    assert summary.eval_loss == history[-1]["eval_loss"] and "eval_loss" in summary.line()
    # the best checkpoint by eval_loss among those kept (keep 1: Ray keeps the best, and the newest)
    best = summary.best_checkpoint
    at = {h["step"]: h["eval_loss"] for h in history if h["checkpoint"]}
    assert best["step"] in at and best["eval_loss"] == min(at.values()) == at[best["step"]]
    manifest = json.loads((tmp_path / "runs" / "student" / "manifest.json").read_text())
    assert manifest["summary"]["best_checkpoint"]["step"] == best["step"]
