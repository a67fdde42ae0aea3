"""Student inference: our batch-inference actors against one-at-a-time `generate`, same prompts, one run.

  (a) ours: `lamini.evaluate.inference.generate_for_students` (Ray Data, one HF actor pool of one
      actor with `num_cpus_per_actor = --threads`, batched generate in chunks of --batch-size, a
      Parquet file written), timed from the call to its return: Ray Data's plan, the actor's
      process start and imports, the model load, generation and the write are all in it.
      (a0) the same call on 1 prompt and 1 token (a fresh run folder) measures that fixed cost, and
      (a)'s time inside generate() (the latency batched_generate stamps on each call's rows) is its
      rate once the actor is up.
  (a') the same batched generate without Ray: `lamini.engines.hf_local.HFEngine.generate` in
      this process (the code the actor runs), timed after the model is loaded.
  (b) baseline: a plain loop in this process: `load_for_generation` (the same model, tokenizer
      and wrapper), then `model.generate` one prompt at a time. Timed loop only, and with the load.

Same prompts (self-instruct seed instructions, Alpaca-wrapped for decoder students), same
max_tokens, greedy, EOS ignored on every side (HF min_new_tokens, vLLM ignore_eos), so every
contender writes prompts x max_tokens tokens (checked and printed). CPU: this process and the
actor both run torch with --threads threads (the actor's count is read back from a probe actor
with the same CPUs). Baselines run before Ray starts, so no Ray process shares the cores with them.

    python benchmarks/bench_inference.py                  # CPU: tiny model + SmolLM2, 64 prompts x 64 tokens
    python benchmarks/bench_inference.py --quick          # smoke run: 16 prompts x 16 tokens
    python benchmarks/bench_inference.py --device gpu     # needs a CUDA GPU (and vllm for (c))

GPU mode adds (c) vLLM in this process (`vllm.LLM.generate` of all prompts at once, continuous
batching) against (a'), HF batched generate, both timed after their load and one warm-up call.

Prints a table and writes benchmarks/results/bench_inference_<device>.json. Targets are
reported, never asserted: (a) >= 4x (b) on CPU; on a GPU, (c) >= 2x (a').
The script starts its own local Ray (temp dir /tmp/lamini-bench-inference) and shuts it down.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

sys.path.insert(0, str(ROOT))  # run from a checkout without installing
from benchmarks.machine import offline_env

offline_env(ROOT)  # before anything imports transformers, torch or Ray

import argparse  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from itertools import cycle, islice  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.machine import LoadMonitor, background_load, machine_info  # noqa: E402

SEED_TASKS = ROOT.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
RAY_TMP = "/tmp/lamini-bench-inference"  # short: Ray's unix sockets live under it
MODELS_DIR = ROOT / ".cache" / "bench_inference"
TARGETS = {"cpu_ours_over_one_at_a_time": 4.0, "gpu_vllm_over_hf_batched": 2.0}
OTHER_LOAD_WARN = 0.15  # cores busy outside the benchmark above which a contender's numbers are flagged

CPU_DEFAULTS = dict(models="tiny,smollm2", prompts=64, max_tokens=64, batch_size="16,32", threads=2)
GPU_DEFAULTS = dict(models="smollm2", prompts=128, max_tokens=128, batch_size="32,128", threads=8)

MONITOR: LoadMonitor | None = None


def _load(t0: float, t1: float) -> dict[str, float | None]:
    return MONITOR.span(t0, t1) if MONITOR else {}


# ------------------------------------------------------------------------------ inputs


def instructions(n: int) -> tuple[list[str], str]:
    """n request texts: the self-instruct seed instructions (cycled), else the packaged questions."""
    from lamini.evaluate.bench.run import load_prompts

    if SEED_TASKS.exists():
        texts, source = load_prompts(str(SEED_TASKS))
    else:
        texts, source = load_prompts(None)
    return list(islice(cycle(texts), n)), source


def student_base(name: str, device: str) -> str:
    """--models entry -> StudentSpec.base: `tiny` (built here), `smollm2` (the embedded GGUF; on a GPU
    saved once as a plain HF folder, which vLLM can load), or a folder / hub id as given."""
    if name == "tiny":
        from lamini.testing.tiny_models import build_tiny_causal_lm

        return str(build_tiny_causal_lm(MODELS_DIR / "tiny"))
    if name == "smollm2":
        return "embedded" if device == "cpu" else str(smollm2_folder())
    return name


def smollm2_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct, dequantised once and saved as safetensors (bf16-loadable by vLLM)."""
    out = MODELS_DIR / "smollm2-hf"
    if (out / ".built").exists():
        return out
    from lamini.evaluate.config import StudentSpec
    from lamini.models.loading import load_student, load_tokenizer

    spec = StudentSpec(name="smollm2", base="embedded")
    load_student(spec, "decoder").save_pretrained(out)
    load_tokenizer(spec).save_pretrained(out)
    (out / ".built").write_text("ok\n")
    return out


