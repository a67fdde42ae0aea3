"""The function every Ray Train worker runs: stream rows, train with DeepSpeed, report, checkpoint, export.

Step accounting is what makes a resumed run continue exactly: a checkpoint holds DeepSpeed's
state (weights, optimizer, LR scheduler, step) plus ours (epoch, micro batches consumed in that
epoch, tokens seen, the metrics history). On restart, whether Ray Train's FailureConfig restarted
the worker group or the user re-ran the command, `ray.train.get_checkpoint()` returns the latest
one, the engine reloads it, the iterator skips the micro batches already trained on, and the
history continues from the checkpoint's step: entries logged after it by the dead attempt are
replaced, not duplicated.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Any

from lamini.runs.rundir import RunDir
from lamini.train.config import TrainConfig

log = logging.getLogger(__name__)

# Fault injection for tests and drills: the worker of this rank exits hard at this step, once
# per marker file (so the restarted attempt runs through).
FAIL_AT_STEP_ENV = "LAMINI_TRAIN_FAIL_AT_STEP"
FAIL_MARKER_ENV = "LAMINI_TRAIN_FAIL_MARKER"


@dataclass
class TrainState:
    epoch: int = 0
    micro_in_epoch: int = 0  # micro batches of this epoch already trained on (per worker)
    tokens_seen: int = 0  # over all workers
    history: list[dict[str, Any]] = field(default_factory=list)


def _rows(shard, cfg: TrainConfig, epoch: int) -> Iterator[tuple[str, str]]:
    kw: dict[str, Any] = {"batch_size": 256, "batch_format": "pyarrow"}
    if cfg.data.shuffle_buffer_rows:
        kw.update(local_shuffle_buffer_size=cfg.data.shuffle_buffer_rows, local_shuffle_seed=cfg.seed + epoch)
    for batch in shard.iter_batches(**kw):
        yield from zip(batch.column("instruction").to_pylist(), batch.column("response").to_pylist())


def _synced_steps(micro_iter: Iterator[dict], accum: int, world: int, device) -> Iterator[list[dict]]:
    """Groups of exactly `accum` micro batches, ending on every rank as soon as one rank runs out.

    Workers' shards can yield different numbers of micro batches (rows dropped by truncation,
    packing); a rank that ran out while another still steps would hang the collectives.
    """
    import torch
    import torch.distributed as dist

    while True:
        group = list(islice(micro_iter, accum))
        have = torch.tensor([1 if len(group) == accum else 0], device=device)
        if world > 1:
            dist.all_reduce(have, op=dist.ReduceOp.MIN)
        if not int(have.item()):
            return
        yield group


def _all_sum(values: list[float], world: int, device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return [float(x) for x in t.tolist()]


def fault_injection_from_env() -> dict[str, str] | None:
    """Read on the driver and passed in the loop config: Ray workers may not inherit the driver's env."""
    at, marker = os.environ.get(FAIL_AT_STEP_ENV), os.environ.get(FAIL_MARKER_ENV)
    return {"at_step": at, "marker": marker} if at and marker else None


def _maybe_fail(fault: dict[str, str] | None, step: int, rank: int) -> None:
    if not fault:
        return
    at, marker = fault["at_step"], fault["marker"]
    if step == int(at) and rank == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        log.error("fault injection: rank %d exits at step %d", rank, step)
        os._exit(17)


