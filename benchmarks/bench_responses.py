"""Responses-stage throughput against the local fake OpenAI server, three contenders side by side.

  (a) our pipeline end to end: `lamini.generate.responses.run_responses` on a generic JSONL
      corpus (Ray Data -> async teacher actors -> Parquet shards -> finalize), fresh run_dir
  (b) the same client with no Ray: `OpenAIEngine.agenerate` (aiohttp path) on one asyncio
      loop, with the same total in-flight and the same batches
  (c) Ray's `ray.data.llm` HTTP processor (HttpRequestProcessorConfig + build_processor) on
      the same rows, at its best point of a batch_size x concurrency grid

  (d) distilabel (TextGeneration with OpenAILLM) and (e) bespokelabs-curator (curator.LLM):
      the tools users pick instead, each in its own virtualenv made on first use
      (benchmarks/peers.py), with the same in-flight and rows as (a) and (b)

each at 0 ms and 50 ms server latency. Prints a table and writes
bench_results/bench_responses.json (and a timestamped copy). Timing targets are reported,
never asserted.

    python benchmarks/bench_responses.py            # full run (~12 min on 2 cores)
    python benchmarks/bench_responses.py --quick    # smoke run: N/10 rows, a smaller grid
    python benchmarks/bench_responses.py --rows 5000 --latencies 0,0.05
    python benchmarks/bench_responses.py --peers none                  # without (d) and (e)

The script starts its own local Ray (2 CPUs, its own temp dir) and shuts it down at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Before Ray Data is imported: its default is read at import time.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

import pyarrow as pa  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmarks.machine import machine_busy_s  # noqa: E402
from benchmarks.peers import PEERS  # noqa: E402
from lamini import SYSTEM_PROMPT  # noqa: E402
from lamini.config import (  # noqa: E402
    GenerationParams,
    OpenAITeacherConfig,
    PipelineConfig,
    ResponsesConfig,
)
from lamini.testing.fake_openai import FakeOpenAIServer  # noqa: E402

PEER_LABELS = {n: p["label"] for n, p in PEERS.items()}

RAY_TMP = "/tmp/lamini-bench-ray"
KEY_ENV = "LAMINI_BENCH_API_KEY"  # left unset: the fake server is on loopback and needs no key
GEN = GenerationParams(max_tokens=64, temperature=0.7)

# (a): tuned on 2 cores (see benchmarks/README.md). Two actors at 0.25 CPU each (the HTTP
# default), a fixed pool so no time goes to scaling up; one actor leaves a core idle (~3,500
# vs ~5,000 requests/s steady at 0 ms). Each actor runs up to 4 batches of 256 at once on its
# event loop, sharing a 256-request semaphore, so the semaphore (not the batches) bounds
# in-flight: 2 x 256 = 512 in the whole run. Blocks of 1,000 rows: 2,000-row blocks left one
# actor short of work at the end of a 10,000-row run (half the in-flight at 50 ms).
PIPELINE = dict(batch_size=256, rows_per_block=1000, min_actors=2, max_actors=2,
                max_concurrent_batches_per_actor=4)
MAX_IN_FLIGHT_PER_ACTOR = 256

# (c): the grid swept at each latency; the best point is the one reported.
GRID_BATCH = (16, 64, 256)
# Up to 10 actors: in-flight is 4 x concurrency, so (c)'s 50 ms rate grows with it (steady 256,
# 472, 526 req/s at 4, 8, 10 measured on 2 cores); 10 is the most that fits (ray_llm_cpus).
GRID_CONCURRENCY = (1, 2, 4, 8, 10)
QUICK_GRID_BATCH = (16, 256)
QUICK_GRID_CONCURRENCY = (1, 4)
RAY_LLM_CPUS_PER_ACTOR = 0.25  # as ours; the default (1 CPU) would not fit concurrency 4 on 2 CPUs
# (c)'s actors together may take 1 CPU: its pre/postprocess map tasks need the other one, and a
# pool that takes both (8 x 0.25) never gets them scheduled (measured: the run hangs).
RAY_LLM_ACTOR_CPU_BUDGET = 1.0


def ray_llm_cpus(concurrency: int) -> float:
    """CPUs each of (c)'s `concurrency` actors asks for: 0.25 as ours, less where that would not fit."""
    return min(RAY_LLM_CPUS_PER_ACTOR, RAY_LLM_ACTOR_CPU_BUDGET / concurrency)

