"""Training throughput: lamini's trainer against a plain PyTorch loop, same model, same data, one run.

  (a) ours: `lamini.train.trainer.run_train(TrainConfig)`: a Ray Train TorchTrainer with one worker,
      DeepSpeed (ZeRO-0/2/3), Ray Data streaming the rows, tokenised in the worker. Its
      `<run_dir>/<name>/metrics.jsonl` (one line per report) is read back with `read_history`.
  (b) baseline: one process, no Ray, no DeepSpeed: AutoModelForCausalLM.from_pretrained on the
      same folder, the same rows through the same ExampleEncoder / micro_batches (so the token
      streams are identical), torch.optim.AdamW with the same parameter groups, the same micro
      batch, accumulation, global batch, clipping, learning-rate schedule and number of
      optimiser steps; fp32 with torch.set_num_threads(N) on CPU (N = the threads our worker
      gets), bf16 autocast on CUDA.
  (c) CPU: (b)'s loop as the train function of a Ray Train worker on the same Ray
      (run_plain_in_ray): a plain loop on equal ground with ours, the same Ray daemons and
      Train actors beside it. ours / (c) is our loop's cost; ours / (b) adds Ray's own.

Both are measured in steady state: the first W optimiser steps are left out (W = the steps of
ours' first report, i.e. --log-every). Reported for each: tokens/s over the measured steps'
time, tokens/s over wall time including ours' reports, MFU = 6·N·tokens/s / peak FLOP/s, and
the ratio ours/baseline. Prints a table and writes bench_results/bench_train.json (and a
timestamped copy). Targets are reported, never asserted.

    python benchmarks/bench_train.py                              # CPU, ~2 min on 2 quiet cores
    python benchmarks/bench_train.py --steps 16 --log-every 4     # smoke run, ~75 s
    python benchmarks/bench_train.py --rounds 3                   # (b), (a), (c) three times; targets read the median
    python benchmarks/bench_train.py --zero-stage 0,2,3           # several ZeRO stages, one baseline
    python benchmarks/bench_train.py --device gpu                 # GPT-2 124M and a 1.1B Llama, bf16, ZeRO-2/3

On CPU the script starts its own local Ray (2 CPUs, temp dir /tmp/lamini-bench-train) and
shuts it down at the end; never `ray stop`.
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
import math  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from itertools import islice  # noqa: E402
from typing import Any  # noqa: E402

from benchmarks.machine import LoadMonitor, background_load, machine_info  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "alpaca_5000.json"
RAY_TMP = "/tmp/lamini-bench-train"  # short: Ray's unix sockets live under it (108-byte path limit)
MODELS_DIR = ROOT / ".cache" / "bench_train"  # built students, reused across runs
TOKENIZER_DIR = MODELS_DIR / "tiny"  # build_tiny_causal_lm's folder: its tokenizer serves every built model

TARGETS = {"ours_over_baseline": 0.95, "gpu_mfu_1b_bf16": 0.45}
OTHER_LOAD_WARN = 0.15  # cores busy outside the benchmark above which a contender's numbers are flagged

# Defaults per device; a flag given on the command line wins. GPU sizes are per model: long
# full sequences (--synthetic) and enough tokens per micro batch to keep an H100 busy; the
# 1.1B at micro 4 x 2048 fits 80 GB without gradient checkpointing (~45 GB estimated).
CPU_DEFAULTS = dict(model="tiny-llama-384x4", zero_stage="0", steps=40, log_every=10, threads=2,
                    max_length=256, micro_batch=4, accum=2, synthetic=False)
GPU_DEFAULTS = dict(model="gpt2-124m,llama-1b", zero_stage="2,3", steps=30, log_every=10, threads=8,
                    synthetic=True)
GPU_MODEL_SIZES = {
    "gpt2-124m": dict(max_length=1024, micro_batch=16, accum=4),
    "llama-1b": dict(max_length=2048, micro_batch=4, accum=8),
}
GPU_FALLBACK_SIZES = dict(max_length=1024, micro_batch=8, accum=4)


# ------------------------------------------------------------------------------ machine


MONITOR: LoadMonitor | None = None
WORKER_COMM = "ray::RayTrainWo"  # /proc comm of a Ray Train worker (15 characters)


def _load(t0: float, t1: float) -> dict[str, float | None]:
    return MONITOR.span(t0, t1) if MONITOR else {}


def _worker_load(t0: float, t1: float) -> tuple[dict[str, float | None], list[str]]:
    """Over [t0, t1] (time.monotonic): the load with a Ray Train worker's CPU apart, and the Ray
    actor processes alive beside it."""
    if not MONITOR:
        return {}, []
    return (MONITOR.span(t0, t1, apart=WORKER_COMM),
            MONITOR.ray_actors(t0, t1, exclude=("ray::IDLE", WORKER_COMM)))


def peak_flops(precision: str, override_tflops: float | None, tries: int) -> tuple[float, str, list[float]]:
    """(peak FLOP/s of one device, how obtained, every reading).

    On a GPU the spec table answers. On a CPU lamini measures one 0.5 s fp32 matmul burst, which
    reads low when another process shares the cores; the best of `tries` readings is used here
    for both contenders (ours' own `mfu` entries use its worker's single reading, also reported).
    """
    from lamini.train.flops import device_peak_flops

    readings = []
    peak, source = device_peak_flops(precision, override_tflops)
    readings.append(peak)
    if source.startswith("measured"):
        for _ in range(tries - 1):
            readings.append(device_peak_flops(precision, override_tflops)[0])
        peak = max(readings)
    return peak, source, [round(r / 1e9, 1) for r in readings]


# ------------------------------------------------------------------------------ models

_SPEC_TINY = re.compile(r"^tiny-llama-(\d+)x(\d+)$")


def _tokenizer_dir() -> Path:
    from lamini.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(TOKENIZER_DIR)


def model_config(spec: str, tokenizer, max_length: int):
    """A transformers config for a builder spec, or None when `spec` is not one."""
    from transformers import GPT2Config, LlamaConfig

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if m := _SPEC_TINY.match(spec):
        hidden, layers = int(m.group(1)), int(m.group(2))
        heads = max(1, hidden // 64)
        if hidden % heads:
            raise SystemExit(f"--model {spec}: hidden {hidden} is not a multiple of {heads} heads")
        return LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                           intermediate_size=max(64, int(2.75 * hidden) // 64 * 64),  # TinyLlama's ratio
                           num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                           max_position_embeddings=max(2048, max_length), tie_word_embeddings=False, **ids)
    if spec == "gpt2-124m":  # GPT-2 small; vocab 50257 covers the tiny tokenizer's ids
        return GPT2Config(vocab_size=50257, n_positions=max(1024, max_length), n_embd=768, n_layer=12, n_head=12, **ids)
    if spec == "llama-1b":  # TinyLlama-1.1B's shape
        return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=max(2048, max_length),
                           tie_word_embeddings=False, **ids)
    return None


def model_folder(spec: str, max_length: int) -> Path:
    """A Hugging Face folder for `--model`: an existing folder as is, or a builder spec built (once) from a config.

    Built students are randomly initialised (seeded) with the tiny tokenizer of
    lamini.testing.tiny_models; the data are only token ids, so its 1,024-token vocabulary is
    enough, and larger model vocabularies simply leave rows of the embedding unused.
    """
    if Path(spec).is_dir():
        return Path(spec)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_dir())
    config = model_config(spec, tokenizer, max_length)
    if config is None:
        raise SystemExit(f"--model {spec!r}: not a folder, nor tiny-llama-<hidden>x<layers>, gpt2-124m, llama-1b")
    positions = config.max_position_embeddings  # GPT2Config maps it to n_positions
    out = MODELS_DIR / f"{spec}-pos{positions}"
    if (out / ".built").exists():
        return out
    print(f"building {spec} in {out} ...", flush=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / ".built").write_text("ok\n")
    del model
    gc.collect()
    return out


# ------------------------------------------------------------------------------ data


def synthetic_corpus(path: Path, rows: int, max_length: int, tokenizer, seed: int = 0) -> Path:
    """Alpaca-format rows whose responses are random real words, each at least max_length tokens long.

    Every sequence is then truncated to exactly max_length: full micro batches without padding,
    as a long-sequence GPU run wants. Rows are sized with the tokenizer (about 5% over
    max_length), not made of max_length words: at ~3.6 tokens per word with the tiny tokenizer
    that would make the in-loop tokenisation of both contenders do 3.6x the work a real corpus
    of max_length-token rows needs.
    """
    words: list[str] = []
    if DATA.exists():
        text = " ".join(r.get("output", "") for r in json.loads(DATA.read_text(encoding="utf-8"))[:2000])
        words = sorted({w for w in re.findall(r"[A-Za-z]+", text) if 2 <= len(w) <= 12})
    if not words:
        rng0 = random.Random(seed)
        words = ["".join(rng0.choices("abcdefghijklmnopqrstuvwxyz", k=rng0.randint(3, 9))) for _ in range(5000)]
    rng = random.Random(seed)

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    per_word = n_tokens(" ".join(rng.choices(words, k=1000))) / 1000
    k = math.ceil(max_length / per_word * 1.05)
    data = []
    for i in range(rows):
        out = rng.choices(words, k=k)
        while n_tokens(" ".join(out)) < max_length:
            out += rng.choices(words, k=max(8, k // 20))
        data.append({"instruction": f"Row {i}: " + " ".join(rng.choices(words, k=12)), "input": "",
                     "output": " ".join(out)})
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def training_rows(corpus: Path, limit: int | None) -> list[tuple[str, str]]:
    """(instruction, response) rows exactly as lamini.train.trainer.build_dataset makes them."""
    import pyarrow.compute as pc

    from lamini.config import CorpusSpec
    from lamini.corpus import RejectLog, read_corpora

    table = read_corpora([CorpusSpec(format="alpaca", path=str(corpus))], on_error="raise", rejects=RejectLog())
    table = table.filter(pc.and_(pc.is_valid(table["response"]), pc.not_equal(table["response"], "")))
    rows = list(zip(table.column("prompt").to_pylist(), table.column("response").to_pylist()))
    return rows[:limit] if limit else rows


# ------------------------------------------------------------------------------ ours


def train_config(args: argparse.Namespace, model_dir: Path, corpus: Path, run_dir: Path, name: str,
                 zero_stage: int, sizes: dict[str, int]):
    from lamini.train.config import TrainConfig

    gpu = args.device == "gpu"
    return TrainConfig.model_validate({
        "name": name,
        "run_dir": str(run_dir),
        "model": {"base": str(model_dir), "family": "decoder"},
        # The baseline trains on the rows in file order; ours does too (no per-epoch shuffle), so both
        # see the same tokens (checked: "same tok"). The shuffle runs in Ray Data, off the training thread.
        "data": {"corpora": [{"format": "alpaca", "path": str(corpus)}], "max_length": sizes["max_length"],
                 "shuffle": False},
        "optim": {"lr": args.lr},
        "global_batch_size": sizes["micro_batch"] * sizes["accum"],
        "micro_batch_size": sizes["micro_batch"],
        "max_steps": args.steps,
        "precision": "bf16" if gpu else "fp32",
        "deepspeed": {"zero_stage": zero_stage, "torch_adam": args.torch_adam},
        "scaling": {"num_workers": 1, "use_gpu": gpu, "cpus_per_worker": args.threads},
        "log_every_n_steps": args.log_every,
        # Only the final report saves one (the loop always does); it is timed after the last window.
        "checkpoint_every_n_steps": 10**9,
        "keep_checkpoints": 1,
        "max_failures": 0,
        "export": False,
        "peak_tflops": args.peak_tflops,
        "seed": 0,
        "ray": {"num_cpus": args.ray_cpus, "temp_dir": RAY_TMP},
    })


def run_ours(cfg) -> dict[str, Any]:
    from lamini.train.trainer import read_history, run_train

    t0, m0 = time.perf_counter(), time.monotonic()
    summary = run_train(cfg)
    wall = time.perf_counter() - t0
    m1 = time.monotonic()
    history = read_history(summary.run_dir)
    if len(history) < 2:
        raise RuntimeError(f"ours reported {len(history)} time(s); need --steps > --log-every for a steady window")
    first, steady = history[0], [h for h in history[1:] if h["window_steps"]]
    tokens = steady[-1]["tokens_seen"] - first["tokens_seen"]
    steps = sum(h["window_steps"] for h in steady)
    step_s = sum(h["window_s"] for h in steady)
    wall_s = steady[-1]["elapsed_s"] - first["elapsed_s"]  # the windows plus the reports between them
    n = int(first["n_params"])
    tps, tps_wall = tokens / step_s, tokens / wall_s
    own_mfu = [h["mfu"] for h in steady if h.get("mfu") is not None]
    # The measured windows on this clock (the worker stamps each report with Unix time): the load
    # then, with the training worker's CPU apart from Ray's daemons and actors beside it.
    to_mono = time.monotonic() - time.time()
    load, actors = _worker_load(first["time"] + to_mono, steady[-1]["time"] + to_mono)
    return {
        "warmup_steps": first["window_steps"], "steps": steps, "tokens": tokens,
        "step_s": round(step_s, 3), "wall_s": round(wall_s, 3),
        "tokens_per_s": round(tps, 1), "tokens_per_s_wall": round(tps_wall, 1),
        "s_per_step": round(step_s / steps, 4),
        "mfu_worker_reported": _r(sum(own_mfu) / len(own_mfu)) if own_mfu else None,
        "peak_flops_source_worker": first.get("peak_flops_source"),
        "warmup_tokens_per_s": round(first["tokens_per_s"], 1),
        "n_params": n,
        "loss_first": round(history[0]["loss"], 4), "loss_last": round(history[-1]["loss"], 4),
        "report_overhead_s": round(wall_s - step_s, 3),
        "run_train_wall_s": round(wall, 2),
        "outside_loop_s": round(wall - history[-1]["elapsed_s"], 2),  # ray/dataset/worker start, model load, final checkpoint
        "load": load,  # over the measured windows
        "load_whole_call": _load(m0, m1),
        "ray_actors_beside": actors,  # Ray's actor processes alive beside the worker in the measured windows
        "history": [{k: h.get(k) for k in ("step", "loss", "lr", "tokens_per_s", "tokens_seen", "window_steps",
                                           "window_s", "elapsed_s", "mfu")} for h in history],
    }


# ------------------------------------------------------------------------------ baseline


def ds_lr_ratio(it: int, warmup: int, total: int, min_ratio: float) -> float:
    """DeepSpeed's WarmupCosineLR (linear warm-up from 0) at scheduler iteration `it`.

    The engine sets the rate at construction with iteration -1 (rate 0) and steps the scheduler
    after every optimiser step, so optimiser step k (1-based) runs at iteration k - 2.
    """
    if it < 0:
        return 0.0
    warmup = max(2, warmup)
    if it < warmup:
        return it / warmup
    progress = min(1.0, (it - warmup + 1) / max(1, total - warmup))
    return max(0.0, min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * progress)) / 2)


def run_baseline(args: argparse.Namespace, cfg, rows: list[tuple[str, str]], warmup_steps: int) -> dict[str, Any]:
    """A plain single-process loop: same model folder, tokens, optimiser, batches and schedule as ours."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lamini.models.loading import count_params
    from lamini.train.data import (
        ExampleEncoder,
        batch_tokens,
        micro_batches,
        pad_token_id,
    )
    from lamini.train.strategy import param_groups

    gpu = args.device == "gpu"
    device = torch.device("cuda" if gpu else "cpu")
    if not gpu:
        torch.set_num_threads(args.threads)  # what our worker does with cpus_per_worker
    t_load = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.base)
    model = AutoModelForCausalLM.from_pretrained(cfg.model.base, dtype=torch.float32).to(device)
    n = count_params(model)
    o = cfg.optim
    fused = gpu and not cfg.deepspeed.torch_adam  # ours then steps DeepSpeed's fused CUDA Adam
    opt = torch.optim.AdamW(param_groups(model, o.weight_decay), lr=args.lr, betas=tuple(o.betas), eps=o.eps,
                            weight_decay=o.weight_decay, **({"fused": True} if fused else {"foreach": None}))
    base_lrs = [g["lr"] for g in opt.param_groups]
    warmup = max(1, round(o.warmup_ratio * args.steps))  # as lamini.train.strategy.deepspeed_config
    encoder = ExampleEncoder(tokenizer, "decoder", cfg.data)
    pad_id = pad_token_id(tokenizer)
    micro, accum = cfg.micro_batch_size, cfg.grad_accum_steps
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if gpu else nullcontext()
    load_s = time.perf_counter() - t_load

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize()

    model.train()
    per_step: list[dict[str, Any]] = []
    step, epoch = 0, 0
    t_measured = None
    sync()
    t_loop = t_prev = time.perf_counter()
    while step < args.steps:
        batches = micro_batches(encoder.examples(iter(rows)), micro, pad_id)
        stepped = False
        while step < args.steps:
            group = list(islice(batches, accum))
            if len(group) < accum:  # as ours: a partial last group ends the epoch unused
                break
            loss_sum, tokens = torch.zeros((), device=device), 0
            for mb in group:
                tokens += batch_tokens(mb)  # counted on the host tensors: no device sync
                mb = {k: v.to(device, non_blocking=True) for k, v in mb.items()}
                with autocast:
                    loss = model(**mb).loss
                (loss / accum).backward()
                loss_sum += loss.detach().float()  # read after the loop: a plain loop does not sync per micro batch
            if o.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), o.max_grad_norm)
            ratio = ds_lr_ratio(step - 1, warmup, args.steps, o.min_lr_ratio)  # this is step `step + 1`
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * ratio
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            stepped = True
            if step in (warmup_steps, args.steps):  # the measured span's ends; the steps between queue freely
                sync()
            now = time.perf_counter()
            per_step.append({"step": step, "tokens": tokens, "loss_sum": loss_sum, "micro": len(group),
                             "lr": base_lrs[0] * ratio, "s": now - t_prev})
            t_prev = now
            if step == warmup_steps:
                t_measured = time.monotonic()
        epoch += 1
        if not stepped:
            raise RuntimeError(f"an epoch gave no full optimiser step ({micro} x {accum} examples); encoder stats "
                               f"{encoder.stats} (rows whose prompt alone fills max_length are dropped)")
    loop_s = time.perf_counter() - t_loop
    for s in per_step:
        s["loss_sum"] = float(s["loss_sum"])
    t_end = time.monotonic()
    load = MONITOR.span(t_measured, t_end, apart=WORKER_COMM) if MONITOR and t_measured else {}

    steady = per_step[warmup_steps:]
    tokens = sum(s["tokens"] for s in steady)
    step_s = sum(s["s"] for s in steady)
    tps = tokens / step_s
    warm = per_step[:warmup_steps]
    out = {
        "warmup_steps": warmup_steps, "steps": len(steady), "tokens": tokens,
        "step_s": round(step_s, 3), "wall_s": round(step_s, 3),  # no reports: the steps are the wall time
        "tokens_per_s": round(tps, 1), "tokens_per_s_wall": round(tps, 1),
        "s_per_step": round(step_s / len(steady), 4),
        "warmup_tokens_per_s": round(sum(s["tokens"] for s in warm) / sum(s["s"] for s in warm), 1) if warm else None,
        "n_params": n,
        "loss_first": None, "loss_last": None,  # filled per ours' report windows below
        "load_s": round(load_s, 2), "loop_s": round(loop_s, 2), "epochs": epoch,
        "optimizer": "torch.optim.AdamW(fused=True)" if fused else "torch.optim.AdamW(foreach=default)",
        "load": load,  # over the measured steps
        # CLOCK_MONOTONIC is one clock for every process on the machine: when run in a Ray
        # worker ((c)), the driver's monitor reads this span as it is.
        "measured_monotonic": [t_measured, t_end],
        "per_step": [{k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in s.items()} for s in per_step],
    }
    del model, opt
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def _plain_loop_in_worker(config: dict[str, Any]) -> None:
    """(c)'s train function: run_baseline's loop, unchanged, in a Ray Train worker (imported by name there).
    Its numbers go to a file (one machine): Ray Train 2.60 keeps a report's metrics only with a checkpoint."""
    from benchmarks.bench_train import run_baseline
    from lamini.train.config import TrainConfig

    out = run_baseline(argparse.Namespace(**config["args"]), TrainConfig.model_validate(config["cfg"]),
                       [tuple(r) for r in config["rows"]], config["warmup_steps"])
    Path(config["out"]).write_text(json.dumps(out))


