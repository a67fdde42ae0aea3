"""DeepSpeed as the training loop drives it, in this process (one gloo rank, no Ray): the engine
that lamini.train.strategy builds trains the same weights as a plain torch loop."""

from __future__ import annotations

import copy
import json
import socket

import pytest
from conftest import shared_data

from lamini.train.config import TrainConfig


@pytest.fixture
def one_rank(monkeypatch):
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1",
                 "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_one_rank_zero0_engine_skips_the_self_allreduce_and_trains_like_plain_torch(one_rank, tiny_lms):
    """With one data-parallel rank, fp32 ZeRO-0, the strategy turns off DeepSpeed's gradient
    all-reduce (a flatten, a reduce with itself and a copy back each step); the weights after
    four steps (accumulation 2, clipping, weight decay groups, the warm-up/cosine schedule) equal
    those of torch.optim.AdamW run by hand at the engine's learning rate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamini.train.data import ExampleEncoder, micro_batches, pad_token_id
    from lamini.train.strategy import DeepSpeedStrategy, deepspeed_config, param_groups

    torch.manual_seed(0)
    cfg = TrainConfig.model_validate({
        "name": "s", "run_dir": "unused", "model": {"base": str(tiny_lms.causal)},
        "data": {"corpora": [{"format": "alpaca", "path": "unused.json"}], "max_length": 160},
        "optim": {"lr": 3e-3, "max_grad_norm": 0.5},
        "global_batch_size": 4, "micro_batch_size": 2, "max_steps": 4,
    })
    tokenizer = AutoTokenizer.from_pretrained(tiny_lms.causal)
    alpaca = json.loads(shared_data("alpaca_5000.json").read_text())[:16]
    rows = [((r["instruction"] + "\n" + r["input"]).strip(), r["output"]) for r in alpaca]
    batches = list(micro_batches(ExampleEncoder(tokenizer, "decoder", cfg.data).examples(iter(rows)), 2,
                                 pad_token_id(tokenizer)))
    assert len(batches) >= 8
    ours = AutoModelForCausalLM.from_pretrained(tiny_lms.causal, dtype=torch.float32)
    plain = copy.deepcopy(ours)

    strategy = DeepSpeedStrategy(deepspeed_config(cfg, lr=3e-3, total_steps=4, use_gpu=False))
    strategy.model_init_context()
    engine = strategy.setup(ours, cfg.optim.weight_decay)
    assert engine.enable_backward_allreduce is False
    o = cfg.optim
    opt = torch.optim.AdamW(param_groups(plain, o.weight_decay), lr=3e-3, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay)
    engine.train()
    plain.train()
    for step in range(4):
        group = batches[2 * step: 2 * step + 2]
        lr = strategy.lr()  # the rate this step runs at (the scheduler moves after the step)
        for mb in group:
            loss = engine(**mb).loss
            engine.backward(loss)
            engine.step()
            (plain(**mb).loss / 2).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), o.max_grad_norm)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert strategy.global_step == 4
    moved = 0.0
    for (name, a), b, start in zip(ours.named_parameters(), plain.parameters(),
                                   AutoModelForCausalLM.from_pretrained(tiny_lms.causal).parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        moved = max(moved, float((a - start).detach().abs().max()))
    assert moved > 1e-3  # the steps changed the weights: the comparison is not of two untouched models