TARGETS = {"a_over_b": 0.9, "a_over_c": 8.0, "a_rps_at_0ms": 1000.0}

# Rows per latency. The stage exists for corpora of 10^5-10^6 instructions (LaMini: 2.58M), and
# (a) pays a fixed ~2-4 s before its first request (Ray Data's plan, two actor processes
# importing ray.data on 2 cores) that (b) does not. Measured: at 10,000-20,000 rows that
# start-up alone put a/b at 0.57-0.81 with steady-state a/b at 0.84-1.11; at 100,000 rows a/b
# was 1.08 (0 ms) and 1.23 (50 ms) (benchmarks/results/bench_responses_default.json). So the
# default times the throughput a real run sees, and the table still shows each contender's fixed
# seconds; --rows times small runs.
DEFAULT_ROWS = 100_000

RAY_LLM_NOTES = [
    "ray.data.llm HttpRequestUDF (ray/llm/_internal/batch/stages/http_request_stage.py): per batch it opens a "
    "new aiohttp.ClientSession, builds one session.post(...) per row without awaiting it (an aiohttp "
    "_RequestContextManager wraps an un-started coroutine, so nothing is sent yet), then awaits them one "
    "after another: a batch has exactly ONE request in flight and takes ~batch_size x latency.",
    "Its only concurrency is Ray Data's: an actor runs one block at a time (ray.data.llm sets no "
    "max_concurrent_calls_per_actor) and overlaps up to {async_batches} batches of that block "
    "(RAY_DATA_DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY), so in-flight <= {async_batches} x concurrency, "
    "and only with blocks of >= {async_batches} batches (used here). At 0 ms latency waiting costs nothing, "
    "so this design is not slow there; it is at real latencies.",
    "A row that still fails after max_retries (429/408/502/503/504, timeouts, connection errors) raises "
    "RuntimeError in the UDF and fails the whole job; a non-JSON body raises too. Other statuses (e.g. 500, "
    "400) are not checked: their error JSON comes back as the row's http_response. Retries sleep "
    "base_retry_wait_time_in_s x 2^n inside the batch's sequential loop. Run here with max_retries=0 and no faults.",
]


# ------------------------------------------------------------------------------ inputs


def write_corpus(dirname: Path, n: int) -> Path:
    """N unique instructions as a generic JSONL corpus."""
    path = dirname / f"instructions-{n}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"instruction": f"Instruction {i}: describe item number {i} in one short sentence."}))
            f.write("\n")
    return path


def read_prompt_table(corpus: Path) -> pa.Table:
    """The corpus as our reader sees it (id, prompt): the same prompts go to (b) and (c)."""
    from lamini.config import CorpusSpec
    from lamini.corpus import RejectLog, read_corpora

    table = read_corpora([CorpusSpec(format="generic", path=str(corpus))], on_error="raise", rejects=RejectLog())
    return table.select(["id", "prompt"])


def teacher_cfg(url: str, max_in_flight: int) -> OpenAITeacherConfig:
    return OpenAITeacherConfig(model="fake-teacher", base_url=url, api_key_env=KEY_ENV, http_client="aiohttp",
                               max_in_flight=max_in_flight, max_retries=0, timeout_s=60.0)


def chat_payload(prompt: str, model: str = "fake-teacher") -> dict[str, Any]:
    """The JSON body OpenAIEngine sends for one prompt (same fields, same order)."""
    return {"model": model, "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                         {"role": "user", "content": prompt}],
            "max_tokens": GEN.max_tokens, "temperature": GEN.temperature, "top_p": GEN.top_p}


# ------------------------------------------------------------------------------ measuring


