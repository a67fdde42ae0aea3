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
# For tests and audits: a folder where every rank appends, per optimiser step, a digest of each
# micro batch's token ids (trace-rank<r>.jsonl): what was trained on, in which order.
TRACE_ENV = "LAMINI_TRAIN_TRACE_DIR"


@dataclass
class TrainState:
    epoch: int = 0
    micro_in_epoch: int = 0  # micro batches of this epoch already trained on (per worker)
    tokens_seen: int = 0  # over all workers
    history: list[dict[str, Any]] = field(default_factory=list)


def _rows(shard, cfg: TrainConfig, epoch: int) -> Iterator[tuple[str, str]]:
    kw: dict[str, Any] = {"batch_size": 256, "batch_format": "pyarrow"}  # rows as the dataset orders them
    if cfg.data.shuffle_buffer_rows:
        kw.update(local_shuffle_buffer_size=cfg.data.shuffle_buffer_rows, local_shuffle_seed=cfg.seed + epoch)
    for batch in shard.iter_batches(**kw):
        yield from zip(batch.column("instruction").to_pylist(), batch.column("response").to_pylist())


def fault_injection_from_env() -> dict[str, str] | None:
    """Read on the driver and passed in the loop config: Ray workers may not inherit the driver's env."""
    at, marker = os.environ.get(FAIL_AT_STEP_ENV), os.environ.get(FAIL_MARKER_ENV)
    return {"at_step": at, "marker": marker} if at and marker else None


def trace_dir_from_env() -> str | None:
    return os.environ.get(TRACE_ENV) or None


def _trace(trace_dir: str | None, rank: int, step: int, epoch: int, group: list[dict]) -> None:
    if not trace_dir:
        return
    import hashlib

    digests = [hashlib.sha1(mb["input_ids"].numpy().tobytes()).hexdigest()[:16] for mb in group]
    with open(os.path.join(trace_dir, f"trace-rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps({"step": step, "epoch": epoch, "micro": digests}) + "\n")


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
        model_inputs,
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
    from lamini.train.sync import all_sum, synced_steps

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
    if cfg.lora:
        from lamini.train.lora import wrap

        model = wrap(model, cfg.lora, family, cfg.gradient_checkpointing)
    n_params = count_params(model)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
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

    def shard(epoch: int):
        # data.shuffle: each epoch has its own dataset, shuffled with a seed of (seed, epoch)
        return ray.train.get_dataset_shard(f"train_{epoch}" if loop_cfg["epoch_datasets"] else "train")

    validation = cfg.validation
    val_every = (validation.every_n_steps or cfg.log_every_n_steps) if validation else None
    val_encoder = ExampleEncoder(tokenizer, family, cfg.data) if validation else None  # its own stats
    pad_id = pad_token_id(tokenizer)
    accum = cfg.grad_accum_steps
    window = {"loss": 0.0, "micro": 0, "tokens": 0, "flops": 0.0, "steps": 0}
    t_window = time.perf_counter()
    t_start = time.perf_counter()

    def report(step: int, final: bool) -> None:
        nonlocal t_window
        loss_sum, n_micro, tokens, flops = all_sum(
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
            "n_params_trainable": n_trainable,
            "n_params_encoder": n_enc,
            "peak_flops_source": peak_source,
        }
        save = final or step % cfg.checkpoint_every_n_steps == 0
        if validation and (save or step % val_every == 0):  # every checkpoint is scored by it
            from lamini.train.validation import evaluate

            t_eval = time.perf_counter()
            metrics.update(evaluate(engine, ray.train.get_dataset_shard("validation"), val_encoder,
                                    cfg.micro_batch_size, pad_id, world, device, seq2seq))  # fmt: skip
            metrics["eval_s"] = time.perf_counter() - t_eval
        metrics["checkpoint"] = save
        metrics["elapsed_s"] = time.perf_counter() - t_start  # wall time incl. reports and checkpoints
        metrics["time"] = time.time()  # when (Unix time): lines up with other logs and monitors
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
        micro = micro_batches(encoder.examples(_rows(shard(state.epoch), cfg, state.epoch)), cfg.micro_batch_size, pad_id)
        for _ in islice(micro, state.micro_in_epoch):  # already trained on before the restart
            pass
        stepped = False
        for group in synced_steps(micro, accum, world, device):
            for mb in group:
                enc_tokens, dec_tokens = batch_token_split(mb, seq2seq)  # counted on the host: no GPU sync
                window["tokens"] += enc_tokens + dec_tokens
                window["flops"] += train_flops(n_enc, n_dec, enc_tokens, dec_tokens)
                loss = engine(**model_inputs(mb, device)).loss
                engine.backward(loss)
                engine.step()
                window["loss"] += loss.detach()  # stays on the device until the report
                window["micro"] += 1
            stepped = True
            window["steps"] += 1
            state.micro_in_epoch += accum
            step = strategy.global_step
            _trace(loop_cfg.get("trace"), rank, step, state.epoch, group)
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
        "final_eval_loss": state.history[-1].get("eval_loss") if state.history else None,
        "shuffle": cfg.data.shuffle,
        "seed": cfg.seed,
        "lora": _lora_line(cfg),
    }


def _lora_line(cfg: TrainConfig) -> str | None:
    lo = cfg.lora
    if lo is None:
        return None
    targets = lo.target_modules if isinstance(lo.target_modules, str) else ",".join(lo.target_modules or ["default"])
    return f"r={lo.r}, alpha={lo.alpha:g}, dropout={lo.dropout:g}, modules={targets}, exported {lo.export}"


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
    model = engine.module
    if cfg.lora:  # merged into an ordinary model, or the adapter alone (its own weights, as trained)
        from lamini.train.lora import export_model

        model, state_dict = export_model(model, state_dict, cfg, family, zero3=strategy.zero_stage == 3)
    saved = {"safe_serialization": True}
    if state_dict is not None:
        saved["state_dict"] = {k: (v.to(target) if v.is_floating_point() else v).cpu() for k, v in state_dict.items()}
    model.config.use_cache = True
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, **saved)
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