# ------------------------------------------------------------------------------ contenders


def baseline_loop(serving: Any, prompts: list[str], max_tokens: int, device: str) -> dict[str, Any]:
    """(b): load_for_generation, then model.generate one prompt at a time, greedy, EOS ignored."""
    import torch

    from lamini.models.loading import load_for_generation

    m0 = time.monotonic()
    t0 = time.perf_counter()
    model, tok = load_for_generation(serving)
    load_s = time.perf_counter() - t0
    texts, tokens = [], 0
    t1, m1 = time.perf_counter(), time.monotonic()
    for p in prompts:
        enc = tok(p, return_tensors="pt", truncation=True, max_length=serving.student.max_input_tokens).to(model.device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                                 temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id)
        new = out[0, 1:] if model.config.is_encoder_decoder else out[0, enc["input_ids"].shape[1]:]
        tokens += len(new)
        texts.append(tok.decode(new, skip_special_tokens=True))
    if device == "cuda":
        torch.cuda.synchronize()
    loop_s = time.perf_counter() - t1
    del model
    _free(device)
    return {"tokens": tokens, "load_s": round(load_s, 3), "loop_s": round(loop_s, 3),
            "tokens_per_s": round(tokens / loop_s, 2), "tokens_per_s_with_load": round(tokens / (loop_s + load_s), 2),
            "load": _load(m1, time.monotonic()), "load_with_model_load": _load(m0, time.monotonic()), "texts": texts}


def batched_in_process(serving: Any, prompts: list[str], max_tokens: int, device: str) -> dict[str, Any]:
    """(a'): HFEngine.generate in this process (sorted by length, chunks of batch_size), after the load."""
    import torch

    from lamini.config import GenerationParams
    from lamini.engines.base import text_request
    from lamini.engines.hf_local import HFEngine

    t0 = time.perf_counter()
    engine = HFEngine.for_student(serving)
    gen = GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=0)
    requests = [text_request(p, gen, min_tokens=max_tokens) for p in prompts]
    load_s = time.perf_counter() - t0
    if device == "cuda":  # one warm-up call: CUDA kernels and the allocator, as vLLM gets below
        engine.generate(requests[: serving.student.batch_size])
    t1, m1 = time.perf_counter(), time.monotonic()
    results = engine.generate(requests)
    if device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t1
    tokens = sum(r.completion_tokens for r in results)
    del engine
    _free(device)
    return {"tokens": tokens, "errors": sum(bool(r.error) for r in results), "load_s": round(load_s, 3),
            "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2), "load": _load(m1, time.monotonic()),
            "texts": [r.text for r in results]}


def ours_actors(student: Any, texts: list[str], max_tokens: int, work: Path, tag: str) -> dict[str, Any]:
    """(a) or (a0): generate_for_students end to end, timed from the call to its return."""
    import pyarrow as pa

    from lamini.config import GenerationParams, RayInitConfig
    from lamini.evaluate.inference import generate_for_students
    from lamini.runs.rundir import RunDir

    rows = pa.table({"id": [f"p{i}" for i in range(len(texts))], "instruction": texts})
    gen = GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=0)
    run = RunDir(str(work / tag))
    t0, m0 = time.perf_counter(), time.monotonic()
    res = generate_for_students([student], rows, gen, run, "answers", RayInitConfig(), min_tokens=max_tokens)
    wall = time.perf_counter() - t0
    table = res[student.name].table
    tokens = sum(table.column("completion_tokens").to_pylist())
    # batched_generate stamps every row of one generate() call with that call's wall time, so the
    # distinct values add up to the actor's time in generate (tokenise, generate, decode).
    generate_s = sum(set(table.column("latency_s").to_pylist()))
    return {"tokens": tokens, "errors": res[student.name].errors, "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2), "generate_s": round(generate_s, 3),
            "generate_tokens_per_s": round(tokens / generate_s, 2), "load": _load(m0, time.monotonic()),
            "texts": table.column("response").to_pylist()}


