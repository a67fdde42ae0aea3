"""Model FLOPs utilisation: training FLOPs / time / peak FLOP/s of the devices.

Training FLOPs are the usual 6 per parameter per token (forward 2, backward 4; attention's
sequence-length term left out). A decoder-only model runs every token through all N parameters:
6·N·tokens. An encoder-decoder model runs source tokens through the encoder only and target
tokens through the decoder only, so it is 6·N_enc·source_tokens + 6·N_dec·target_tokens
(param_split): charging N_enc + N_dec to both kinds of token, as 6·N·(source + target) does,
overstates it about twice. The split is an approximation: the decoder's cross-attention
projects the encoder's output once per source token, not per target token, but its parameters
are counted with the decoder; the shared token embedding is counted once, with the decoder
(where, tied, it is the output layer; in the encoder it is only a lookup).

Peak is the device's dense spec for known GPUs (the MFU convention of PaLM and Megatron), and
on a CPU the throughput of a large fp32 matmul measured on the spot, since CPUs publish no
single number and what matters there is the ratio between trainers on the same machine.
"""

from __future__ import annotations

import time

# Dense (no sparsity) tensor-core peaks in TFLOP/s per GPU, from the vendors' datasheets.
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},  # SXM; PCIe is 756
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "fp32": 91.6},
    "A10G": {"bf16": 70.0, "fp16": 70.0, "fp32": 31.2},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "V100": {"bf16": 0.0, "fp16": 125.0, "fp32": 15.7},
}


def measure_cpu_peak_flops(n: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of repeated n×n fp32 matmuls with torch's current thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2.0 * n**3 * reps / (time.perf_counter() - t0)


def device_peak_flops(precision: str, override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s of one device, how it was obtained)."""
    if override_tflops:
        return override_tflops * 1e12, "config"
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, table in GPU_PEAK_TFLOPS.items():
            if key in name and table.get(precision):
                return table[precision] * 1e12, f"spec:{key}:{precision}"
        return 0.0, f"unknown GPU {name!r} (set peak_tflops)"
    return measure_cpu_peak_flops(), "measured:cpu-fp32-matmul"


def param_split(model) -> tuple[int, int]:
    """(encoder, decoder) parameters of an encoder-decoder model; (0, all) for a decoder-only one.

    Decoder: everything outside the encoder (decoder stack with its cross-attention, LM head) plus
    what the encoder shares with it (T5's `shared` embedding), so the two add up to all parameters.
    """
    from lamini.models.loading import count_params, param_numel

    total = count_params(model)  # parameters() lists a shared tensor once
    if not getattr(getattr(model, "config", None), "is_encoder_decoder", False) or not hasattr(model, "get_encoder"):
        return 0, total
    encoder = model.get_encoder()
    outside: set[int] = set()  # ids of parameters reachable without entering the encoder

    def walk(module) -> None:
        if module is encoder:
            return
        outside.update(id(p) for p in module.parameters(recurse=False))
        for child in module.children():
            walk(child)

    walk(model)
    n_enc = sum(param_numel(p) for p in encoder.parameters() if id(p) not in outside)
    return n_enc, total - n_enc


def train_flops(n_encoder: int, n_decoder: int, encoder_tokens: int, decoder_tokens: int) -> float:
    """6·N_enc·encoder tokens + 6·N_dec·decoder tokens (decoder-only: n_encoder = 0, so 6·N·tokens)."""
    return 6.0 * (n_encoder * encoder_tokens + n_decoder * decoder_tokens)


def flops_utilisation(flops_per_s: float, peak_flops_per_device: float, devices: int) -> float | None:
    if peak_flops_per_device <= 0:
        return None
    return flops_per_s / (peak_flops_per_device * devices)


def mfu(n_params: int, tokens_per_s: float, peak_flops_per_device: float, devices: int) -> float | None:
    """MFU of a decoder-only model (every token through all n_params); see train_flops for encoder-decoder."""
    return flops_utilisation(6.0 * n_params * tokens_per_s, peak_flops_per_device, devices)
