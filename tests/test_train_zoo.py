"""configs/train/: the LaMini zoo of the paper's Table 3.

Every config loads as a TrainConfig, keeps the paper's hyper-parameters (section 4.1), and fits
the cluster's 8xA100-40G nodes: per-GPU model states from DeepSpeed's own estimators plus an
activation allowance stay under 40 GB, and cluster.yaml's GPU group has the nodes it needs.
CPU only, no Ray, no model download: model shapes are written down below.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import NamedTuple

import pytest
import yaml
from conftest import ROOT

from lamini.config import load_config
from lamini.train.config import TrainConfig

ZOO_DIR = ROOT / "configs" / "train"
DATA = "runs/dataset/dataset/lamini_instruction.parquet"  # what `lamini dataset` writes

# Table 3: config stem -> (base model, family, size as the paper names it).
TABLE3 = {
    "lamini-t5-61m": ("t5-small", "encoder-decoder", 61e6),
    "lamini-t5-223m": ("t5-base", "encoder-decoder", 223e6),
    "lamini-t5-738m": ("t5-large", "encoder-decoder", 738e6),
    "lamini-flan-t5-77m": ("google/flan-t5-small", "encoder-decoder", 77e6),
    "lamini-flan-t5-248m": ("google/flan-t5-base", "encoder-decoder", 248e6),
    "lamini-flan-t5-783m": ("google/flan-t5-large", "encoder-decoder", 783e6),
    "lamini-neo-125m": ("EleutherAI/gpt-neo-125m", "decoder", 125e6),
    "lamini-neo-1.3b": ("EleutherAI/gpt-neo-1.3B", "decoder", 1.3e9),
    "lamini-cerebras-111m": ("cerebras/Cerebras-GPT-111M", "decoder", 111e6),
    "lamini-cerebras-256m": ("cerebras/Cerebras-GPT-256M", "decoder", 256e6),
    "lamini-cerebras-590m": ("cerebras/Cerebras-GPT-590M", "decoder", 590e6),
    "lamini-cerebras-1.3b": ("cerebras/Cerebras-GPT-1.3B", "decoder", 1.3e9),
    "lamini-gpt-124m": ("gpt2", "decoder", 124e6),
    "lamini-gpt-774m": ("gpt2-large", "decoder", 774e6),
    "lamini-gpt-1.5b": ("gpt2-xl", "decoder", 1.5e9),
    "lamini-gpt-j-6b": ("EleutherAI/gpt-j-6b", "decoder", 6e9),
    "lamini-llama-7b": ("huggyllama/llama-7b", "decoder", 7e9),
}
BIG = {"lamini-gpt-j-6b", "lamini-llama-7b"}  # trained for 6K steps on 2 nodes with ZeRO-3


class Arch(NamedTuple):
    """Shape of a base model, from its config.json (T5: d_model, num_layers, num_decoder_layers, num_heads)."""

    hidden: int
    enc_layers: int  # 0 for decoder-only models
    dec_layers: int
    heads: int
    vocab: int


ARCH = {
    "t5-small": Arch(512, 6, 6, 8, 32128),
    "t5-base": Arch(768, 12, 12, 12, 32128),
    "t5-large": Arch(1024, 24, 24, 16, 32128),
    "google/flan-t5-small": Arch(512, 8, 8, 6, 32128),
    "google/flan-t5-base": Arch(768, 12, 12, 12, 32128),
    "google/flan-t5-large": Arch(1024, 24, 24, 16, 32128),
    "EleutherAI/gpt-neo-125m": Arch(768, 0, 12, 12, 50257),
    "EleutherAI/gpt-neo-1.3B": Arch(2048, 0, 24, 16, 50257),
    "cerebras/Cerebras-GPT-111M": Arch(768, 0, 10, 12, 50257),
    "cerebras/Cerebras-GPT-256M": Arch(1088, 0, 14, 17, 50257),
    "cerebras/Cerebras-GPT-590M": Arch(1536, 0, 18, 12, 50257),
    "cerebras/Cerebras-GPT-1.3B": Arch(2048, 0, 24, 16, 50257),
    "gpt2": Arch(768, 0, 12, 12, 50257),
    "gpt2-large": Arch(1280, 0, 36, 20, 50257),
    "gpt2-xl": Arch(1600, 0, 48, 25, 50257),
    "EleutherAI/gpt-j-6b": Arch(4096, 0, 28, 16, 50400),
    "huggyllama/llama-7b": Arch(4096, 0, 32, 32, 32000),
}

# p4d.24xlarge: 8x A100-40G, 96 vCPU, 1152 GiB of memory.
GPUS_PER_NODE = 8
GPU_BYTES = 40e9  # the card has 40 GiB (42.9e9 bytes): 40e9 keeps a 7% margin on top of the estimates
NODE_CPUS = 96
NODE_RAM = 1152 * 2**30
# CUDA context, NCCL buffers, DeepSpeed's reduce/all-gather buckets, allocator fragmentation.
OVERHEAD = 4 * 2**30
ZERO3_LIVE_PARAMS = 1e9  # DeepSpeed's default stage3_max_live_parameters: gathered bf16 weights


def _load(stem: str) -> TrainConfig:
    return load_config(TrainConfig, ZOO_DIR / f"{stem}.yaml")


def _layout(cfg: TrainConfig) -> tuple[int, int]:
    """(nodes, GPUs per node) of a config's workers, packed onto 8-GPU nodes."""
    n = cfg.scaling.num_workers
    return math.ceil(n / GPUS_PER_NODE), min(n, GPUS_PER_NODE)


