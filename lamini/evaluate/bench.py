"""`lamini bench students`: throughput, latency and peak memory of each student, engine and batch size.

In: a BenchStudentsConfig (students, engines, batch sizes, prompts, max_tokens). Out, in
`run_dir`: bench_students.json (every point, the environment, how each student was served) and
bench_students.png (tokens/s and p95 latency against the batch size, one line per student and
engine); a line per point is printed as it finishes.

How a point is measured. Each (student, engine) gets one Ray actor, sized as the student is
served (`plan_serving`: GPUs by parameter count on a GPU cluster, else `num_cpus_per_actor`
CPUs), which loads the model once. For each batch size it runs `warmup_batches` untimed batches,
then `n_prompts` requests in consecutive batches of that size, each batch one engine call
(HF: one `generate()` through the same HFStudentUDF the inference actors use; vLLM: one
`LLM.generate` of the batch). EOS is ignored (HF `min_new_tokens` = vLLM `ignore_eos`), so every
request writes exactly max_tokens tokens and points compare like with like. A request's latency
is its batch's wall time (the caller waits for the whole batch). The (student, engine) pairs run
one after another, never side by side, so no two measurements share a device or the cores.

Engines that cannot run here (vLLM without a GPU or without vllm, vLLM for T5/GPT-Neo/GGUF:
inference.choose_engine's blockers) are recorded as skipped with the reason; anything else that
fails is a failed point, counted in `BenchSummary.missing`.

torch, transformers, vllm and Ray load inside `run_bench_students` and the actors, never when
this module is imported.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import resource
import threading
import time
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

from lamini.runs.rundir import RunDir

JSON_NAME = "bench_students.json"
PLOT_NAME = "bench_students.png"
PROMPT_COLUMNS = ("instruction", "question")  # the first one a row has is the request

DEFINITIONS = {
    "tokens_per_s": "output tokens of the n_prompts requests / wall time of their batches (warm-up left out)",
    "requests_per_s": "n_prompts / the same wall time",
    "latency": "a request's latency is the wall time of its batch; p50/p95 over the point's requests "
    "(linear interpolation)",
    "output_tokens": "generated tokens; EOS is ignored, so this is requests * max_tokens unless an engine failed",
    "peak_memory_mb": "cpu: the actor process's resident set, sampled every 5 ms during the point's timed batches "
    "(weights included); cuda + hf: torch.cuda.max_memory_allocated, reset before the point; cuda + vllm: device "
    "memory in use at the end of the point (torch.cuda.mem_get_info; vLLM reserves its KV cache up front, so this "
    "is its reservation, not what the batch needed)",
    "process_peak_rss_mb": "getrusage ru_maxrss of the actor process: its high-water mark since it started "
    "(model load included), so it never falls from one batch size to the next",
}


@dataclass
class BenchSummary:
    """What `lamini bench students` prints: counts of points, the fastest one, where the files are."""

    run_dir: str
    json_path: str
    plot_path: str | None
    students: int
    measured: int
    skipped: int
    missing: int  # points that failed for a reason other than "engine not available here"
    fastest: str | None
    wall_s: float

    def line(self) -> str:
        fast = f"; fastest {self.fastest}" if self.fastest else ""
        return (
            f"bench students: {self.students} students, {self.measured} points measured, {self.skipped} skipped, "
            f"{self.missing} failed{fast}; {self.wall_s:.0f} s -> {self.json_path}"
        )


# ------------------------------------------------------------------------------ pure helpers


def load_prompts(path: str | None) -> tuple[list[str], str]:
    """(request texts, where they came from) from a JSONL file (`instruction` or `question` per row),
    local or a URI; None: the paper's 40 hallucination questions packaged with lamini. A bad row
    raises CorpusError (a ValueError) naming the file and line."""
    from lamini.corpus import CorpusError
    from lamini.corpus.sources import jsonl_objects
    from lamini.evaluate.hallucination import packaged_questions

    source = path or packaged_questions()
    out = []
    for file, n, row in jsonl_objects(source):
        value = next((row[c] for c in PROMPT_COLUMNS if isinstance(row.get(c), str) and row[c].strip()), None)
        if value is None:
            raise CorpusError(file, n, "a prompt row needs a non-empty `instruction` or `question`")
        out.append(value)
    return out, source


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values` with linear interpolation (numpy's default)."""
    v = sorted(values)
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def _not_measured(name: str, engine: str, batch_size: int, status: str, reason: str, **extra: Any) -> dict[str, Any]:
    """The record of a point that was skipped or failed before it could be measured."""
    return {"student": name, "engine": engine, "batch_size": batch_size, "status": status, "reason": reason, **extra}


def point_line(p: dict[str, Any]) -> str:
    """One printed line per point."""
    head = f"{p['student']} {p['engine']} batch {p['batch_size']}"
    if p["status"] != "ok":
        return f"{head}: {p['status']}: {p['reason']}"
    return (
        f"{head}: {p['tokens_per_s']:,.1f} tok/s, {p['requests_per_s']:,.2f} req/s, latency p50 "
        f"{p['p50_latency_s']:.3f} s p95 {p['p95_latency_s']:.3f} s, peak {p['peak_memory_mb'] or 0:,.0f} MB "
        f"({p['memory_kind']}), {p['output_tokens']} tokens in {p['wall_s']:.2f} s"
    )