class Meter:
    """Wall time, server requests and CPU, machine CPU, over one contender's run."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server

    def __enter__(self) -> "Meter":
        self.server.reset_stats()
        self.s0 = self.server.stats()
        self.busy0 = machine_busy_s()
        self.t0 = time.monotonic()  # the server stamps arrivals with time.monotonic() too: one clock
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.monotonic() - self.t0
        busy = machine_busy_s() - self.busy0
        s1 = self.server.stats(detail=True)
        arrivals = sorted(t for ts in s1["times_by_prompt"].values() for t in ts)
        self.requests = s1["requests"]
        # Start-up (Ray Data planning, actors starting) vs. steady state: the time to the first
        # request, and the rate between the first and the last arrival.
        self.first_request_s = round(arrivals[0] - self.t0, 3) if arrivals else None
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
        self.steady_rps = round((len(arrivals) - 1) / span, 1) if span > 0 else None
        self.max_concurrent = s1["max_concurrent"]
        self.faults = sum(s1["faults"].values())
        n = max(self.requests, 1)
        self.server_cpu_ms_per_req = round((s1["cpu_s"] - self.s0["cpu_s"]) / n * 1e3, 4)
        self.machine_cpu_ms_per_req = round(busy / n * 1e3, 3)

    def fields(self) -> dict[str, Any]:
        return {"first_request_s": self.first_request_s, "steady_rps": self.steady_rps,
                "server_requests": self.requests, "server_max_concurrent": self.max_concurrent,
                "server_faults": self.faults, "server_cpu_ms_per_req": self.server_cpu_ms_per_req,
                "machine_cpu_ms_per_req": self.machine_cpu_ms_per_req}


# ------------------------------------------------------------------------------ contenders


def run_pipeline(server: FakeOpenAIServer, corpus: Path, work: Path, tag: str) -> dict[str, Any]:
    """(a) run_responses end to end on a fresh run_dir."""
    from lamini.generate.responses import run_responses

    cfg = ResponsesConfig(
        run_dir=str(work / f"run-{tag}"),
        corpora=[{"format": "generic", "path": str(corpus)}],
        teacher=teacher_cfg(server.url, MAX_IN_FLIGHT_PER_ACTOR),
        generation=GEN,
        pipeline=PipelineConfig(**PIPELINE),
    )
    with Meter(server) as m:
        summary = run_responses(cfg)
    per_actor = min(MAX_IN_FLIGHT_PER_ACTOR, PIPELINE["max_concurrent_batches_per_actor"] * PIPELINE["batch_size"])
    return {
        "rps": round(summary.sent / summary.pipeline_s, 1),  # pipeline only: no reading, no finalize
        "wall_rps": round(summary.sent / m.wall_s, 1),  # the whole call: read corpus, pipeline, finalize
        "sent": summary.sent, "ok": summary.ok, "errors": summary.errors,
        "pipeline_s": summary.pipeline_s, "wall_s": round(m.wall_s, 3),
        "in_flight": PIPELINE["max_actors"] * per_actor,
        **m.fields(),
    }


async def _bare_loop(url: str, prompts: list[str], in_flight: int, batch_size: int, workers: int) -> tuple[int, float]:
    from lamini.engines.base import build_request
    from lamini.engines.openai_http import OpenAIEngine

    teacher = OpenAIEngine(teacher_cfg(url, in_flight))
    batches = iter([prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)])
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for batch in batches:  # one shared iterator: each worker takes the next batch
            results = await teacher.agenerate([build_request(p, SYSTEM_PROMPT, GEN) for p in batch])
            ok += sum(r.ok for r in results)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(workers)))
    cpu = time.process_time() - cpu0
    await teacher.aclose()
    return ok, cpu


def run_bare(server: FakeOpenAIServer, prompts: list[str]) -> dict[str, Any]:
    """(b) OpenAIEngine.agenerate on one asyncio loop, same total in-flight and batches as (a), no Ray."""
    in_flight = PIPELINE["max_actors"] * MAX_IN_FLIGHT_PER_ACTOR
    workers = PIPELINE["max_actors"] * PIPELINE["max_concurrent_batches_per_actor"]
    with Meter(server) as m:
        ok, cpu = asyncio.run(_bare_loop(server.url, prompts, in_flight, PIPELINE["batch_size"], workers))
    return {"rps": round(len(prompts) / m.wall_s, 1), "sent": len(prompts), "ok": ok, "wall_s": round(m.wall_s, 3),
            "in_flight": in_flight, "client_cpu_ms_per_req": round(cpu / len(prompts) * 1e3, 4), **m.fields()}


def run_peer_contender(server: FakeOpenAIServer, name: str, table: pa.Table, work: Path) -> dict[str, Any]:
    """(d)/(e): a peer over the same prompts, same in-flight as (a), in its own virtualenv."""
    from benchmarks.peers import run_peer

    prompts = work / f"peer-prompts-{table.num_rows}.jsonl"
    if not prompts.exists():
        with prompts.open("w", encoding="utf-8") as f:
            for row in table.to_pylist():
                f.write(json.dumps({"id": row["id"], "prompt": row["prompt"]}) + "\n")
    in_flight = PIPELINE["max_actors"] * MAX_IN_FLIGHT_PER_ACTOR
    with Meter(server) as m:
        r = run_peer(name, server.url, prompts, SYSTEM_PROMPT, in_flight, GEN.max_tokens, GEN.temperature)
    return {"rps": round(r["ok"] / r["run_s"], 1), "sent": r["rows"], "ok": r["ok"], "written": r["written"],
            "wall_s": r["run_s"], "process_wall_s": r["process_wall_s"], "in_flight": r["in_flight"],
            "settings": r.get("settings", {}), **m.fields()}


def _ray_llm_async_batches() -> int:
    from ray.data._internal.planner.plan_udf_map_op import (
        DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY,
    )

    return DEFAULT_ASYNC_BATCH_UDF_MAX_CONCURRENCY


def run_ray_llm_point(server: FakeOpenAIServer, table: pa.Table, work: Path, tag: str, batch_size: int,
                      concurrency: int) -> dict[str, Any]:
    """(c) one grid point: ray.data.llm's HTTP processor, Arrow blocks in -> Parquet out."""
    import pyarrow.parquet as pq
    import ray
    from ray.data.llm import HttpRequestProcessorConfig, build_processor

    config = HttpRequestProcessorConfig(
        url=server.url + "/chat/completions", batch_size=batch_size,
        concurrency=(concurrency, concurrency),  # a fixed pool, as (a)'s; an int autoscales from 1
        max_retries=0, qps=None, http_request_stage={"num_cpus": ray_llm_cpus(concurrency)},
    )
    processor = build_processor(
        config,
        preprocess=lambda row: {"payload": chat_payload(row["prompt"])},
        postprocess=lambda row: {"id": row["id"], "prompt": row["prompt"],
                                 "response": row["http_response"]["choices"][0]["message"]["content"]},
    )
    # An actor runs one task (one block) at a time and overlaps up to `async_batches` batches
    # of that block; so blocks of async_batches x batch_size rows give (c) all the in-flight
    # it can have (blocks of batch_size rows measured 4x slower at 50 ms).
    block = _ray_llm_async_batches() * batch_size
    blocks = [table.slice(i, block) for i in range(0, table.num_rows, block)]
    out = work / f"ray-llm-{tag}-b{batch_size}-c{concurrency}"
    with Meter(server) as m:
        processor(ray.data.from_arrow(blocks)).write_parquet(str(out))
    written = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet"))
    return {"batch_size": batch_size, "concurrency": concurrency, "rps": round(table.num_rows / m.wall_s, 1),
            "sent": table.num_rows, "written": written, "wall_s": round(m.wall_s, 3),
            "in_flight": _ray_llm_async_batches() * concurrency, **m.fields()}


