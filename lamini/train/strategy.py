"""Every DeepSpeed call lives behind this one object (OpenRLHF's DeepspeedStrategy, smaller).

`deepspeed_config(cfg, ...)` turns a TrainConfig into DeepSpeed's JSON config (ZeRO stage,
offload, precision, optimiser and WarmupCosineLR schedule, gradient accumulation) and
`DeepSpeedStrategy` builds the engine, saves/loads resumable checkpoints and consolidates the
final weights (ZeRO-3 shards gathered) for `save_pretrained`. Imported inside Ray Train workers only.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from lamini.train.config import TrainConfig

log = logging.getLogger(__name__)


def resolve_precision(precision: str, use_gpu: bool) -> str:
    if precision == "auto":
        return "bf16" if use_gpu else "fp32"
    return precision


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(cfg: TrainConfig, *, lr: float, total_steps: int, use_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed config dict for a TrainConfig (`cfg.deepspeed.config` merged over it last)."""
    ds = cfg.deepspeed
    precision = resolve_precision(cfg.precision, use_gpu)
    torch_adam = ds.torch_adam if ds.torch_adam is not None else not use_gpu
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=use_gpu, contiguous_gradients=True, reduce_scatter=True)
    if ds.zero_stage == 3:
        # Gather the shards into one state dict at export (save_pretrained needs whole tensors).
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    warmup = max(1, int(round(cfg.optim.warmup_ratio * total_steps)))  # WarmupCosineLR rejects 0
    out: dict[str, Any] = {
        "train_batch_size": cfg.global_batch_size,
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "gradient_clipping": cfg.optim.max_grad_norm,
        "zero_optimization": zero,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "betas": list(cfg.optim.betas),
                "eps": cfg.optim.eps,
                "weight_decay": cfg.optim.weight_decay,
                # torch's AdamW on CPU: DeepSpeed's fused Adam is a CUDA op and its CPU Adam a JIT build.
                "torch_adam": torch_adam,
            },
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max(total_steps, 1),
                "warmup_num_steps": warmup,
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": cfg.optim.min_lr_ratio,
                "warmup_type": "linear",
            },
        },
        "steps_per_print": 10**9,  # progress is ours (lamini.train.loop), not DeepSpeed's prints
        "wall_clock_breakdown": False,
    }
    if ds.offload_optimizer and torch_adam:
        # torch's AdamW may step offloaded states on the CPU (no DeepSpeedCPUAdam build needed).
        out["zero_force_ds_cpu_optimizer"] = False
    if precision == "bf16":
        out["bf16"] = {"enabled": True}
    elif precision == "fp16":
        out["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return _merge(out, ds.config)


def param_groups(model, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no decay on biases and normalisation weights (the usual transformer recipe)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class DeepSpeedStrategy:
    """One DeepSpeed engine: build, step, checkpoint, consolidate."""

    def __init__(self, ds_config: dict[str, Any]):
        self.ds_config = ds_config
        self.engine = None
        self._hf_ds_config = None

    @property
    def zero_stage(self) -> int:
        return int(self.ds_config["zero_optimization"]["stage"])

    def model_init_context(self) -> None:
        """Before from_pretrained: join the process group and, for ZeRO-3, make transformers build the model already sharded
        (deepspeed.zero.Init through HfDeepSpeedConfig), so a 7B student never sits whole on one GPU.
        The object must stay alive while the model loads, hence it is kept on self."""
        import deepspeed

        # Ray Train already created the process group (gloo on CPU, NCCL on GPU); DeepSpeed joins
        # it here, before zero.Init needs the world size.
        deepspeed.init_distributed(auto_mpi_discovery=False)
        if self.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config)

    def setup(self, model, weight_decay: float):
        import deepspeed

        self.engine, _, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups(model, weight_decay), config=self.ds_config
        )
        if self.engine.dp_world_size == 1 and self.zero_stage == 0 and not self.engine.bfloat16_enabled() \
                and not self.engine.fp16_enabled():
            # One data-parallel rank: DeepSpeed would still flatten every gradient into a bucket,
            # all-reduce it with itself and copy it back at each optimiser step (7 ms a step for
            # 7.9M fp32 parameters on 2 cores, ~1% of benchmarks/bench_train.py's step). An average
            # over one rank is the identity. ZeRO-1/2/3 and the 16-bit optimisers keep their own
            # reduction (it also fills their partitions), so only plain fp32 ZeRO-0 skips it.
            self.engine.enable_backward_allreduce = False
        return self.engine

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    @property
    def global_step(self) -> int:
        return int(self.engine.global_steps)

    def save(self, directory: str, client_state: dict[str, Any]) -> None:
        """Collective: every rank writes its shards (optimizer, ZeRO partitions) under `directory`."""
        self.engine.save_checkpoint(directory, tag="state", client_state=client_state)

    def load(self, directory: str) -> dict[str, Any]:
        """Restore weights, optimizer, scheduler and step; returns the client state saved with them."""
        path, client_state = self.engine.load_checkpoint(
            directory, tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {directory}")
        return client_state or {}

    def consolidated_state_dict(self):
        """Collective: the whole model's weights on rank 0 (None elsewhere), ZeRO-3 shards gathered."""
        import torch.distributed as dist

        if self.zero_stage == 3:
            sd = self.engine._zero3_consolidated_16bit_state_dict()  # gathers layer by layer to rank 0
        else:
            sd = self.engine.module.state_dict()
        rank = dist.get_rank() if dist.is_initialized() else 0
        return sd if rank == 0 else None