# ------------------------------------------------------------------------------ the actor


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

    serving: a lamini.evaluate.inference.Serving whose `engine` is the engine measured;
    prompts: the finished request texts (wrapped), n_prompts of them; max_tokens: written per
    request (EOS ignored); warmup_batches: untimed batches before each point.
    """

    def __init__(self, serving: Any, prompts: list[str], max_tokens: int, warmup_batches: int):
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
        from lamini.evaluate.engines import HFStudentUDF

        gen = GenerationParams(max_tokens=self.max_tokens, temperature=0.0, top_p=1.0, seed=0)
        # The production code path: the same loading, padding side and batched_generate call.
        self.udf = HFStudentUDF(self.serving, gen, min_tokens=self.max_tokens)

    def _load_vllm(self) -> None:
        try:
            import vllm
        except ImportError:
            # vllm is the optional [gpu] extra: a worker without it cannot run the engine.
            self.unavailable = "vllm is not installed on the worker (extra [gpu])"
            return
        s = self.serving.student
        kwargs: dict[str, Any] = {"tensor_parallel_size": s.tensor_parallel_size, "seed": 0}
        if self.serving.dtype != "auto":
            kwargs["dtype"] = self.serving.dtype
        if s.max_model_len is not None:
            kwargs["max_model_len"] = s.max_model_len
        if s.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if s.tensor_parallel_size > 1:
            kwargs["distributed_executor_backend"] = "ray"  # vLLM places its own GPU workers
        elif self.serving.num_gpus < 1:
            # As the inference actors serve it (engines.vllm_processor_config): a share of the GPU.
            kwargs["gpu_memory_utilization"] = round(0.9 * self.serving.num_gpus, 3)
        kwargs.update(s.engine_kwargs)
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
        results = self.udf.generate(prompts)
        return (
            sum(r.completion_tokens for r in results),
            sum(r.prompt_tokens for r in results),
            [r.error for r in results if r.error],
        )

    def measure(self, batch_size: int) -> dict[str, Any]:
        """Warm-up batches, then the timed point at `batch_size` -> the point's record (see DEFINITIONS)."""
        import torch

        if self.serving.engine == "hf":
            # HFStudentUDF chunks by the student's batch_size: make one chunk = one generate() of this size.
            s = self.serving.student.model_copy(update={"batch_size": batch_size})
            self.udf.serving = dataclasses.replace(self.serving, student=s)
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


# ------------------------------------------------------------------------------ the driver


def _serving_for(base: Any, engine: str, gpus: float, have_vllm: bool) -> tuple[Any | None, str]:
    """(Serving for `engine`, why) from the student's HF plan; (None, reason) when it cannot run here."""
    from lamini.evaluate.inference import choose_engine

    if engine == "hf":
        return dataclasses.replace(base, engine="hf", engine_reason="measured: engine hf"), ""
    try:
        choose_engine("vllm", base.family, base.model_type, "gguf_file" in base.load_kwargs, gpus, have_vllm)
    except ValueError as e:
        return None, str(e)
    # choose_engine lets a driver without vllm submit to GPU workers that have it; the actor says if not.
    return dataclasses.replace(base, engine="vllm", engine_reason="measured: engine vllm"), ""