def run_ray_llm(server: FakeOpenAIServer, table: pa.Table, grid_rows: int, work: Path, tag: str,
                grid_b, grid_c, latency_s: float) -> dict[str, Any]:
    """(c) the grid on the first grid_rows rows, then its best point again on the whole table.

    The grid runs on fewer rows to keep the sweep short, so start-up weighs more there: the
    best point is the one with the highest steady rate (first to last request), which is
    what a long run gets. The reported (c) is the re-run on the same rows as (a) and (b).
    """
    tried = []
    for b in grid_b:
        for c in grid_c:
            point = run_ray_llm_point(server, table.slice(0, grid_rows), work, tag, b, c)
            # At 0 ms the server answers inside the read callback: it never sees 2 at once.
            seen = f", max {point['server_max_concurrent']} in flight" if latency_s > 0 else ""
            print(f"    (c) batch {b:>3} x concurrency {c}: {point['rps']:7.1f} req/s, steady "
                  f"{point['steady_rps'] or 0:7.1f}, on {grid_rows} rows{seen}", flush=True)
            tried.append(point)
    best = max(tried, key=lambda p: (p["steady_rps"] or 0.0, p["rps"]))
    print(f"    (c) best point again on {table.num_rows} rows ...", flush=True)
    final = run_ray_llm_point(server, table, work, tag + "-final", best["batch_size"], best["concurrency"])
    return {**final, "grid_rows": grid_rows, "grid": tried}


