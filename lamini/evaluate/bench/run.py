"""`lamini bench students`: throughput, latency and peak memory of each student, engine and batch size.

In: a BenchStudentsConfig (students, engines, batch sizes, prompts, max_tokens). Out, in
`run_dir`: bench_students.json (every point, the environment, how each student was served) and
bench_students.png (tokens/s and p95 latency against the batch size, one line per student and
engine); a line per point is printed as it finishes.

How a point is measured. Each (student, engine) gets one Ray actor (bench_actor.StudentBench),
sized as the student is served (`plan_serving`: GPUs by parameter count on a GPU cluster, else
`num_cpus_per_actor` CPUs), which loads the model once. For each batch size it runs `warmup_batches` untimed batches,
then `n_prompts` requests in consecutive batches of that size, each batch one engine call
(HF: one `generate()` through the same HFEngine the inference actors use; vLLM: one
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
import json
import time
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

from lamini.evaluate.bench.actor import StudentBench
from lamini.evaluate.config import BenchStudentsConfig
from lamini.evaluate.inference import Serving
from lamini.reporting import new_figure, save_figure
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
    from lamini.evaluate.probes.hallucination import packaged_questions

    source = path or packaged_questions()
    out = []
    for file, n, row in jsonl_objects(source):
        value = next((row[c] for c in PROMPT_COLUMNS if isinstance(row.get(c), str) and row[c].strip()), None)
        if value is None:
            raise CorpusError(file, n, "a prompt row needs a non-empty `instruction` or `question`")
        out.append(value)
    return out, source


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


# ------------------------------------------------------------------------------ the driver


def _serving_for(base: Serving, engine: str, gpus: float, have_vllm: bool) -> tuple[Serving | None, str]:
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


def _bench_pair(
    serving: Serving, prompts: list[str], cfg: BenchStudentsConfig
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
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


def run_bench_students(cfg: BenchStudentsConfig) -> BenchSummary:
    """Every student on every engine and batch size -> BenchSummary; writes bench_students.json and .png in cfg.run_dir."""
    from lamini.evaluate.inference import cluster_facts, plan_serving
    from lamini.models.templates import wrap
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
    fig, (ax_t, ax_l) = new_figure(width=11, height=4.2, ncols=2, dpi=110)
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
    return save_figure(rd, PLOT_NAME, fig)


__all__ = ["BenchSummary", "load_prompts", "plot_bench", "run_bench_students"]