def train_loop_per_worker(loop_cfg: dict[str, Any]) -> None:
    import ray.train
    import torch

    from lamini.models.loading import count_params, load_student, load_tokenizer
    from lamini.train.data import (
        ExampleEncoder,
        batch_token_split,
        micro_batches,
        pad_token_id,
    )
    from lamini.train.flops import (
        device_peak_flops,
        flops_utilisation,
        param_split,
        train_flops,
    )
    from lamini.train.strategy import (
        DeepSpeedStrategy,
        deepspeed_config,
        resolve_precision,
    )

    cfg = TrainConfig.model_validate(loop_cfg["config"])
    family, total_steps, lr = loop_cfg["family"], int(loop_cfg["total_steps"]), float(loop_cfg["lr"])
    max_epochs = loop_cfg["max_epochs"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    use_gpu = cfg.scaling.use_gpu
    if not use_gpu:
        torch.set_num_threads(max(1, int(cfg.scaling.cpus_per_worker)))
    torch.manual_seed(cfg.seed)
    precision = resolve_precision(cfg.precision, use_gpu)

    tokenizer = load_tokenizer(cfg.model)
    strategy = DeepSpeedStrategy(deepspeed_config(cfg, lr=lr, total_steps=total_steps, use_gpu=use_gpu))
    strategy.model_init_context()
    model = load_student(cfg.model, family)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    n_params = count_params(model)
    n_enc, n_dec = param_split(model)  # encoder-decoder: source and target tokens cost differently
    seq2seq = family == "encoder-decoder"
    engine = strategy.setup(model, cfg.optim.weight_decay)
    device = engine.device
    peak, peak_source = device_peak_flops(precision, cfg.peak_tflops)

    state = TrainState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            client = strategy.load(d)
        state = TrainState(**client.get("lamini", {}))
        # print, not log: a Ray worker's stdout reaches the driver's console, its INFO logs do not
        print(f"lamini train: rank {rank} resumed at step {strategy.global_step} (epoch {state.epoch})", flush=True)

    run = RunDir(loop_cfg["run_root"]) if rank == 0 else None  # rank 0 writes the metrics and the export
    shard = ray.train.get_dataset_shard("train")
    pad_id = pad_token_id(tokenizer)
    accum = cfg.grad_accum_steps
    window = {"loss": 0.0, "micro": 0, "tokens": 0, "flops": 0.0, "steps": 0}
    t_window = time.perf_counter()
    t_start = time.perf_counter()

    def report(step: int, final: bool) -> None:
        nonlocal t_window
        loss_sum, n_micro, tokens, flops = _all_sum(
            [float(window["loss"]), window["micro"], window["tokens"], window["flops"]], world, device
        )
        dt = time.perf_counter() - t_window
        state.tokens_seen += int(tokens)
        tps = tokens / dt if dt > 0 else 0.0
        metrics = {
            "step": step,
            "total_steps": total_steps,
            "epoch": state.epoch,
            "loss": loss_sum / max(n_micro, 1),
            "lr": strategy.lr(),
            "tokens_per_s": tps,
            "tokens_seen": state.tokens_seen,
            "window_steps": window["steps"],
            "window_s": dt,
            "mfu": flops_utilisation(flops / dt, peak, world) if dt > 0 else None,
            "n_params": n_params,
            "n_params_encoder": n_enc,
            "peak_flops_source": peak_source,
        }
        save = final or step % cfg.checkpoint_every_n_steps == 0
        metrics["checkpoint"] = save
        metrics["elapsed_s"] = time.perf_counter() - t_start  # wall time incl. reports and checkpoints
        state.history.append(metrics)
        if save:
            with tempfile.TemporaryDirectory() as tmp:
                strategy.save(tmp, client_state={"lamini": asdict(state)})
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if os.listdir(tmp) else None)
        else:
            ray.train.report(metrics)
        if run is not None:  # after the report: a "checkpoint" entry in the file is one already stored
            run.write_text("metrics.jsonl", "".join(json.dumps(h) + "\n" for h in state.history))
        window.update(loss=0.0, micro=0, tokens=0, flops=0.0, steps=0)
        t_window = time.perf_counter()

    encoder = ExampleEncoder(tokenizer, family, cfg.data)
    engine.train()
    while strategy.global_step < total_steps and state.epoch < max_epochs:
        micro = micro_batches(encoder.examples(_rows(shard, cfg, state.epoch)), cfg.micro_batch_size, pad_id)
        for _ in islice(micro, state.micro_in_epoch):  # already trained on before the restart
            pass
        stepped = False
        for group in _synced_steps(micro, accum, world, device):
            for mb in group:
                enc_tokens, dec_tokens = batch_token_split(mb, seq2seq)  # counted on the host: no GPU sync
                window["tokens"] += enc_tokens + dec_tokens
                window["flops"] += train_flops(n_enc, n_dec, enc_tokens, dec_tokens)
                mb = {k: v.to(device, non_blocking=True) for k, v in mb.items()}
                loss = engine(**mb).loss
                engine.backward(loss)
                engine.step()
                window["loss"] += loss.detach()  # stays on the device until the report
                window["micro"] += 1
            stepped = True
            window["steps"] += 1
            state.micro_in_epoch += accum
            step = strategy.global_step
            _maybe_fail(loop_cfg.get("fault"), step, rank)
            final = step >= total_steps
            if final or step % cfg.log_every_n_steps == 0 or step % cfg.checkpoint_every_n_steps == 0:
                report(step, final)
            if final:
                break
        else:
            state.epoch += 1
            state.micro_in_epoch = 0
            if not stepped:  # an empty epoch: fewer rows than one optimiser step
                log.warning("rank %d: epoch had no full optimiser step; stopping", rank)
                break
    if window["steps"]:  # steps since the last report (data ran out before total_steps)
        report(strategy.global_step, final=True)

    if rank == 0:
        log.info(
            "rank 0 done: step %d, %.0f s, %s", strategy.global_step, time.perf_counter() - t_start, encoder.stats
        )
    if cfg.export:
        training = training_summary(cfg, family, state, strategy.global_step, total_steps, lr, precision)
        _export(cfg, strategy, engine, tokenizer, precision, run, family, training)