def test_every_yaml_loads_and_the_zoo_is_table3():
    files = sorted(ZOO_DIR.glob("*.yaml"))
    loaded = {p.stem: load_config(TrainConfig, p) for p in files}  # every file, zoo or not
    assert set(TABLE3) <= set(loaded), f"missing: {sorted(set(TABLE3) - set(loaded))}"
    got = {stem: (loaded[stem].model.base, loaded[stem].model.family) for stem in TABLE3}
    assert got == {stem: (base, family) for stem, (base, family, _) in TABLE3.items()}
    assert len(TABLE3) == 17  # T5 x3, Flan-T5 x3, GPT-Neo x2, Cerebras-GPT x4, GPT-2 x3, GPT-J, LLaMA


@pytest.mark.parametrize("stem", sorted(TABLE3))
def test_paper_hyperparameters(stem):
    cfg = _load(stem)
    _, family, size = TABLE3[stem]
    assert cfg.name == stem and cfg.run_dir == "runs/train"
    assert cfg.model.params == pytest.approx(size, rel=0.07)
    assert cfg.model.base in ARCH
    assert [(c.format, c.path) for c in cfg.data.corpora] == [("lamini", DATA)]
    assert cfg.optim.lr == {"encoder-decoder": 5e-4, "decoder": 2e-5}[family]
    assert cfg.global_batch_size == 1024
    assert cfg.precision == "bf16"
    assert cfg.scaling.use_gpu and cfg.scaling.accelerator_type == "A100"
    assert cfg.grad_accum_steps * cfg.micro_batch_size * cfg.scaling.num_workers == 1024
    assert cfg.data.shuffle  # a seeded global shuffle every epoch (D_ALL is written source by source)
    if stem in BIG:
        assert cfg.max_steps == 6000
        assert cfg.deepspeed.zero_stage == 3 and cfg.scaling.num_workers == 16
        assert cfg.gradient_checkpointing
    else:
        assert cfg.max_steps is None and cfg.epochs == 5
        assert cfg.scaling.num_workers == GPUS_PER_NODE  # one node
        assert cfg.deepspeed.zero_stage in (0, 2)
        if cfg.model.params > 1e9:
            assert cfg.deepspeed.zero_stage == 2 and cfg.gradient_checkpointing