def warm_up_ray() -> None:
    """A small Ray Data job with tasks and async actors before any contender is timed.

    The first job after ray.init pays extra (worker processes start and import ray.data);
    without this, whichever contender ran first paid it (1-2 s more start-up, measured for (a)).
    """
    import ray
    from ray.data import ActorPoolStrategy

    class _Echo:
        async def __call__(self, batch):
            yield batch

    blocks = [pa.table({"x": list(range(64))}) for _ in range(4)]
    ds = ray.data.from_arrow(blocks).map_batches(lambda b: b, batch_format="pyarrow")
    ds.map_batches(_Echo, batch_format="pyarrow", compute=ActorPoolStrategy(size=2), num_cpus=0.25).materialize()


# ------------------------------------------------------------------------------ one latency


def _share(rps: float, in_flight: int, latency_s: float) -> float | None:
    """Fraction of the Little's-law bound in_flight / latency; None at 0 latency (no bound)."""
    return None if latency_s <= 0 else round(rps / (in_flight / latency_s), 3)


def bench_latency(server: FakeOpenAIServer, latency_s: float, rows: int, c_rows: int, work: Path,
                  grid_b, grid_c, peers: list[str]) -> dict[str, Any]:
    tag = f"{int(round(latency_s * 1000))}ms"
    server.configure(latency_s=latency_s, fault_rate=0.0)
    corpus = write_corpus(work, rows)
    table = read_prompt_table(corpus)
    prompts = table.column("prompt").to_pylist()

    print(f"  (a) pipeline on {rows} rows ...", flush=True)
    a = run_pipeline(server, corpus, work, tag)
    print(f"  (b) bare asyncio loop on {rows} rows ...", flush=True)
    b = run_bare(server, prompts)
    print(f"  (c) ray.data.llm grid on {c_rows} rows ...", flush=True)
    c = run_ray_llm(server, table, c_rows, work, tag, grid_b, grid_c, latency_s)
    peer = {}
    for name in peers:
        print(f"  {PEER_LABELS[name]} on {rows} rows ...", flush=True)
        peer[name] = run_peer_contender(server, name, table, work)

    for r in (a, b, c, *peer.values()):
        r["littles_law_bound_rps"] = None if latency_s <= 0 else round(r["in_flight"] / latency_s, 1)
        r["share_of_bound"] = _share(r["rps"], r["in_flight"], latency_s)
        # Seconds of the measured time not spent sending at the steady rate: start-up and tail.
        timed = r.get("pipeline_s", r["wall_s"])
        r["fixed_s"] = round(timed - (r["sent"] - 1) / r["steady_rps"], 2) if r["steady_rps"] else None
    ratios = {"a_over_b": round(a["rps"] / b["rps"], 3), "a_over_c": round(a["rps"] / c["rps"], 2),
              # diagnostic only: the same ratio between first and last request (start-up left out)
              "a_over_b_steady": round(a["steady_rps"] / b["steady_rps"], 3)
              if a["steady_rps"] and b["steady_rps"] else None}
    for name, r in peer.items():
        ratios[f"a_over_{name}"] = round(a["rps"] / r["rps"], 2)
    return {"latency_s": latency_s, "rows": rows, "c_rows": c_rows, "a": a, "b": b, "c": c, "peers": peer,
            "ratios": ratios}


# ------------------------------------------------------------------------------ report


def targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for r in results:
        tag = f"{int(round(r['latency_s'] * 1000))}ms"
        out[f"a_over_b>={TARGETS['a_over_b']} @{tag}"] = r["ratios"]["a_over_b"] >= TARGETS["a_over_b"]
        out[f"a_over_c>={TARGETS['a_over_c']:g} @{tag}"] = r["ratios"]["a_over_c"] >= TARGETS["a_over_c"]
        if r["latency_s"] == 0:
            out[f"a>={TARGETS['a_rps_at_0ms']:g} req/s @0ms"] = r["a"]["rps"] >= TARGETS["a_rps_at_0ms"]
    return out