def vllm_in_process(folder: str, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """(c), GPU only: vllm.LLM.generate of all prompts at once, ignore_eos, after the load and a warm-up."""
    import vllm

    t0 = time.perf_counter()
    llm = vllm.LLM(model=folder, dtype="bfloat16", seed=0, gpu_memory_utilization=0.6)
    load_s = time.perf_counter() - t0
    sp = vllm.SamplingParams(max_tokens=max_tokens, temperature=0.0, seed=0, ignore_eos=True)
    llm.generate(prompts[:8], sp, use_tqdm=False)
    t1, m1 = time.perf_counter(), time.monotonic()
    outs = llm.generate(prompts, sp, use_tqdm=False)
    wall = time.perf_counter() - t1
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    del llm
    _free("cuda")
    return {"tokens": tokens, "load_s": round(load_s, 3), "wall_s": round(wall, 3),
            "tokens_per_s": round(tokens / wall, 2), "load": _load(m1, time.monotonic()), "vllm": vllm.__version__,
            "texts": [o.outputs[0].text for o in outs]}


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def same_share(a: list[str | None], b: list[str | None]) -> float:
    """Share of prompts whose greedy texts are identical (padding in a batch can flip a near-tie)."""
    return round(sum(x == y for x, y in zip(a, b, strict=True)) / max(1, len(a)), 3)


# ------------------------------------------------------------------------------ Ray


def start_ray(args: argparse.Namespace) -> dict[str, Any]:
    """A local Ray of our own, one small Ray Data job (so no contender pays Ray's first job), and the
    torch thread count of an actor given --threads CPUs (as the inference actor is)."""
    import ray

    os.makedirs(RAY_TMP, exist_ok=True)
    ray.init(num_cpus=args.ray_cpus, num_gpus=1 if args.device == "gpu" else 0, include_dashboard=False,
             _temp_dir=RAY_TMP, configure_logging=False, log_to_driver=False)
    ray.data.range(64, override_num_blocks=4).map_batches(lambda b: b, batch_size=16).materialize()

    @ray.remote(num_cpus=args.threads)
    class Probe:
        def threads(self) -> dict[str, Any]:
            import torch

            return {"torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}

    probe = Probe.remote()
    out = ray.get(probe.threads.remote())
    ray.kill(probe)
    return out


# ------------------------------------------------------------------------------ one model


def bench_model(args: argparse.Namespace, name: str, texts: list[str], work: Path, phase: str,
                entry: dict[str, Any]) -> None:
    """Fill `entry` for one model: phase "local" runs (b), then (a') per batch size [and (c)];
    phase "ray" runs (a0), then (a) per batch size. Keys: baseline, vllm, ours_fixed, and
    batched_in_process@<bs>, ours@<bs>."""
    from lamini.evaluate.config import StudentSpec
    from lamini.evaluate.inference import plan_serving
    from lamini.models.templates import wrap

    device = "cuda" if args.device == "gpu" else "cpu"

    def student(bs: int) -> Any:
        return StudentSpec(name=f"{name.replace('/', '_')}-bs{bs}", base=student_base(name, args.device), engine="hf",
                           batch_size=bs, num_cpus_per_actor=args.threads,
                           num_gpus_per_actor=1.0 if device == "cuda" else None)

    def serving(bs: int) -> Any:
        return plan_serving(student(bs), 1.0 if device == "cuda" else 0.0, False)

    first = serving(args.batch_sizes[0])
    prompts = [wrap(t, first.wrapper) for t in texts]
    entry.setdefault("serving", {k: v for k, v in first.describe().items() if k != "name"})
    entry["expected_tokens"] = len(prompts) * args.max_tokens

    def run(label: str, fn, *a) -> None:
        print(f"  {name}: {label} ...", flush=True)
        try:
            r = fn(*a)
        except Exception as e:  # noqa: BLE001 - one contender failing must not lose the others
            import traceback

            traceback.print_exc()
            entry[label] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            return
        entry[label] = r
        print(f"  {name}: {label}: {r['tokens']} tokens, {r['tokens_per_s']:,.1f} tok/s", flush=True)

    if phase == "local":
        run("baseline", baseline_loop, first, prompts, args.max_tokens, device)
        for bs in args.batch_sizes:
            run(f"batched_in_process@{bs}", batched_in_process, serving(bs), prompts, args.max_tokens, device)
        if args.device == "gpu":
            if first.family != "decoder" or first.model_type == "gpt_neo":
                entry["vllm"] = {"error": f"vLLM does not serve {first.model_type}"}
            else:
                try:
                    import vllm  # noqa: F401
                except ImportError:
                    entry["vllm"] = {"error": "vllm is not installed (pip install 'lamini-lm[gpu]')"}
                else:
                    run("vllm", vllm_in_process, first.source, prompts, args.max_tokens)
        return
    # Ray phase. (a0): the fixed cost of a call, on 1 prompt and 1 token, in its own run folder.
    s0 = student(args.batch_sizes[0])
    run("ours_fixed", ours_actors, s0, texts[:1], 1, work, f"{s0.name}-fixed")
    for bs in args.batch_sizes:
        run(f"ours@{bs}", ours_actors, student(bs), texts, args.max_tokens, work, student(bs).name)


def ratios(entry: dict[str, Any], batch_sizes: list[int]) -> dict[str, dict[str, Any]]:
    """{batch size: the ratios the table prints} from one model's contenders (missing ones left out)."""

    def ok(k: str) -> dict[str, Any] | None:
        r = entry.get(k)
        return r if r and "error" not in r else None

    b, a0, c = ok("baseline"), ok("ours_fixed"), ok("vllm")
    out: dict[str, dict[str, Any]] = {}
    for bs in batch_sizes:
        a, ap, q = ok(f"ours@{bs}"), ok(f"batched_in_process@{bs}"), {}
        if a and b:
            # Headline: both from nothing loaded to answers in hand (ours also pays Ray Data and a process start).
            q["ours_over_baseline"] = round(a["tokens_per_s"] / b["tokens_per_s_with_load"], 2)
            q["ours_over_baseline_loop"] = round(a["tokens_per_s"] / b["tokens_per_s"], 2)
            q["ours_in_generate_over_baseline_loop"] = round(a["generate_tokens_per_s"] / b["tokens_per_s"], 2)
            if a0:  # how much of (a)'s wall time is the fixed cost of a call
                q["ours_fixed_share"] = round(min(1.0, a0["wall_s"] / a["wall_s"]), 2)
            q["same_text_ours_vs_baseline"] = same_share(a["texts"], b["texts"])
        if ap and b:
            q["batched_in_process_over_baseline_loop"] = round(ap["tokens_per_s"] / b["tokens_per_s"], 2)
        if c and ap:
            q["vllm_over_hf_batched"] = round(c["tokens_per_s"] / ap["tokens_per_s"], 2)
        out[str(bs)] = q
    return out


# ------------------------------------------------------------------------------ report


def print_table(report: dict[str, Any]) -> None:
    s = report["settings"]
    print()
    print(f"{s['prompts']} prompts x {s['max_tokens']} tokens (EOS ignored), greedy, batch sizes {s['batch_sizes']}, "
          f"{s['threads']} torch threads in this process and in the actor (probe: {report['actor_threads']})")
    head = f"{'model':<18} {'contender':<44} {'tokens':>7} {'seconds':>8} {'tok/s':>9} {'other':>6}"
    print(head)
    print("-" * len(head))
    for m in report["results"]:
        name = f"{m['model']} {m['serving']['params'] / 1e6:.1f}M"
        rows = [
            ("(b) one-at-a-time, loop only", m.get("baseline"), "loop_s"),
            ("(b) one-at-a-time, with model load", m.get("baseline"), "with_load"),
            ("(a0) ours, 1 prompt x 1 token (fixed cost)", m.get("ours_fixed"), "wall_s"),
        ]
        for bs in s["batch_sizes"]:
            rows += [
                (f"(a') batch {bs}: batched generate, no Ray", m.get(f"batched_in_process@{bs}"), "wall_s"),
                (f"(a) batch {bs}: ours, Ray actors, end to end", m.get(f"ours@{bs}"), "wall_s"),
                (f"(a) batch {bs}: ours, inside generate() only", m.get(f"ours@{bs}"), "generate_s"),
            ]
        rows.append(("(c) vLLM in process", m.get("vllm"), "wall_s"))
        for label, r, key in rows:
            if r is None:
                continue
            if "error" in r:
                print(f"{name:<18} {label:<44} failed: {r['error'][:80]}")
                continue
            secs = r["loop_s"] + r["load_s"] if key == "with_load" else r[key]
            rate = {"with_load": r.get("tokens_per_s_with_load"), "generate_s": r.get("generate_tokens_per_s")}.get(
                key, r["tokens_per_s"])
            other = (r.get("load_with_model_load") if key == "with_load" else r.get("load")) or {}
            oc = other.get("other_cores")
            print(f"{name:<18} {label:<44} {r['tokens']:>7} {secs:>8.2f} {rate:>9,.1f} "
                  f"{'' if oc is None else f'{oc:.2f}':>6}")
        print(f"{'':<18} expected tokens {m['expected_tokens']} per contender")
        for bs, q in m["ratios"].items():
            print(f"{'':<18} batch {bs}: " + "; ".join(f"{k} {v}" for k, v in q.items()))
    print()
    print("other: cores busy outside this benchmark's processes during the contender (from /proc); "
          f"above {OTHER_LOAD_WARN} the numbers are not clean")
    print("targets: " + "; ".join(f"{k}: {v}" for k, v in report["targets"]["met"].items()))


def targets(results: list[dict[str, Any]], gpu: bool) -> dict[str, str]:
    """Each target at each model's best batch size, as a readable verdict."""
    met = {}
    for m in results:
        qs = [(bs, q) for bs, q in m["ratios"].items()]
        have = [(bs, q) for bs, q in qs if "ours_over_baseline" in q]
        if have:
            want = TARGETS["cpu_ours_over_one_at_a_time"]
            bs, q = max(have, key=lambda x: x[1]["ours_over_baseline"])
            met[f"{m['model']} (a)/(b) >= {want}"] = (
                f"{'met' if q['ours_over_baseline'] >= want else 'NOT met'} ({q['ours_over_baseline']} at batch {bs}; "
                f"inside generate {q.get('ours_in_generate_over_baseline_loop')}, "
                f"no Ray {q.get('batched_in_process_over_baseline_loop')})")
        have = [(bs, q) for bs, q in qs if "vllm_over_hf_batched" in q]
        if gpu and have:
            want = TARGETS["gpu_vllm_over_hf_batched"]
            bs, q = min(have, key=lambda x: x[1]["vllm_over_hf_batched"])  # against HF's best batch size
            v = q["vllm_over_hf_batched"]
            met[f"{m['model']} (c)/(a') >= {want}"] = f"{'met' if v >= want else 'NOT met'} ({v}, HF at batch {bs})"
    return met


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="gpu: CUDA, bf16, and (c) vLLM")
    p.add_argument("--models", help="comma-separated: tiny, smollm2, or HF folders / hub ids "
                                    f"(default cpu: {CPU_DEFAULTS['models']}; gpu: {GPU_DEFAULTS['models']})")
    p.add_argument("--prompts", type=int, help="requests per contender (default cpu 64, gpu 128)")
    p.add_argument("--max-tokens", type=int, help="tokens per request, EOS ignored (default cpu 64, gpu 128)")
    p.add_argument("--batch-size", help="comma-separated: prompts per generate() of (a) and (a'), each against the one "
                                        "baseline (default cpu 16,32; gpu 32,128)")
    p.add_argument("--threads", type=int, help="torch threads here = the actor's num_cpus_per_actor (default cpu 2)")
    p.add_argument("--quick", action="store_true", help="smoke run: 16 prompts x 16 tokens")
    p.add_argument("--out", help="JSON report (default benchmarks/results/bench_inference_<device>.json)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (run dirs)")
    args = p.parse_args(argv)
    defaults = GPU_DEFAULTS if args.device == "gpu" else CPU_DEFAULTS
    if args.quick:
        defaults = {**defaults, "prompts": 16, "max_tokens": 16}
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batch_sizes = [int(b) for b in str(args.batch_size).split(",") if b.strip()]
    args.ray_cpus = max(2, args.threads) if args.device == "cpu" else (os.cpu_count() or args.threads)
    args.out = Path(args.out or ROOT / "benchmarks" / "results" / f"bench_inference_{args.device}.json")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.device == "gpu" and not torch.cuda.is_available():
        raise SystemExit("--device gpu needs a CUDA GPU (torch sees none); the CPU comparison is the default mode")
    torch.set_num_threads(args.threads)  # (b) and (a') use the actor's thread count
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray of our own, never a cluster this shell points at
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    texts, source = instructions(args.prompts)
    bg_before, load_before = background_load(), os.getloadavg()
    info = machine_info()
    print(f"machine: {info.get('cpu_model') or ''} {info['cpus']} cpus {info.get('gpu', '')}; background load "
          f"{bg_before} cores; {args.prompts} prompts x {args.max_tokens} tokens from {source}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="lamini-bench-inference-"))
    entries = {m: {"model": m} for m in args.model_list}
    import ray

    global MONITOR
    try:
        with LoadMonitor() as MONITOR:
            print("phase 1: in this process, no Ray running", flush=True)
            for m in args.model_list:
                bench_model(args, m, texts, work, "local", entries[m])
            print("phase 2: our Ray actors", flush=True)
            actor_threads = start_ray(args)
            for m in args.model_list:
                bench_model(args, m, texts, work, "ray", entries[m])
    finally:
        MONITOR = None
        ray.shutdown()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results = []
    for m in args.model_list:
        e = entries[m]
        e["ratios"] = ratios(e, args.batch_sizes)
        for r in e.values():  # texts only fed the agreement check; keep the JSON small
            if isinstance(r, dict):
                r.pop("texts", None)
        results.append(e)
    report = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "loadavg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "background_load_cores": {"before": bg_before, "after": background_load()},
        "actor_threads": actor_threads,
        "settings": {"device": args.device, "models": args.model_list, "prompts": args.prompts,
                     "prompt_source": source, "max_tokens": args.max_tokens, "batch_sizes": args.batch_sizes,
                     "threads": args.threads, "ray_num_cpus": args.ray_cpus, "greedy": True, "eos_ignored": True},
        "definitions": {
            "baseline": "(b) load_for_generation + model.generate one prompt at a time in this process; tokens_per_s "
                        "over the loop, tokens_per_s_with_load over load + loop",
            "batched_in_process": "(a') HFEngine.generate (length-sorted chunks of batch_size) in this process, "
                                  "after the load",
            "ours": "(a) generate_for_students, from the call to its return: Ray Data plan, actor process start and "
                    "imports, model load, generation, Parquet write",
            "ours_fixed": "(a0) the same call on 1 prompt x 1 token: the fixed cost of (a)",
            "generate_s": "(a) the actor's time inside generate() calls: the sum of the distinct latency_s values "
                          "batched_generate stamps on the rows of each call",
            "ours_fixed_share": "(a0) wall / (a) wall: the share of (a) that a call costs before any real work",
            "ours_over_baseline": "headline: (a) tokens_per_s / (b) tokens_per_s_with_load (both from nothing loaded)",
            "vllm": "(c) GPU only: vllm.LLM.generate of all prompts at once, ignore_eos, after its load and a warm-up",
            "load": "cores busy from /proc over the contender: machine, bench (this process tree, Ray included), other",
        },
        "results": results,
    }
    report["targets"] = {"wanted": TARGETS, "met": targets(results, args.device == "gpu")}
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