def _model_states(cfg: TrainConfig, arch: Arch) -> tuple[float, float]:
    """(bytes per GPU, bytes of host memory per node) for params, gradients and Adam states, from DeepSpeed."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    nodes, gpus = _layout(cfg)
    params, ds = cfg.model.params, cfg.deepspeed
    if ds.zero_stage == 3:
        # zero_init=False: the worst case, every worker loads the whole model on the host first.
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            params, arch.vocab * arch.hidden, gpus, nodes,
            cpu_offload=ds.offload_optimizer, cpu_offload_params=ds.offload_params, zero_init=False,
        )  # fmt: skip
    elif ds.zero_stage == 2:
        cpu, gpu = estimate_zero2_model_states_mem_needs(params, gpus, nodes, cpu_offload=ds.offload_optimizer)
    else:
        assert ds.zero_stage == 0, "ZeRO-1 is not used by the zoo"
        # Unsharded: ZeRO-2's formula on one GPU, 2 + 18 = 20 bytes/param (bf16 weights and gradients, fp32
        # master weights, fp32 gradient accumulation and Adam's two moments) -- above the textbook 16.
        cpu, gpu = estimate_zero2_model_states_mem_needs(params, 1, 1, cpu_offload=False)
        cpu *= gpus
    return gpu, cpu


def _activations(cfg: TrainConfig, arch: Arch) -> float:
    """Bytes of activations per GPU for one micro batch, bf16 (Korthikanti et al. 2022: s*b*h*(34 + 5*a*s/h) a layer).

    With gradient checkpointing only each layer's input (2*s*b*h) is kept, plus one layer recomputed at a time.
    The logits are counted as bf16 + an fp32 copy for the loss + their fp32 gradient (10 bytes per entry).
    """
    b, h, a = cfg.micro_batch_size, arch.hidden, arch.heads

    def layer(s: int) -> float:
        return s * b * h * 34 + 5 * a * s * s * b

    if arch.enc_layers:  # encoder-decoder: a decoder layer adds cross-attention, counted as half a layer more
        src, tgt = cfg.data.max_source_length, cfg.data.max_target_length
        layers = [(src, layer(src))] * arch.enc_layers + [(tgt, 1.5 * layer(tgt))] * arch.dec_layers
        out_len = tgt
    else:
        s = cfg.data.max_length
        layers = [(s, layer(s))] * arch.dec_layers
        out_len = s
    if cfg.gradient_checkpointing:
        acts = sum(2 * s * b * h for s, _ in layers) + max(full for _, full in layers)
    else:
        acts = sum(full for _, full in layers)
    return acts + b * out_len * arch.vocab * 10


@pytest.mark.parametrize("stem", sorted(TABLE3))
def test_fits_a100_40g(stem):
    cfg = _load(stem)
    arch = ARCH[cfg.model.base]
    states, host = _model_states(cfg, arch)
    extra = ZERO3_LIVE_PARAMS * 2 if cfg.deepspeed.zero_stage == 3 else 0
    total = states + _activations(cfg, arch) + OVERHEAD + extra
    assert total < GPU_BYTES, f"{stem}: ~{total / 1e9:.1f} GB per GPU (model states {states / 1e9:.1f} GB)"
    assert host < NODE_RAM / 2, f"{stem}: ~{host / 2**30:.0f} GiB of host memory per node"


@pytest.mark.parametrize("stem", ["lamini-llama-7b", "lamini-gpt-1.5b"])
def test_estimates_are_what_deepspeed_prints(stem):
    """The *_all_cold helpers only print a table; the per-GPU figure we use must be the one in it."""
    from deepspeed.runtime.zero.stage3 import (
        estimate_zero3_model_states_mem_needs_all_cold,
    )
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs_all_cold,
    )

    cfg = _load(stem)
    arch = ARCH[cfg.model.base]
    nodes, gpus = _layout(cfg)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        if cfg.deepspeed.zero_stage == 3:
            estimate_zero3_model_states_mem_needs_all_cold(cfg.model.params, arch.vocab * arch.hidden, gpus, nodes)
            options = "offload_param=none, offload_optimizer=none, zero_init=0"
        else:
            estimate_zero2_model_states_mem_needs_all_cold(cfg.model.params, gpus, nodes)
            options = "offload_optimizer=none"
    rows = [line.split("|") for line in out.getvalue().splitlines() if line.count("|") == 2]
    printed = {opt.strip(): per_gpu.strip() for _, per_gpu, opt in rows}
    gpu, _ = _model_states(cfg, arch)
    assert printed[options] == f"{gpu / 2**30:.2f}GB"


def _gpu_group() -> dict:
    cluster = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    groups = [
        t for name, t in cluster["available_node_types"].items()
        if name != cluster["head_node_type"] and t["resources"].get("GPU")
    ]  # fmt: skip
    assert len(groups) == 1, "expected one GPU worker group in cluster.yaml"
    return groups[0]


def test_cluster_gpu_group_is_p4d():
    group = _gpu_group()
    assert group["node_config"]["InstanceType"] == "p4d.24xlarge"
    assert group["resources"]["GPU"] == GPUS_PER_NODE
    assert group["resources"]["accelerator_type:A100"] == 1  # what Ray itself detects on such a node


@pytest.mark.parametrize("stem", sorted(TABLE3))
def test_cluster_can_host(stem):
    cfg = _load(stem)
    group = _gpu_group()
    nodes, per_node = _layout(cfg)
    assert cfg.scaling.num_workers <= GPUS_PER_NODE * group["max_workers"]
    assert nodes <= group["max_workers"]
    assert f"accelerator_type:{cfg.scaling.accelerator_type}" in group["resources"]
    assert cfg.scaling.cpus_per_worker * per_node <= group["resources"].get("CPU", NODE_CPUS)