def epoch_sequences(kept_examples: int, packed_sequences: int, cfg: TrainConfig, family: str) -> int:
    """Training sequences one epoch gives, over all workers, from what its rows encode to.

    Without packing each kept example is a sequence (rows whose truncation left nothing to learn
    are already left out). With packing it is the sequences lamini.train.data.pack makes of the
    examples in the order they were measured; a worker packs its own shard in the epoch's
    (shuffled) order, so the real count differs by a little either way, and the loop may take the
    last steps of the plan from one more pass (see plan_steps).
    """
    if not (cfg.data.packing and family == "decoder"):
        return kept_examples
    return packed_sequences


def plan_steps(n_sequences: int | None, cfg: TrainConfig) -> tuple[int, float]:
    """(total optimiser steps, epochs to iterate) for the sequences an epoch gives and the config.

    n_sequences counts what the workers train on (epoch_sequences: packed sequences with packing,
    rows left after truncation drops), not input rows: with packing there are several times fewer,
    and counting rows would plan steps that the epochs never reach, so the cosine schedule would
    stop before it decays. Each worker's shard holds n_sequences / workers; a step takes
    global_batch_size of them. With max_steps the epochs are unbounded (the data repeats until
    the step count is reached), or, when n_sequences is known, as many as the steps need.

    One pass more than the plan is allowed when the count is an estimate (packing; several
    workers, whose shards may end a step early): the last planned steps then come from it, so
    the learning-rate schedule always runs to its end.
    """
    if n_sequences is None:  # a max_steps run that did not count: unbounded passes
        assert cfg.max_steps, "an epochs run needs the sequence count"
        return cfg.max_steps, math.inf
    steps_per_epoch = n_sequences // cfg.global_batch_size
    margin = int(cfg.data.packing or cfg.scaling.num_workers > 1)
    if cfg.max_steps:
        if steps_per_epoch == 0:
            # Fewer sequences than one global batch. The loop still steps when each worker's
            # shard fills `accum` micro batches, the last one smaller (micro_batches keeps it), so
            # an epoch may give a step; each epoch's shuffled dataset must then exist (a herd's
            # small ablation sample hit this: "Dataset shard for 'train_1' not found").
            micro = math.ceil(n_sequences // cfg.scaling.num_workers / cfg.micro_batch_size)
            loop_steps = micro // cfg.grad_accum_steps
            if loop_steps == 0:  # every epoch is empty: the loop stops after the first
                return cfg.max_steps, 1
            return cfg.max_steps, math.ceil(cfg.max_steps / loop_steps) + margin
        return cfg.max_steps, math.ceil(cfg.max_steps / steps_per_epoch) + margin
    if steps_per_epoch == 0:
        raise ValueError(
            f"the data gives {n_sequences} training sequences per epoch, fewer than one global batch "
            f"({cfg.global_batch_size}); lower global_batch_size or add data"
        )
    return max(1, int(steps_per_epoch * cfg.epochs)), math.ceil(cfg.epochs) + margin