def _bench_pair(serving: Any, prompts: list[str], cfg: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one (student, engine) actor through every batch size -> (run record, points)."""
    import ray

    s = serving.student
    options: dict[str, Any] = {"num_cpus": s.num_cpus_per_actor, "max_restarts": 0}
    if serving.num_gpus and not (serving.engine == "vllm" and s.tensor_parallel_size > 1):
        options["num_gpus"] = serving.num_gpus
    run = {**serving.describe(), "engine": serving.engine, "engine_reason": serving.engine_reason}
    common = {"params": serving.params, "family": serving.family, "device": serving.device, "dtype": serving.dtype}
    actor = ray.remote(StudentBench).options(**options).remote(serving, prompts, cfg.max_tokens, cfg.warmup_batches)
    points: list[dict[str, Any]] = []
    try:
        try:
            info = ray.get(actor.info.remote())
        except Exception as e:  # noqa: BLE001 - a model that does not load fails its points, not the bench
            why = f"{type(e).__name__}: {e}"[:2000]
            run.update(status="failed", reason=why)
            return run, [_not_measured(s.name, serving.engine, b, "failed", why, **common) for b in cfg.batch_sizes]
        run.update(info)
        if info["unavailable"]:
            run.update(status="skipped", reason=info["unavailable"])
            why = info["unavailable"]
            return run, [_not_measured(s.name, serving.engine, b, "skipped", why, **common) for b in cfg.batch_sizes]
        run["status"] = "ok"
        for b in cfg.batch_sizes:
            head = {"student": s.name, "engine": serving.engine, "batch_size": b}
            try:
                point = head | ray.get(actor.measure.remote(b)) | common
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at a large batch: the next may still run
                point = _not_measured(s.name, serving.engine, b, "failed", f"{type(e).__name__}: {e}"[:2000], **common)
            points.append(point)
            print(f"lamini bench: {point_line(point)}", flush=True)
        return run, points
    finally:
        # A fresh process per pair: frees the model (and GPU memory) and restarts ru_maxrss.
        ray.kill(actor)


def run_bench_students(cfg: Any) -> BenchSummary:
    """cfg: a BenchStudentsConfig -> BenchSummary; writes bench_students.json and .png in cfg.run_dir."""
    from lamini.evaluate.inference import cluster_facts, plan_serving, wrap
    from lamini.runs.manifest import environment
    from lamini.runs.ray_env import init_ray

    t0 = time.time()
    init_ray(cfg.ray)
    gpus, have_vllm = cluster_facts()
    rd = RunDir(cfg.run_dir)
    instructions, source = load_prompts(cfg.prompts)
    report: dict[str, Any] = {
        "config": cfg.model_dump(mode="json"),
        "environment": environment() | {"cluster_gpus": gpus, "driver_has_vllm": have_vllm},
        "prompts": {"source": source, "distinct": len(instructions), "n_prompts": cfg.n_prompts},
        "definitions": DEFINITIONS,
        "runs": [],
        "points": [],
    }
    for student in cfg.students:
        try:
            base = plan_serving(student.model_copy(update={"engine": "hf"}), gpus, have_vllm)
        except Exception as e:  # noqa: BLE001 - an unreadable model fails its points; the others run
            reason = f"{type(e).__name__}: {e}"
            report["runs"].append({"name": student.name, "base": student.base, "status": "failed", "reason": reason})
            report["points"] += [
                _not_measured(student.name, eng, b, "failed", reason) for eng in cfg.engines for b in cfg.batch_sizes
            ]
            print(f"lamini bench: {student.name}: failed: {reason}", flush=True)
            continue
        prompts = [wrap(t, base.wrapper) for t in islice(cycle(instructions), cfg.n_prompts)]
        for engine in cfg.engines:
            serving, why = _serving_for(base, engine, gpus, have_vllm)
            if serving is None:
                report["runs"].append({**base.describe(), "engine": engine, "status": "skipped", "reason": why})
                report["points"] += [
                    _not_measured(student.name, engine, b, "skipped", why, params=base.params, family=base.family)
                    for b in cfg.batch_sizes
                ]
                print(f"lamini bench: {student.name} {engine}: skipped: {why}", flush=True)
                continue
            run, points = _bench_pair(serving, prompts, cfg)
            report["runs"].append(run)
            report["points"] += points
            rd.write_text(JSON_NAME, json.dumps(report, indent=2))  # partial results survive a crash
    report["wall_s"] = round(time.time() - t0, 2)
    rd.write_text(JSON_NAME, json.dumps(report, indent=2))
    plot = plot_bench(report["points"], rd, cfg.max_tokens)
    ok = [p for p in report["points"] if p["status"] == "ok"]
    best = max(ok, key=lambda p: p["tokens_per_s"], default=None)
    summary = BenchSummary(
        run_dir=rd.uri,
        json_path=rd.uri_of(JSON_NAME),
        plot_path=plot,
        students=len(cfg.students),
        measured=len(ok),
        skipped=sum(p["status"] == "skipped" for p in report["points"]),
        missing=sum(p["status"] == "failed" for p in report["points"]),
        fastest=f"{best['student']} {best['engine']} batch {best['batch_size']}: {best['tokens_per_s']:,.1f} tok/s"
        if best
        else None,
        wall_s=round(time.time() - t0, 1),
    )
    print(f"lamini: {summary.line()}", flush=True)
    return summary


def plot_bench(points: list[dict[str, Any]], rd: RunDir, max_tokens: int) -> str | None:
    """bench_students.png in `rd`: tokens/s and p95 latency against the batch size, one line per
    (student, engine) that measured at least one point. None when nothing was measured."""
    ok = [p for p in points if p["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key in dict.fromkeys((p["student"], p["engine"]) for p in ok):
        line = sorted((p for p in ok if (p["student"], p["engine"]) == key), key=lambda p: p["batch_size"])
        x = [p["batch_size"] for p in line]
        ax_t.plot(x, [p["tokens_per_s"] for p in line], marker="o", label=f"{key[0]} ({key[1]})")
        ax_l.plot(x, [p["p95_latency_s"] for p in line], marker="o", label=f"{key[0]} ({key[1]})")
    for ax, ylabel in ((ax_t, "output tokens/s"), (ax_l, "p95 request latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_t.set_title(f"throughput ({max_tokens} tokens per request, EOS ignored)")
    ax_l.set_title("latency (a request waits for its batch)")
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    with rd.fs.open_output_stream(rd.path(PLOT_NAME)) as f:
        f.write(buf.getvalue())
    return rd.uri_of(PLOT_NAME)


__all__ = ["BenchSummary", "StudentBench", "load_prompts", "percentile", "plot_bench", "run_bench_students"]
