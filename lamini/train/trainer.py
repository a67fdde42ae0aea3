"""`lamini train`: build the Ray Data input and a TorchTrainer, fit, and summarise.

Layout of a training run (run_dir/name, local path or URI; Ray Train's own files live here too):
    checkpoint_*/          resumable DeepSpeed checkpoints (every rank's shards), newest `keep_checkpoints`
                           (with validation: the best by eval_loss; tune trials: by the ASHA metric; and the newest)
    metrics.jsonl          one line per report: step, epoch, loss, lr, tokens/s, MFU (+ eval_loss)
    model/                 the exported Hugging Face folder (weights consolidated, tokenizer included)
    report/loss.png        loss and learning-rate curves
    manifest.json          config, model, data size, steps, final metrics, environment
Re-running the same command resumes from the newest checkpoint (Ray Train restores a run whose
name and storage path match); FailureConfig restarts a failed worker group within one run.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from lamini.runs.rundir import RunDir
from lamini.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainSummary:
    run_dir: str
    model_dir: str | None
    family: str
    rows: int
    steps: int
    total_steps: int
    final_loss: float | None
    first_loss: float | None
    tokens_per_s: float | None
    mfu: float | None
    wall_s: float
    missing: int = 0
    eval_loss: float | None = None  # on the validation rows, at the last step
    best_checkpoint: dict[str, Any] | None = None  # {"path", "step", "eval_loss"}: the lowest eval_loss kept

    def line(self) -> str:
        tps = f"{self.tokens_per_s:,.0f} tok/s" if self.tokens_per_s else "n/a tok/s"
        loss = f"loss {self.first_loss:.3f} -> {self.final_loss:.3f}" if self.final_loss is not None else "no loss"
        if self.eval_loss is not None:
            loss += f", eval_loss {self.eval_loss:.3f}"
            if self.best_checkpoint:
                loss += f" (best {self.best_checkpoint['eval_loss']:.3f} at step {self.best_checkpoint['step']})"
        return (
            f"train: {self.family} student, {self.rows} rows, step {self.steps}/{self.total_steps}, {loss}, "
            f"{tps}, {self.wall_s:.0f} s -> {self.model_dir or self.run_dir}"
        )


def _with_response(table):
    """The rows whose response is neither null nor empty (a comparison with null is null: dropped)."""
    import pyarrow.compute as pc

    return table.filter(pc.not_equal(table["response"], ""))


def _read(corpora, limit: int | None, hold_out: tuple[float, int, bool] | None = None):
    """Ray Dataset (instruction, response) of corpora, at most `limit` rows, one side of a held-out split.

    LaMini-format Parquet streams with ray.data.read_parquet (never whole on the driver); other
    formats go through lamini.corpus, whose readers validate and join '$instruction:$input', and
    are split on the driver (no Ray task needed to read them). Rows without a response cannot
    teach anything and are left out. hold_out = (fraction, seed, validation side?).
    """
    import pyarrow as pa
    import ray.data

    from lamini.corpus import RejectLog, read_corpora
    from lamini.corpus.schema import INSTRUCTION, LAMINI_FROM_CORPUS, RESPONSE
    from lamini.train.validation import split_table

    parts = []
    others = [s for s in corpora if s.format != "lamini"]
    for spec in corpora:
        if spec.format == "lamini":
            ds = ray.data.read_parquet(spec.path).select_columns([INSTRUCTION, RESPONSE])  # pushed into the read
            ds = ds.map_batches(_with_response, batch_format="pyarrow")  # fused into the read tasks
            parts.append(ds.limit(spec.limit) if spec.limit else ds)
    in_ray = bool(parts)
    if others:
        table = read_corpora(others, on_error="raise", rejects=RejectLog())
        table = _with_response(pa.table({c: table[LAMINI_FROM_CORPUS[c]] for c in (INSTRUCTION, RESPONSE)}))
        if not in_ray:  # all on the driver: limit and split here
            table = table.slice(0, limit) if limit else table
            table = split_table(table, *hold_out) if hold_out else table
        parts.append(ray.data.from_arrow(table))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    if in_ray:
        ds = ds.limit(limit) if limit else ds
        if hold_out:
            ds = ds.map_batches(split_table, fn_args=hold_out, batch_format="pyarrow")
    return ds


def build_dataset(cfg: TrainConfig):
    """The training rows: Ray Dataset with columns (instruction, response), the held-out share left out."""
    v = cfg.validation
    hold_out = (v.fraction, _validation_seed(cfg), False) if v is not None and v.fraction else None
    return _read(cfg.data.corpora, cfg.data.limit, hold_out)


def build_validation(cfg: TrainConfig):
    """The validation rows (None without `validation`), materialized: small, read once, evaluated often."""
    v = cfg.validation
    if v is None:
        return None
    if v.corpora:
        ds = _read(v.corpora, v.max_rows)
    else:
        ds = _read(cfg.data.corpora, cfg.data.limit, (v.fraction, _validation_seed(cfg), True))
        ds = ds.limit(v.max_rows) if v.max_rows else ds
    return ds.materialize()


def _validation_seed(cfg: TrainConfig) -> int:
    return cfg.seed if cfg.validation.seed is None else cfg.validation.seed


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of the run's seed and the epoch only."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(f"lamini-shuffle:{seed}:{epoch}".encode(), digest_size=4).digest(), "big")


def epoch_datasets(dataset, cfg: TrainConfig, n_epochs: int, no_cpu_left: bool) -> dict[str, Any]:
    """The datasets the trainer gets: {"train"}, or with data.shuffle one per epoch, {"train_<e>"}.

    Each epoch's is the data through Ray Data's random_shuffle seeded by (seed, epoch): every run
    (and a resumed one) sees epoch e in the same order, given the same rows read in the same
    blocks (same files and cluster size; read parallelism follows the cluster's CPUs). Ray Train
    creates a dataset's split only when a worker first asks for it, so unused epochs cost nothing.
    no_cpu_left: the workers hold every CPU; the shuffle's tasks then ask for none (they run once
    per epoch, briefly, beside training) instead of waiting forever for one.
    """
    if not cfg.data.shuffle:
        return {"train": dataset}
    remote = {"num_cpus": 0} if no_cpu_left else {}
    return {f"train_{e}": dataset.random_shuffle(seed=epoch_seed(cfg.seed, e), **remote) for e in range(n_epochs)}


# Per Ray worker process: the encoder count_sequences built for a config (Ray reuses the
# processes across tasks, so a tokenizer is loaded once per process, not once per batch).
_ENCODERS: dict[tuple[str, str], Any] = {}


def _measure_batch(batch, config_json: str, family: str) -> dict[str, Any]:
    """One Ray Data batch of rows -> one row: (rows, examples kept, their tokens)."""
    import numpy as np

    from lamini.models.loading import load_tokenizer
    from lamini.train.data import ExampleEncoder

    key = (config_json, family)
    if key not in _ENCODERS:
        cfg = TrainConfig.model_validate_json(config_json)
        _ENCODERS[key] = ExampleEncoder(load_tokenizer(cfg.model), family, cfg.data)
    rows = zip(batch.column("instruction").to_pylist(), batch.column("response").to_pylist())
    kept, packed = _ENCODERS[key].measure(rows)
    return {k: np.array([v], dtype=np.int64) for k, v in (("rows", batch.num_rows), ("kept", kept), ("packed", packed))}


def count_sequences(dataset, cfg: TrainConfig, family: str) -> tuple[int, int]:
    """(rows, training sequences one epoch gives the workers) (lamini.train.loop.epoch_sequences).

    Encodes every row once, as the workers will, in parallel Ray Data tasks, and sums the examples
    kept and the sequences packing makes of them: the step plan of an epochs run must count packed
    sequences and leave out the rows truncation drops, which the row count cannot tell. Costs one
    extra tokenisation pass over the data (small next to the epochs of training), which counts the
    rows as well; max_steps runs without data.shuffle skip it (a shuffled run needs it to know how
    many epochs to shuffle).
    """
    from lamini.train.loop import epoch_sequences

    parts = dataset.map_batches(
        _measure_batch,
        fn_kwargs={"config_json": cfg.model_dump_json(), "family": family},
        batch_format="pyarrow",
        batch_size=2048,
    )
    rows = kept = packed = 0
    for row in parts.iter_rows():
        rows += int(row["rows"])
        kept += int(row["kept"])
        packed += int(row["packed"])
    return rows, epoch_sequences(kept, packed, cfg, family)


def _no_cpu_left_for_data(cfg: TrainConfig) -> bool:
    """Whether the workers take every CPU left (less than one for Ray Data's tasks).

    LaMini Parquet streams through Ray Data read tasks while the workers train: if the workers
    take every CPU, those tasks never start and training waits forever (seen on a 2-CPU Ray with
    one 2-CPU worker). Said up front; not an error, an autoscaling cluster may still add a node.
    The per-epoch shuffle adapts instead (epoch_datasets)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 0))
    taken = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    # What is free now, before the workers start: a Tune trial's own sliver of a CPU counts too.
    if float(ray.available_resources().get("CPU", 0)) - taken >= 1:
        return False
    if any(s.format == "lamini" for s in cfg.data.corpora):
        msg = (f"lamini train: the {cfg.scaling.num_workers} workers take {taken:g} of the cluster's {total:g} CPUs; "
               "Ray Data needs at least one more to read the Parquet data, or training waits for it. "
               "Lower scaling.cpus_per_worker or add a node.")  # fmt: skip
        log.warning(msg)
        print(msg, flush=True)
    return True