def run_plain_in_ray(args: argparse.Namespace, cfg, rows: list[tuple[str, str]], warmup_steps: int,
                     storage: Path) -> dict[str, Any]:
    """(c) The plain loop of (b) as the train function of a Ray Train TorchTrainer on the Ray ours used:
    one worker with the same CPUs (`cpus_per_worker`), the rows in its config (no Ray Data, no
    DeepSpeed, no lamini loop). Its worker shares the machine with the same Ray daemons and Train
    actors as ours' (controller, placement-group cleaner, synchronization, preemption watcher):
    every Ray Python process wakes ~100 times a second (the core worker's 10 ms signal check,
    hard-wired in Ray), ~1% of a core each, ~0.12 cores in all, which on 2 cores is 6% that no
    loop under Ray gets back. ours / (c) is therefore our loop against a plain loop on equal
    ground; ours / (b) is the whole cost of running under Ray. Written here because Ray has no
    switch for any of it."""
    import ray.train
    from ray.train.torch import TorchTrainer

    name = f"plain-{time.time_ns()}"
    out_file = storage / f"{name}.json"
    storage.mkdir(parents=True, exist_ok=True)
    TorchTrainer(
        _plain_loop_in_worker,
        train_loop_config={"args": vars(args), "cfg": cfg.model_dump(mode="json"), "rows": rows,
                           "warmup_steps": warmup_steps, "out": str(out_file)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": args.threads}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(storage)),
    ).fit()
    out = json.loads(out_file.read_text())
    if MONITOR:
        out["load"], out["ray_actors_beside"] = _worker_load(*out["measured_monotonic"])
    return out


def compare_windows(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """The baseline's loss and tokens over ours' report windows: same data and init should give the same numbers."""
    windows, prev = [], 0
    per_step = base["per_step"]
    for h in ours["history"]:
        chunk = [s for s in per_step if prev < s["step"] <= h["step"]]
        if not chunk:
            continue
        loss = sum(s["loss_sum"] for s in chunk) / sum(s["micro"] for s in chunk)
        windows.append({"step": h["step"], "ours_loss": round(h["loss"], 4), "baseline_loss": round(loss, 4),
                        "baseline_tokens": sum(s["tokens"] for s in chunk)})
        prev = h["step"]
    seen, same = 0, True
    for h, w in zip(ours["history"], windows):
        same &= h["tokens_seen"] - seen == w["baseline_tokens"]
        seen = h["tokens_seen"]
    rel = [abs(w["ours_loss"] - w["baseline_loss"]) / max(abs(w["baseline_loss"]), 1e-9) for w in windows]
    return {"windows": windows, "same_tokens": bool(same and len(windows) == len(ours["history"])),
            "max_rel_loss_diff": round(max(rel), 4) if rel else None}


def apply_peak(results: list[dict[str, Any]], peak: float) -> None:
    """MFU of every contender against one peak, known only at the end on a CPU (read before and after)."""
    from lamini.train.flops import mfu

    for m in results:
        for r in [m["baseline"], *([m["plain_in_ray"]] if m.get("plain_in_ray") else []),
                  *m["ours"].values()]:
            if "error" not in r:
                r["mfu"] = _r(mfu(r["n_params"], r["tokens_per_s"], peak, 1))
                r["mfu_wall"] = _r(mfu(r["n_params"], r["tokens_per_s_wall"], peak, 1))


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


# ------------------------------------------------------------------------------ one model


def sizes_for(args: argparse.Namespace, spec: str) -> dict[str, int]:
    base = dict(GPU_MODEL_SIZES.get(spec, GPU_FALLBACK_SIZES)) if args.device == "gpu" else {
        k: CPU_DEFAULTS[k] for k in ("max_length", "micro_batch", "accum")}
    for k in base:
        if getattr(args, k) is not None:
            base[k] = getattr(args, k)
    return base


def bench_model(args: argparse.Namespace, spec: str, stages: list[int], work: Path) -> dict[str, Any]:
    sizes = sizes_for(args, spec)
    model_dir = model_folder(spec, sizes["max_length"])
    global_batch = sizes["micro_batch"] * sizes["accum"]
    if args.synthetic:
        from transformers import AutoTokenizer

        corpus = synthetic_corpus(work / f"synthetic-{spec}.json", (args.steps + 1) * global_batch, sizes["max_length"],
                                  AutoTokenizer.from_pretrained(model_dir))
    else:
        corpus = DATA
        if not corpus.exists():
            raise SystemExit(f"{corpus} not found: run from a checkout with ../shared/data beside it, or pass --synthetic")
    rows = training_rows(corpus, None)
    cfgs = {z: train_config(args, model_dir, corpus, work / "runs", f"bench-{spec}-z{z}", z, sizes) for z in stages}
    any_cfg = cfgs[stages[0]]
    print(f"\n== {spec} ({model_dir}), {len(rows)} rows, global batch {global_batch} = micro {sizes['micro_batch']} x "
          f"accum {sizes['accum']}, max_length {sizes['max_length']}, {args.steps} steps (first {args.log_every} warm-up)",
          flush=True)

    print("  (b) baseline: plain torch loop ...", flush=True)
    base = run_baseline(args, any_cfg, rows, args.log_every)
    print(f"      {base['tokens_per_s']:,.0f} tok/s, {base['s_per_step']:.3f} s/step", flush=True)

    ours: dict[int, dict[str, Any]] = {}
    for z in stages:
        failed: list[str] = []
        for attempt in range(1 + args.retries):
            print(f"  (a) ours: run_train, ZeRO-{z}{f' (attempt {attempt + 1})' if attempt else ''} ...", flush=True)
            cfg = cfgs[z].model_copy(update={"name": f"{cfgs[z].name}-a{attempt}"})  # a fresh run: no resume
            try:
                r = run_ours(cfg)
                break
            except Exception as e:  # noqa: BLE001 - one failed stage must not lose the others' numbers
                traceback.print_exc()
                failed.append(f"{type(e).__name__}: {e}")
                import ray

                ray.shutdown()  # the next attempt gets a fresh Ray
            finally:
                if not args.keep:
                    shutil.rmtree(work / "runs" / cfg.name, ignore_errors=True)  # a 1B checkpoint is ~13 GB
        else:
            ours[z] = {"error": failed[-1], "failed_attempts": failed}
            continue
        r["failed_attempts"] = failed
        r["vs_baseline"] = compare_windows(r, base)
        r["ratio"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        r["ratio_wall"] = round(r["tokens_per_s_wall"] / base["tokens_per_s"], 3)
        # Per core-second the loop was given: ours' worker alone (Ray's daemons and actors apart)
        # against the baseline's process. Where ours / (b) falls short while this does not, the
        # difference is CPU that Ray's processes took beside the worker, not our loop.
        wc, bc = (r.get("load") or {}).get("apart_cores"), (base.get("load") or {}).get("bench_cores")
        if wc and bc:
            r["ratio_per_core"] = round((r["tokens_per_s"] / wc) / (base["tokens_per_s"] / bc), 3)
        ours[z] = r
        print(f"      {r['tokens_per_s']:,.0f} tok/s ({r['tokens_per_s_wall']:,.0f} incl. reports), "
              f"ours/baseline {r['ratio']:.2f}", flush=True)
    ok = [r for r in ours.values() if "error" not in r]
    plain = None
    if ok and args.device == "cpu" and not args.no_in_ray:
        print("  (c) plain loop in Ray Train: (b)'s loop as a TorchTrainer's train function, one worker ...", flush=True)
        plain = run_plain_in_ray(args, any_cfg, rows, args.log_every, work / "runs")
        pc = (plain.get("load") or {}).get("apart_cores")
        for r in ok:
            r["ratio_in_ray"] = round(r["tokens_per_s"] / plain["tokens_per_s"], 3)
            wc = (r.get("load") or {}).get("apart_cores")
            if wc and pc:
                r["ratio_in_ray_per_core"] = round((r["tokens_per_s"] / wc) / (plain["tokens_per_s"] / pc), 3)
        print(f"      {plain['tokens_per_s']:,.0f} tok/s, {plain['s_per_step']:.3f} s/step; ours/(c) "
              f"{', '.join(str(r['ratio_in_ray']) for r in ok)}", flush=True)
    # run_train started a local Ray from cfg.ray (init_ray) and every stage reused it; stop it so
    # the next model's baseline runs with no Ray processes beside it.
    import ray

    ray.shutdown()
    if ok:
        windows = ok[0]["vs_baseline"]["windows"]
        base["loss_first"], base["loss_last"] = windows[0]["baseline_loss"], windows[-1]["baseline_loss"]
    return {"model": spec, "model_dir": str(model_dir), "n_params": base["n_params"], "sizes": sizes,
            "global_batch": global_batch, "rows": len(rows), "data": "synthetic" if args.synthetic else str(corpus),
            "baseline": base, "plain_in_ray": plain, "ours": {f"zero{z}": r for z, r in ours.items()}}


# ------------------------------------------------------------------------------ report


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


MEDIAN_KEYS = ("ratio", "ratio_per_core", "ratio_in_ray", "ratio_in_ray_per_core")


def medians(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model and stage, over the rounds: every ratio and their median (what the targets read)."""
    import statistics

    out: dict[str, dict[str, Any]] = {}
    for m in results:
        for stage, r in m["ours"].items():
            if "error" in r:
                continue
            e = out.setdefault(f"{m['model']} {stage}", {k: [] for k in MEDIAN_KEYS})
            for k in e:
                if k in r:
                    e[k].append(r[k])
    for e in out.values():
        for k in MEDIAN_KEYS:
            e[f"{k}_median"] = round(statistics.median(e[k]), 3) if e[k] else None
    return out


def targets(results: list[dict[str, Any]], gpu: bool) -> dict[str, bool]:
    met = {}
    want = TARGETS["ours_over_baseline"]
    if not gpu:
        for key, e in medians(results).items():
            # Both read: ours / (c) is our loop against a plain loop on equal ground (each the train
            # function of a Ray Train worker); ours / (b) adds what Ray's own processes cost.
            if e["ratio_in_ray"]:
                met[f"loop: ours/(c) plain loop in Ray Train>={want} {key} (median of {len(e['ratio_in_ray'])})"] = (
                    e["ratio_in_ray_median"] >= want)
            met[f"end to end: ours/(b) plain loop without Ray>={want} {key} (median of {len(e['ratio'])})"] = (
                e["ratio_median"] >= want)
    for m in results:
        for stage, r in m["ours"].items():
            if "error" in r:
                continue
            if gpu and m["n_params"] >= 0.9e9 and r["mfu"] is not None:
                met[f"MFU>={TARGETS['gpu_mfu_1b_bf16']:.0%} {m['model']} {stage}"] = r["mfu"] >= TARGETS["gpu_mfu_1b_bf16"]
    return met


def print_table(report: dict[str, Any]) -> None:
    fmt = lambda x, spec: "-" if x is None else format(x, spec)  # noqa: E731
    s = report["settings"]
    print()
    print(f"device {s['device']} ({s['precision']}), {s['threads']} threads per worker / baseline, "
          f"peak {report['peak_gflops']:,.1f} GFLOP/s ({report['peak_source']}; readings {report['peak_readings_gflops']})")
    print(f"background load before: {report['background_load_cores']['before']} cores busy, after: "
          f"{report['background_load_cores']['after']}; load average {report['loadavg']['before']} -> {report['loadavg']['after']}")
    print("tok/s   tokens (padding excluded) / time of the measured steps (the first W steps left out);")
    print("wall    the same over wall time, ours' reports between the windows included; MFU = 6*N*tok/s / peak;")
    print("x base  ours' tok/s / baseline's tok/s (steps / wall); (c) is (b)'s loop in a Ray Train worker;")
    print("other   cores busy in processes outside this benchmark (over the measured steps);")
    print("loss    mean loss of the first and last report windows (baseline: the same windows).")
    print()
    head = (f"{'model':<18} {'contender':<22} {'W':>3} {'steps':>5} {'tokens':>8} {'tok/s':>9} {'wall':>9} "
            f"{'s/step':>7} {'MFU':>6} {'MFU w':>6} {'x base':>11} {'other':>5} {'loss first->last':>17} {'same tok':>8}")
    print(head)
    print("-" * len(head))
    for m in report["results"]:
        b = m["baseline"]
        name = f"{m['model']} {m['n_params'] / 1e6:.1f}M"
        rows = [("(b) baseline torch", b, None)]
        if m.get("plain_in_ray"):
            rows.append(("(c) plain in Ray Train", m["plain_in_ray"], None))
        rows += [(f"(a) ours {k.replace('zero', 'ZeRO-')}", r, r) for k, r in m["ours"].items()]
        for label, r, o in rows:
            if "error" in r:
                print(f"{name:<18} {label:<22} failed: {r['error'][:90]}")
                continue
            ratio = f"{o['ratio']:.2f} / {o['ratio_wall']:.2f}" if o else ""
            loss = f"{fmt(r['loss_first'], '.3f')} -> {fmt(r['loss_last'], '.3f')}"
            same = ("yes" if o["vs_baseline"]["same_tokens"] else "NO") if o else ""
            print(f"{name:<18} {label:<22} {r['warmup_steps']:>3} {r['steps']:>5} {r['tokens']:>8} "
                  f"{r['tokens_per_s']:>9,.0f} {r['tokens_per_s_wall']:>9,.0f} {r['s_per_step']:>7.3f} "
                  f"{_pct(r['mfu']):>6} {_pct(r['mfu_wall']):>6} {ratio:>11} {fmt(r['load'].get('other_cores'), '.2f'):>5} "
                  f"{loss:>17} {same:>8}")
        for k, r in m["ours"].items():
            if "error" not in r and "ratio_per_core" in r:
                ld = r["load"]
                side = ""
                if "ratio_in_ray" in r:
                    pl = m["plain_in_ray"].get("load") or {}
                    side = (f"; ours / (c) plain loop in Ray Train {r['ratio_in_ray']:.2f}, per core "
                            f"{fmt(r.get('ratio_in_ray_per_core'), '.2f')} ((c)'s worker had "
                            f"{fmt(pl.get('apart_cores'), '.2f')} cores, Ray beside it {fmt(pl.get('aux_cores'), '.2f')})")
                print(f"{'':<18} ours {k}: in its measured windows the worker had {fmt(ld.get('apart_cores'), '.2f')} "
                      f"cores, Ray's daemons and {len(r['ray_actors_beside'])} actors beside it "
                      f"{fmt(ld.get('aux_cores'), '.2f')}, the baseline {fmt(b['load'].get('bench_cores'), '.2f')}; "
                      f"ours/baseline per core {r['ratio_per_core']:.2f}{side}")
        for k, r in m["ours"].items():
            if "error" not in r:
                print(f"{'':<18} ours {k}: run_train {r['run_train_wall_s']:.1f} s, of which outside the loop "
                      f"{r['outside_loop_s']:.1f} s; reports in the measured span {r['report_overhead_s']:.2f} s; "
                      f"worker's own MFU {_pct(r['mfu_worker_reported'])} ({r['peak_flops_source_worker']}); "
                      f"max window loss diff vs baseline {fmt(r['vs_baseline']['max_rel_loss_diff'], '.2%')}")
        print(f"{'':<18} baseline: model load {b['load_s']:.1f} s, loop {b['loop_s']:.1f} s, {b['optimizer']}")
    noisy = [f"{m['model']} {k}: {r['load']['other_cores']:.2f} cores"
             for m in report["results"] for k, r in [("baseline", m["baseline"]), *m["ours"].items()]
             if "error" not in r and (r.get("load") or {}).get("other_cores") is not None
             and r["load"]["other_cores"] > OTHER_LOAD_WARN]
    if noisy:
        print(f"\nWARNING: other processes shared the machine during: {'; '.join(noisy)}. Those numbers are "
              "not clean; run again when the machine is quiet.")
    print()
    for key, e in report.get("medians", {}).items():
        print(f"{key}: ours/(b) {e['ratio']} median {e['ratio_median']}; per core {e['ratio_per_core']} median "
              f"{e['ratio_per_core_median']}; ours/(c) {e['ratio_in_ray']} median {e['ratio_in_ray_median']}; "
              f"per core {e['ratio_in_ray_per_core']} median {e['ratio_in_ray_per_core_median']}")
    print("targets: " + ("; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in report["targets"]["met"].items())
                         or "none measured"))


def save(report: dict[str, Any], out: Path, save_as: str | None) -> list[Path]:
    text = json.dumps(report, indent=2, default=str)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = [out, out.with_name(f"{out.stem}-{stamp}{out.suffix}")]
    paths[1].write_text(text)
    if save_as:
        kept = ROOT / "benchmarks" / "results" / f"{save_as}.json"
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(text)
        paths.append(kept)
    return paths


# ------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                   help="cpu: fp32, N threads; gpu: one CUDA worker, bf16 (DeepSpeed) vs bf16 autocast (baseline)")
    p.add_argument("--model", help="comma-separated: HF folders or builder specs tiny-llama-<hidden>x<layers>, gpt2-124m, "
                                   f"llama-1b (default cpu: {CPU_DEFAULTS['model']}; gpu: {GPU_DEFAULTS['model']})")
    p.add_argument("--zero-stage", help="comma-separated ZeRO stages for ours, each against the one baseline "
                                        "(default cpu: 0; gpu: 2,3)")
    p.add_argument("--steps", type=int, help="optimiser steps of each contender (default cpu 40, gpu 30)")
    p.add_argument("--log-every", type=int, help="ours reports every N steps; the first N steps of both are the "
                                                 "warm-up left out (default 10)")
    p.add_argument("--micro-batch", type=int, help="sequences per forward/backward (default cpu 4; gpu per model)")
    p.add_argument("--accum", type=int, help="micro batches per optimiser step (default cpu 2; gpu per model)")
    p.add_argument("--max-length", type=int, help="tokens per sequence at most (default cpu 256; gpu per model)")
    p.add_argument("--threads", type=int, help="torch threads of the baseline = ours' cpus_per_worker (default cpu 2, "
                                               "gpu 8)")
    p.add_argument("--synthetic", action=argparse.BooleanOptionalAction, default=None,
                   help="random real words, every sequence full max_length (default: on for gpu, off for cpu)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of both (default 2e-4)")
    p.add_argument("--torch-adam", action=argparse.BooleanOptionalAction, default=None,
                   help="ours: torch's AdamW instead of DeepSpeed's fused CUDA Adam (default: lamini's, i.e. on "
                        "for cpu, off for gpu; the gpu default JIT-builds fused_adam with nvcc once)")
    p.add_argument("--peak-tflops", type=float, help="peak TFLOP/s of one device for MFU (default: spec table on "
                                                     "GPUs, the best of --peak-tries fp32 matmul readings on CPU)")
    p.add_argument("--peak-tries", type=int, default=3, help="CPU peak readings before and after (default 3 each)")
    p.add_argument("--out", default=str(ROOT / "bench_results" / "bench_train.json"),
                   help="JSON report (a timestamped copy is written beside it)")
    p.add_argument("--save-as", help="also write benchmarks/results/<NAME>.json (numbers kept in the repo)")
    p.add_argument("--retries", type=int, default=1,
                   help="run ours again after a failure, e.g. Ray Train's PlacementGroupCleaner killing the run when "
                        "another Ray runs on the machine (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat baseline, ours (and (c)) this many times; targets read the median ratio")
    p.add_argument("--no-in-ray", action="store_true",
                   help="CPU: skip (c), the plain loop run again as a Ray Train worker's train function")
    p.add_argument("--keep", action="store_true", help="keep the work folder (run dirs, synthetic data)")
    args = p.parse_args(argv)
    defaults = GPU_DEFAULTS if args.device == "gpu" else CPU_DEFAULTS
    for k in ("model", "zero_stage", "steps", "log_every", "threads", "synthetic"):
        if getattr(args, k) is None:
            setattr(args, k, defaults[k])
    if args.steps <= args.log_every:
        p.error("--steps must be larger than --log-every: the first report window is the warm-up left out")
    args.models = [m.strip() for m in args.model.split(",") if m.strip()]
    args.stages = [int(z) for z in str(args.zero_stage).split(",") if z.strip()]
    if any(z not in (0, 1, 2, 3) for z in args.stages):
        p.error("--zero-stage takes 0, 1, 2, 3")
    args.ray_cpus = max(2, args.threads) if args.device == "cpu" else (os.cpu_count() or args.threads)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    gpu = args.device == "gpu"
    if gpu and not torch.cuda.is_available():
        raise SystemExit("--device gpu: torch sees no CUDA device")
    if not gpu:
        torch.set_num_threads(args.threads)  # the peak reading and the baseline use the worker's thread count
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray of our own, never a cluster this shell points at
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    precision = "bf16" if gpu else "fp32"

    load_before = os.getloadavg()
    bg_before = background_load()
    peak, peak_source, readings = peak_flops(precision, args.peak_tflops, args.peak_tries)
    info = machine_info()
    print(f"machine: {info.get('cpu_model') or ''} {info['cpus']} cpus {info.get('gpu', '')}; background load "
          f"{bg_before} cores; peak {peak / 1e9:,.1f} GFLOP/s ({peak_source})", flush=True)

    work = Path(tempfile.mkdtemp(prefix="lamini-bench-train-"))
    results = []
    import ray

    global MONITOR
    try:
        with LoadMonitor() as MONITOR:
            for rnd in range(args.rounds):  # rounds interleave the contenders: the host's speed drifts
                for spec in args.models:
                    if args.rounds > 1:
                        print(f"\n-- round {rnd + 1} of {args.rounds}", flush=True)
                    results.append({**bench_model(args, spec, args.stages, work), "round": rnd + 1})
    finally:
        MONITOR = None
        ray.shutdown()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    if peak_source.startswith("measured"):  # CPU: read again now; the best reading of all is the peak
        after_peak, _, after = peak_flops(precision, args.peak_tflops, args.peak_tries)
        peak, readings = max(peak, after_peak), readings + after
    apply_peak(results, peak)
    report = {
        "when": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info,
        "loadavg": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "background_load_cores": {"before": bg_before, "after": background_load()},
        "peak_gflops": round(peak / 1e9, 1), "peak_source": peak_source, "peak_readings_gflops": readings,
        "settings": {
            "device": args.device, "precision": precision, "models": args.models, "zero_stages": args.stages,
            "steps": args.steps, "log_every": args.log_every, "warmup_steps_left_out": args.log_every,
            "threads": args.threads, "ray_num_cpus": args.ray_cpus, "synthetic": args.synthetic, "lr": args.lr,
            "torch_adam": args.torch_adam, "micro_batch": args.micro_batch, "accum": args.accum,
            "max_length": args.max_length, "ray_temp_dir": RAY_TMP, "rounds": args.rounds,
        },
        "definitions": {
            "tokens_per_s": "tokens (attention-mask ones) of the steps after the first W / their time. ours: sum of "
                            "metrics.jsonl window_s (entries after the first; excludes the reports); baseline: per-step "
                            "wall time, data preparation included as in ours",
            "tokens_per_s_wall": "ours: the same tokens / (elapsed_s of the last entry - elapsed_s of the first), the "
                                 "reports between the windows included; baseline: same as tokens_per_s",
            "mfu": "6 * n_params * tokens_per_s / peak FLOP/s of one device (lamini.train.flops.mfu); attention "
                   "FLOPs not counted; peak: spec table on GPUs, the best CPU fp32 matmul reading here",
            "ratio": "ours tokens_per_s / baseline tokens_per_s; ratio_wall: ours tokens_per_s_wall / baseline",
            "same_tokens": "baseline tokens per ours' report window equal ours' tokens_seen deltas (identical streams)",
            "load": "mean cores busy from /proc, sampled every second: machine, bench (this script's process tree, "
                    "Ray included), other (the rest: load from outside the benchmark; approximate); baseline over "
                    "its measured steps, ours over its measured windows (load_whole_call: the whole run_train call); "
                    "apart_cores: the Ray Train worker alone, aux_cores: the rest of the tree but this script (Ray's "
                    "daemons and actors)",
            "plain_in_ray": "(c): (b)'s loop again after ours, as the train function of a one-worker TorchTrainer on "
                            "the same Ray (same CPUs, no Ray Data, no DeepSpeed); ratio_in_ray = ours / (c), "
                            "ratio_in_ray_per_core = the same per core-second of each worker (apart_cores)",
            "ratio_per_core": "(ours tokens_per_s / its worker's apart_cores) / (baseline tokens_per_s / its bench_cores): "
                              "the loops per core-second they were given, Ray's processes beside ours left out",
            "rounds": "--rounds N repeats (b), (a), (c) N times; targets read the median ratio over the rounds",
        },
        "results": results,
    }
    report["medians"] = medians(results)
    report["targets"] = {"wanted": TARGETS, "met": targets(results, gpu)}
    print_table(report)
    for path in save(report, Path(args.out), args.save_as):
        print(f"saved {path}")


if __name__ == "__main__":
    main()