def training_summary(
    cfg: TrainConfig, family: str, state: TrainState, steps: int, total_steps: int, lr: float, precision: str
) -> dict[str, Any]:
    """The training settings and outcome the model card states (every value a builtin)."""
    d = cfg.data
    lengths = (
        {"max_length": d.max_length, "packing": d.packing}
        if family == "decoder"
        else {"max_source_length": d.max_source_length, "max_target_length": d.max_target_length}
    )
    return {
        "steps": steps,
        "planned_steps": total_steps,
        "epochs_completed": state.epoch,
        "epochs_planned": None if cfg.max_steps else cfg.epochs,
        "global_batch_size": cfg.global_batch_size,
        "micro_batch_size": cfg.micro_batch_size,
        "workers": cfg.scaling.num_workers,
        "learning_rate": lr,
        "lr_schedule": f"warmup {cfg.optim.warmup_ratio:g} of the steps, cosine to {cfg.optim.min_lr_ratio:g} x peak",
        "weight_decay": cfg.optim.weight_decay,
        "precision": precision,
        "zero_stage": cfg.deepspeed.zero_stage,
        **lengths,
        "tokens_seen": state.tokens_seen,
        "final_loss": float(state.history[-1]["loss"]) if state.history else None,
        "seed": cfg.seed,
    }


def _export(
    cfg: TrainConfig, strategy, engine, tokenizer, precision: str, run: RunDir | None, family: str,
    training: dict[str, Any],
) -> None:
    """Consolidate (ZeRO-3: gather shards; collective) and write a Hugging Face folder to run/model,
    with its model card (README.md).

    Every rank takes part in the gathering; `run` is the run directory on rank 0, None elsewhere."""
    import pyarrow.fs as pafs
    import torch

    from lamini.models.card import describe_base, write_model_card

    state_dict = strategy.consolidated_state_dict()
    if run is None:
        return
    dtype = cfg.export_dtype
    if dtype == "auto":
        dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
    target = getattr(torch, dtype)
    state_dict = {k: (v.to(target) if v.is_floating_point() else v).cpu() for k, v in state_dict.items()}
    model = engine.module
    model.config.use_cache = True
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        base, note = describe_base(cfg.model.base, cfg.model.gguf_file)
        write_model_card(tmp, base_model=base, base_model_note=note, family=family, training=training,
                         datasets=[c.path for c in cfg.data.corpora], name=posixpath.basename(run.uri))  # fmt: skip
        dest = run.path("model")
        if run.exists("model"):
            run.fs.delete_dir(dest)
        run.fs.create_dir(dest, recursive=True)
        pafs.copy_files(tmp, dest, destination_filesystem=run.fs)
    print(f"lamini train: exported the {dtype} model to {run.uri_of('model')}", flush=True)


def epoch_sequences(kept_examples: int, example_tokens: int, cfg: TrainConfig, family: str) -> int:
    """Training sequences one epoch gives, over all workers, from the examples its rows encode to.

    Without packing each kept example is a sequence (rows whose truncation left nothing to learn
    are already left out). With packing each worker concatenates its own examples and cuts
    max_length sequences, the last one partial: Ray Train splits the rows equally (streaming_split
    with equal=True), so a worker packs about 1/workers of the tokens into
    ceil(tokens / workers / max_length) sequences. The real shares differ by a few rows, so a
    worker may run out a step early (the epoch then ends there; see _synced_steps).
    """
    if not (cfg.data.packing and family == "decoder"):
        return kept_examples
    workers = cfg.scaling.num_workers
    return workers * math.ceil(example_tokens / workers / cfg.data.max_length)


def plan_steps(n_sequences: int, cfg: TrainConfig) -> tuple[int, float]:
    """(total optimiser steps, epochs to iterate) for the sequences an epoch gives and the config.

    n_sequences counts what the workers train on (epoch_sequences: packed sequences with packing,
    rows left after truncation drops), not input rows: with packing there are several times fewer,
    and counting rows would plan steps that the epochs never reach, so the cosine schedule would
    stop before it decays. Each worker's shard holds n_sequences / workers; a step takes
    global_batch_size of them. With max_steps the epochs are unbounded (the data repeats until
    the step count is reached).
    """
    steps_per_epoch = n_sequences // cfg.global_batch_size
    if cfg.max_steps:
        return cfg.max_steps, math.inf
    if steps_per_epoch == 0:
        raise ValueError(
            f"the data gives {n_sequences} training sequences per epoch, fewer than one global batch "
            f"({cfg.global_batch_size}); lower global_batch_size or add data"
        )
    return max(1, int(steps_per_epoch * cfg.epochs)), math.ceil(cfg.epochs)