def checkpoint_config(cfg: TrainConfig, score: tuple[str, str] | None = None):
    """Ray Train's CheckpointConfig: the newest keep_checkpoints, or the best by a reported metric.

    score = (metric, "min" or "max"), for a tune trial: its best checkpoint is the one worth
    keeping, and ordering by step would delete it once keep_checkpoints newer ones exist. Ray
    Train (V2) never deletes the latest checkpoint either way, so a restart still resumes from
    the newest state.
    """
    import ray.train

    metric, mode = score or ("step", "max")
    return ray.train.CheckpointConfig(
        num_to_keep=cfg.keep_checkpoints, checkpoint_score_attribute=metric, checkpoint_score_order=mode
    )


def build_trainer(
    cfg: TrainConfig,
    dataset,
    validation=None,
    run_root_name: str | None = None,
    callbacks: list | None = None,
    checkpoint_score: tuple[str, str] | None = None,
):
    """(TorchTrainer, loop config) for a TrainConfig, its training rows and its validation rows (or None).

    checkpoint_score: (metric, mode) to keep the best checkpoints by; default: eval_loss with
    validation, else the newest.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from lamini.models.loading import resolve_family
    from lamini.train.config import DEFAULT_LR
    from lamini.train.loop import (
        fault_injection_from_env,
        plan_steps,
        trace_dir_from_env,
        train_loop_per_worker,
    )

    family = resolve_family(cfg.model)
    # Epochs runs plan their steps from the sequences the workers will see (one pass that counts
    # the rows too), and so do shuffled max_steps runs (how many epochs to shuffle); the others
    # need only the row count.
    if cfg.max_steps and not cfg.data.shuffle:
        n_rows, n_sequences = dataset.count(), None
    else:
        n_rows, n_sequences = count_sequences(dataset, cfg, family)
    total_steps, max_epochs = plan_steps(n_sequences, cfg)
    name = run_root_name or cfg.name
    storage = RunDir(cfg.run_dir)
    run_root = storage.uri_of(name)
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    datasets = epoch_datasets(dataset, cfg, 1 if math.isinf(max_epochs) else int(max_epochs),
                              _no_cpu_left_for_data(cfg))  # fmt: skip
    if validation is not None:
        datasets["validation"] = validation
    loop_cfg = {
        "config": cfg.model_dump(mode="json"),
        "family": family,
        "total_steps": total_steps,
        "max_epochs": max_epochs,
        "epoch_datasets": cfg.data.shuffle,
        "lr": cfg.optim.lr or DEFAULT_LR[family],
        "run_root": run_root,
        "rows": n_rows,
        "sequences_per_epoch": n_sequences,
        "fault": fault_injection_from_env(),
        "trace": trace_dir_from_env(),
    }
    if checkpoint_score is None and validation is not None:
        checkpoint_score = ("eval_loss", "min")
    # Rows reach the workers in the plan's order (Ray Data otherwise hands out blocks as tasks
    # finish): with a seeded shuffle, each epoch's order, and its split over the workers, is then
    # the same on every run. Ray's OutputSplitter drops its locality hints for that.
    ingest = ray.train.DataConfig.default_ingest_options()
    ingest.preserve_order = True
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc.num_workers,
            use_gpu=sc.use_gpu,
            resources_per_worker=resources,
            accelerator_type=sc.accelerator_type,
            placement_strategy=sc.placement_strategy,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(execution_options=ingest),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage.uri,
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=checkpoint_config(cfg, checkpoint_score),
            callbacks=callbacks,
        ),
    )
    return trainer, loop_cfg


def read_history(run_root) -> list[dict[str, Any]]:
    """The metrics.jsonl entries of a training run (run_dir/name: a path or URI), oldest first."""

    rd = RunDir(str(run_root))
    if not rd.exists("metrics.jsonl"):
        return []
    return [json.loads(line) for line in rd.read_text("metrics.jsonl").splitlines() if line.strip()]


def plot_history(history: list[dict[str, Any]], rd: RunDir) -> str | None:
    """report/loss.png in the run directory `rd`: loss and learning rate against the step."""
    if not history:
        return None
    from lamini.reporting import new_figure, save_figure

    steps = [h["step"] for h in history]
    fig, ax = new_figure(width=7, height=4, dpi=110)
    ax.plot(steps, [h["loss"] for h in history], marker="o", ms=3, label="loss")
    evals = [(h["step"], h["eval_loss"]) for h in history if h.get("eval_loss") is not None]
    if evals:
        ax.plot(*zip(*evals), marker="s", ms=3, color="tab:green", label="eval loss")
        ax.legend(loc="upper right")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax2 = ax.twinx()
    ax2.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.6, label="learning rate")
    ax2.set_ylabel("learning rate")
    ckpts = [h["step"] for h in history if h.get("checkpoint")]
    for s in ckpts:
        ax.axvline(s, color="grey", lw=0.5, ls=":")
    ax.set_title("training loss (dotted: checkpoints)")
    fig.tight_layout()
    rd.makedirs("report")
    return save_figure(rd, "report/loss.png", fig)


def best_kept_checkpoint(result, metric: str) -> dict[str, Any] | None:
    """The kept checkpoint with the lowest `metric` (Ray Train keeps the best by it: checkpoint_config)."""
    scored = [(m[metric], m["step"], c.path) for c, m in (result.best_checkpoints or []) if m.get(metric) is not None]
    if not scored:
        return None
    value, step, path = min(scored, key=lambda t: (t[0], -t[1]))
    return {"path": path, "step": step, metric: value}


def run_train(cfg: TrainConfig) -> TrainSummary:
    """Fit one student; re-running the same config resumes from its newest checkpoint."""
    from lamini.runs import manifest as mf
    from lamini.runs.ray_env import init_ray

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    dataset = build_dataset(cfg)
    trainer, loop_cfg = build_trainer(cfg, dataset, build_validation(cfg))
    log.info(
        "training %s (%s) on %d rows: %d steps, global batch %d = %d micro x %d accum x %d workers",
        cfg.model.base, loop_cfg["family"], loop_cfg["rows"], loop_cfg["total_steps"], cfg.global_batch_size,
        cfg.micro_batch_size, cfg.grad_accum_steps, cfg.scaling.num_workers,
    )
    result = trainer.fit()
    run_root = loop_cfg["run_root"]
    history = read_history(run_root)
    rd = RunDir(run_root)
    plot = plot_history(history, rd)
    model_dir = rd.uri_of("model") if cfg.export and rd.exists("model", "config.json") else None
    # tokens/s of the steady state: the first window holds start-up (compile, first batches).
    steady = [h for h in history[1:] if h["window_steps"]] or history
    summary = TrainSummary(
        run_dir=run_root,
        model_dir=model_dir,
        family=loop_cfg["family"],
        rows=loop_cfg["rows"],
        steps=history[-1]["step"] if history else 0,
        total_steps=loop_cfg["total_steps"],
        final_loss=history[-1]["loss"] if history else None,
        first_loss=history[0]["loss"] if history else None,
        tokens_per_s=(sum(h["tokens_per_s"] * h["window_s"] for h in steady) / sum(h["window_s"] for h in steady))
        if steady
        else None,
        mfu=history[-1].get("mfu") if history else None,
        wall_s=time.perf_counter() - t0,
        eval_loss=history[-1].get("eval_loss") if history else None,
        best_checkpoint=best_kept_checkpoint(result, "eval_loss") if cfg.validation else None,
    )
    mf.write(
        rd,
        "train",
        cfg,
        family=loop_cfg["family"],
        lr=loop_cfg["lr"],
        rows=loop_cfg["rows"],
        sequences_per_epoch=loop_cfg["sequences_per_epoch"],
        total_steps=loop_cfg["total_steps"],
        latest_checkpoint=result.checkpoint.path if result.checkpoint else None,
        summary=asdict(summary),
        loss_plot=plot,
    )
    print(summary.line(), flush=True)
    return summary
