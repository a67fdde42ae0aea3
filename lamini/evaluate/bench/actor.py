"""The actor behind `lamini bench students`: one (student, engine) loaded once, measured per batch size.

`StudentBench(serving, prompts, max_tokens, warmup_batches)` runs as a Ray actor sized as the
student is served; `measure(batch_size)` returns one point's record (the keys of
lamini.evaluate.bench.run.DEFINITIONS). HF points go through the same HFEngine the inference actors
use; vLLM points through one `LLM.generate` per batch. torch and vllm load inside the actor.
"""

from __future__ import annotations

import math
import os
import resource
import threading
import time
from functools import partial
from itertools import cycle, islice
from typing import Any

from lamini.evaluate.inference import Serving


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` with linear interpolation (numpy's default)."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _rss_bytes() -> int:
    """Resident set of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class _RssPeak:
    """Samples this process's RSS every `interval` s in a thread while the `with` block runs."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak = interval, _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss_bytes())

    def __enter__(self) -> "_RssPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


class StudentBench:
    """One (student, engine) as a Ray actor: loads the model once, then `measure(batch_size)` per point.

    serving: how the student is served; its `engine` is the engine measured;
    prompts: the finished request texts (wrapped), n_prompts of them; max_tokens: written per
    request (EOS ignored); warmup_batches: untimed batches before each point.
    """

    def __init__(self, serving: Serving, prompts: list[str], max_tokens: int, warmup_batches: int):
        import torch

        self.serving, self.prompts, self.warmup_batches = serving, prompts, warmup_batches
        self.max_tokens = max_tokens
        self.unavailable: str | None = None
        self.cuda = serving.device == "cuda"
        if not self.cuda:
            # Ray sizes OMP_NUM_THREADS from num_cpus only for whole numbers: say it outright.
            torch.set_num_threads(max(1, int(serving.student.num_cpus_per_actor)))
        t0 = time.perf_counter()
        if serving.engine == "vllm":
            self._load_vllm()
        else:
            self._load_hf()
        self.load_s = time.perf_counter() - t0

    def _load_hf(self) -> None:
        from lamini.config import GenerationParams
        from lamini.engines.base import text_request
        from lamini.engines.hf_local import HFEngine

        gen = GenerationParams(max_tokens=self.max_tokens, temperature=0.0, top_p=1.0, seed=0)
        # The production code path: the same engine, loading, padding side and batched_generate call.
        self.engine = HFEngine.for_student(self.serving)
        self.request = partial(text_request, gen=gen, min_tokens=self.max_tokens)

    def _load_vllm(self) -> None:
        try:
            import vllm
        except ImportError:
            # vllm is the optional [gpu] extra: a worker without it cannot run the engine.
            self.unavailable = "vllm is not installed on the worker (extra [gpu])"
            return
        from lamini.engines.vllm_engine import vllm_engine_kwargs

        s = self.serving.student
        # As the inference actors serve it (a share of the GPU for a small student), unless vLLM
        # places its own GPU workers (tensor parallel).
        num_gpus = 1.0 if s.tensor_parallel_size > 1 else self.serving.num_gpus
        kwargs = {"seed": 0, **vllm_engine_kwargs(s, dtype=self.serving.dtype, num_gpus=num_gpus,
                                                  trust_remote_code=s.trust_remote_code)}  # fmt: skip
        if s.tensor_parallel_size > 1:
            kwargs.setdefault("distributed_executor_backend", "ray")
        self.llm = vllm.LLM(model=self.serving.source, **kwargs)
        self.sampling = vllm.SamplingParams(
            max_tokens=self.max_tokens, temperature=0.0, top_p=1.0, seed=0, ignore_eos=True
        )

    def info(self) -> dict[str, Any]:
        """How this actor runs: load time, device, threads, versions; `unavailable` when the engine is missing."""
        import torch

        out: dict[str, Any] = {
            "unavailable": self.unavailable,
            "load_s": round(self.load_s, 3),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "rss_after_load_mb": round(_rss_bytes() / 2**20, 1),
            "pid": os.getpid(),
        }
        if self.cuda:
            out["gpu"] = torch.cuda.get_device_name()
        if self.serving.engine == "vllm" and not self.unavailable:
            import vllm

            out["vllm"] = vllm.__version__
        return out

    def _batch(self, prompts: list[str]) -> tuple[int, int, list[str]]:
        """One engine call -> (output tokens, prompt tokens, errors)."""
        if self.serving.engine == "vllm":
            outs = self.llm.generate(prompts, self.sampling, use_tqdm=False)
            return (
                sum(len(o.outputs[0].token_ids) for o in outs),
                sum(len(o.prompt_token_ids or []) for o in outs),
                [],
            )
        results = self.engine.generate([self.request(p) for p in prompts])
        return (
            sum(r.completion_tokens for r in results),
            sum(r.prompt_tokens for r in results),
            [r.error for r in results if r.error],
        )

    def measure(self, batch_size: int) -> dict[str, Any]:
        """Warm-up batches, then the timed point at `batch_size` -> the point's record (see DEFINITIONS)."""
        import torch

        if self.serving.engine == "hf":
            # The engine chunks by its batch_size: make one chunk = one generate() of this size.
            self.engine.batch_size = batch_size
        warm = list(islice(cycle(self.prompts), batch_size))
        for _ in range(self.warmup_batches):
            self._batch(warm)
        # vLLM's engine runs in its own process: torch's counters here would not see it.
        hf_cuda = self.cuda and self.serving.engine == "hf"
        if hf_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        batches = [self.prompts[i : i + batch_size] for i in range(0, len(self.prompts), batch_size)]
        latencies: list[float] = []
        out_tokens = in_tokens = 0
        errors: list[str] = []
        with _RssPeak() as rss:
            t0 = time.perf_counter()
            for batch in batches:
                tb = time.perf_counter()
                n_out, n_in, errs = self._batch(batch)
                if hf_cuda:
                    torch.cuda.synchronize()
                latencies += [time.perf_counter() - tb] * len(batch)
                out_tokens, in_tokens, errors = out_tokens + n_out, in_tokens + n_in, errors + errs
            wall = time.perf_counter() - t0
        if self.cuda and self.serving.engine == "vllm":
            try:
                free, total = torch.cuda.mem_get_info()
                peak, kind = total - free, "cuda device in use"
            except RuntimeError:  # tensor parallel: this actor holds no GPU, vLLM's workers do
                peak, kind = None, "unavailable (tensor-parallel workers)"
        elif hf_cuda:
            peak, kind = torch.cuda.max_memory_allocated(), "cuda max allocated"
        else:
            peak, kind = rss.peak, "cpu rss sampled"
        n = len(self.prompts)
        return {
            "status": "failed" if errors else "ok",
            "reason": f"{len(errors)} requests failed: {errors[0]}" if errors else None,
            "requests": n,
            "batches": len(batches),
            "output_tokens": out_tokens,
            "prompt_tokens": in_tokens,
            "wall_s": round(wall, 4),
            "tokens_per_s": round(out_tokens / wall, 2),
            "requests_per_s": round(n / wall, 3),
            "p50_latency_s": round(percentile(latencies, 0.5), 4),
            "p95_latency_s": round(percentile(latencies, 0.95), 4),
            "mean_latency_s": round(sum(latencies) / n, 4),
            "peak_memory_mb": None if peak is None else round(peak / 2**20, 1),
            "memory_kind": kind,
            # ru_maxrss is in KiB on Linux.
            "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }


__all__ = ["StudentBench", "percentile"]