def print_table(results: list[dict[str, Any]], met: dict[str, bool]) -> None:
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    print()
    print("req/s   (a): sent / pipeline_s (Ray Data plan to Parquet; no ray.init, corpus reading or finalize);")
    print("        (b), (c): rows / wall time of the run. The ratios use these.")
    print("steady  rate between the first and the last request the server saw (start-up left out);")
    print("fixed   seconds of the timed run not spent at the steady rate (start-up, tail).")
    print("share   req/s / (in-flight / latency), the Little's-law bound; '-' at 0 ms.")
    print("srv     fake-server CPU ms per request; mach: whole-machine CPU ms per request (other load included).")
    print()
    head = (f"{'latency':>7}  {'contender':<27} {'rows':>6} {'req/s':>7} {'steady':>7} {'fixed':>6} "
            f"{'in-flight':>9} {'share':>6} {'srv':>6} {'mach':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        lat = f"{r['latency_s'] * 1000:.0f} ms"
        a, b, c = r["a"], r["b"], r["c"]
        peers = [(PEER_LABELS[n], x) for n, x in r.get("peers", {}).items()]
        for name, x in (("(a) pipeline", a), ("(b) bare asyncio, no Ray", b),
                        (f"(c) ray.data.llm b{c['batch_size']} x c{c['concurrency']}", c), *peers):
            print(f"{lat:>7}  {name:<27} {x['sent']:>6} {x['rps']:>7.0f} {fmt(x['steady_rps'], '7.0f'):>7} "
                  f"{fmt(x['fixed_s'], '6.2f'):>6} {x['in_flight']:>9} {fmt(x['share_of_bound'], '.3f'):>6} "
                  f"{x['server_cpu_ms_per_req']:>6.3f} {x['machine_cpu_ms_per_req']:>6.3f}")
        q = r["ratios"]
        print(f"{lat:>7}  (a) wall incl. reading + finalize: {a['wall_rps']:.0f} req/s")
        print(f"{lat:>7}  a/b = {q['a_over_b']:.2f}   a/c = {q['a_over_c']:.1f}   "
              f"(steady a/b = {fmt(q['a_over_b_steady'], '.2f')}, diagnostic)"
              + "".join(f"   a/{n} = {q[f'a_over_{n}']:.2f}" for n in r.get("peers", {})))
        grid = ", ".join(f"b{p['batch_size']}xc{p['concurrency']}={p['rps']:.0f} ({fmt(p['steady_rps'], '.0f')})"
                         for p in c["grid"])
        print(f"{lat:>7}  (c) grid on {c['grid_rows']} rows, req/s (steady): {grid}")
        print()
    print("targets: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in met.items()))


def save(report: dict[str, Any]) -> Path:
    out_dir = ROOT / "bench_results"
    out_dir.mkdir(exist_ok=True)
    text = json.dumps(report, indent=2)
    path = out_dir / "bench_responses.json"
    path.write_text(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    (out_dir / f"bench_responses-{stamp}.json").write_text(text)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run: a tenth of the rows, a 2x2 grid for (c)")
    p.add_argument("--rows", type=int, default=None,
                   help=f"rows for (a), (b) and (c)'s final run at every latency (default {DEFAULT_ROWS:,})")
    p.add_argument("--latencies", default="0,0.05", help="server latencies in seconds, comma-separated")
    p.add_argument("--c-rows", type=int, default=None,
                   help="rows per (c) grid point (default: 3,000 at 0 ms, 640 otherwise: (c) runs once per grid point)")
    p.add_argument("--peers", default="distilabel,curator",
                   help="peers to run beside ours, comma-separated, or 'none' (each installs into its own "
                        "virtualenv under .cache/bench_envs on first use)")
    args = p.parse_args(argv)
    peers = [] if args.peers == "none" else [x for x in args.peers.split(",") if x]
    latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    scale = 10 if args.quick else 1
    grid_b, grid_c = (QUICK_GRID_BATCH, QUICK_GRID_CONCURRENCY) if args.quick else (GRID_BATCH, GRID_CONCURRENCY)

    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    os.environ.pop(KEY_ENV, None)
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=RAY_TMP, logging_level=logging.WARNING)
    print(f"(a) pipeline {PIPELINE}, teacher.max_in_flight {MAX_IN_FLIGHT_PER_ACTOR}/actor, 0.25 CPU/actor, aiohttp")
    print(f"(b) one asyncio loop, {PIPELINE['max_actors'] * MAX_IN_FLIGHT_PER_ACTOR} in flight, batches of "
          f"{PIPELINE['batch_size']}, {PIPELINE['max_actors'] * PIPELINE['max_concurrent_batches_per_actor']} at once")
    print(f"(c) ray.data.llm grid batch_size {list(grid_b)} x concurrency {list(grid_c)}, fixed pools, "
          f"min({RAY_LLM_CPUS_PER_ACTOR}, {RAY_LLM_ACTOR_CPU_BUDGET:g}/concurrency) CPU/actor, max_retries 0", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lamini-bench-"))
    results = []
    try:
        warm_up_ray()
        with FakeOpenAIServer() as server:
            for lat in latencies:
                rows = (args.rows or DEFAULT_ROWS) // scale
                c_rows = min(rows, (args.c_rows or (3_000 if lat == 0 else 640)) // scale)
                print(f"latency {lat * 1000:.0f} ms:", flush=True)
                results.append(bench_latency(server, lat, rows, c_rows, work, grid_b, grid_c, peers))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()

    met = targets(results)
    print_table(results, met)
    notes = [n.format(async_batches=_ray_llm_async_batches()) for n in RAY_LLM_NOTES]
    print()
    for n in notes:
        print("note:", n)
    report = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__,
                    "platform": platform.platform()},
        "quick": args.quick,
        "settings": {
            "a": {"pipeline": PIPELINE, "teacher_max_in_flight_per_actor": MAX_IN_FLIGHT_PER_ACTOR,
                  "num_cpus_per_actor": 0.25, "http_client": "aiohttp", "max_tokens": GEN.max_tokens},
            "b": {"in_flight": PIPELINE["max_actors"] * MAX_IN_FLIGHT_PER_ACTOR,
                  "batch_size": PIPELINE["batch_size"],
                  "concurrent_batches": PIPELINE["max_actors"] * PIPELINE["max_concurrent_batches_per_actor"]},
            "c": {"grid_batch_size": list(grid_b), "grid_concurrency": list(grid_c), "max_retries": 0,
                  "num_cpus_per_actor": f"min({RAY_LLM_CPUS_PER_ACTOR}, {RAY_LLM_ACTOR_CPU_BUDGET:g} / concurrency)", "pool": "fixed (concurrency, concurrency)",
                  "rows_per_block": f"{_ray_llm_async_batches()} x batch_size",
                  "async_batches_per_actor": _ray_llm_async_batches(),
                  "best_by": "steady_rps on the grid rows, then re-run on the same rows as (a) and (b)"},
            "peers": {n: {"requirements": PEERS[n]["requirements"], "in_flight": PIPELINE["max_actors"] * MAX_IN_FLIGHT_PER_ACTOR}
                      for n in peers},
        },
        "rate_definitions": {
            "a.rps": "summary.sent / summary.pipeline_s: Ray Data plan to Parquet shards; excludes ray.init, "
                     "corpus reading and finalize (used for the ratios)",
            "a.wall_rps": "summary.sent / wall time of run_responses (reading, pipeline, finalize; Ray already up)",
            "b.rps": "rows / wall time of the asyncio run",
            "c.rps": "rows / wall time from building the dataset to the Parquet files written",
            "peers.rps": "answered rows / the peer's own run time (pipeline built to last response; no "
                         "interpreter start-up or imports, as a.rps has no ray.init)",
            "steady_rps": "(requests - 1) / (last - first arrival at the server): the rate once running",
            "fixed_s": "timed seconds not spent at steady_rps: start-up (actors, planning) and tail",
            "share_of_bound": "rps / (in_flight / latency_s), Little's law; null at 0 latency",
        },
        "results": results,
        "targets": {"wanted": TARGETS, "met": met},
        "notes": notes,
    }
    print(f"\nsaved {save(report)}")


if __name__ == "__main__":
    main()
