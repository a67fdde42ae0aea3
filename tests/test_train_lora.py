"""LoRA (peft): a tiny student trains only its adapters, then exports merged (an ordinary model
folder) or as an adapter, and either reloads with transformers / peft."""

from __future__ import annotations

import pytest
from conftest import shared_data

from lamini.train.config import TrainConfig
from lamini.train.trainer import read_history


def _cfg(model_dir, run_dir, name: str, export: str, zero_stage: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "name": name, "run_dir": str(run_dir), "model": {"base": str(model_dir)},
        "data": {"corpora": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json"))}], "limit": 128,
                 "max_length": 128},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear", "export": export},
        "optim": {"lr": 2e-2}, "global_batch_size": 8, "micro_batch_size": 4, "max_steps": 12,
        "log_every_n_steps": 4, "checkpoint_every_n_steps": 12, "deepspeed": {"zero_stage": zero_stage},
        "scaling": {"num_workers": 1, "cpus_per_worker": 2},
    })  # fmt: skip


@pytest.mark.parametrize("export,zero_stage", [("merged", 0), ("adapter", 0), ("merged", 3)])
def test_lora_trains_adapters_only_and_its_export_reloads(ray_local, tmp_path, tiny_lms, export, zero_stage):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from lamini.train.trainer import run_train

    summary = run_train(_cfg(tiny_lms.causal, tmp_path / "runs", "student", export, zero_stage))
    history = read_history(tmp_path / "runs" / "student")
    # an untrained base learns slowly through adapters that start at zero (B = 0), but it learns
    assert summary.steps == 12 and history[-1]["loss"] < history[0]["loss"] - 0.02
    trainable, total = history[0]["n_params_trainable"], history[0]["n_params"]
    assert 0 < trainable < 0.15 * total  # the adapters only (r=8 on a 64-wide model: ~10%)
    base = AutoModelForCausalLM.from_pretrained(tiny_lms.causal).eval()
    out = tmp_path / "runs" / "student" / "model"
    if export == "merged":
        assert not (out / "adapter_config.json").exists()
        model = AutoModelForCausalLM.from_pretrained(out).eval()  # an ordinary model: no peft needed
        got, was = model.state_dict(), base.state_dict()
        assert set(got) == set(was)
        changed = {k for k in got if not torch.equal(got[k], was[k])}
        # all-linear: the attention and MLP projections; the embeddings, norms and output head are the base's
        assert changed and all(k.endswith("proj.weight") for k in changed), sorted(changed)
        assert any("mlp" in k for k in changed) and any("self_attn" in k for k in changed)
    else:
        from peft import AutoPeftModelForCausalLM

        assert not (out / "model.safetensors").exists()
        adapter = load_file(out / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter)
        assert sum(t.numel() for t in adapter.values()) == trainable
        model = AutoPeftModelForCausalLM.from_pretrained(out).eval()  # the base named in adapter_config.json
    ids = torch.tensor([[1, 5, 9, 14, 22, 30]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)
