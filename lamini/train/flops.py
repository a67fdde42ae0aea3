"""Model FLOPs utilisation: 6·N·tokens / time / peak FLOP/s of the devices.

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


def mfu(n_params: int, tokens_per_s: float, peak_flops_per_device: float, devices: int) -> float | None:
    if peak_flops_per_device <= 0:
        return None
    return 6.0 * n_params * tokens_per_s / (peak_flops_per_device * devices)
