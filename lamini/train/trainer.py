"""`lamini train`: build the Ray Data input and a TorchTrainer, fit, and summarise.

Layout of a training run (run_dir/name, local path or URI; Ray Train's own files live here too):
    checkpoint_*/          resumable DeepSpeed checkpoints (every rank's shards), newest `keep_checkpoints`
                           (tune trials: the best `keep_checkpoints` by the ASHA metric, and the newest)
    metrics.jsonl          one line per report: step, epoch, loss, lr, tokens/s, MFU
    model/                 the exported Hugging Face folder (weights consolidated, tokenizer included)
    report/loss.png        loss and learning-rate curves
    manifest.json          config, model, data size, steps, final metrics, environment
Re-running the same command resumes from the newest checkpoint (Ray Train restores a run whose
name and storage path match); FailureConfig restarts a failed worker group within one run.
"""

from __future__ import annotations

import json
import logging
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

    def line(self) -> str:
        tps = f"{self.tokens_per_s:,.0f} tok/s" if self.tokens_per_s else "n/a tok/s"
        loss = f"loss {self.first_loss:.3f} -> {self.final_loss:.3f}" if self.final_loss is not None else "no loss"
        return (
            f"train: {self.family} student, {self.rows} rows, step {self.steps}/{self.total_steps}, {loss}, "
            f"{tps}, {self.wall_s:.0f} s -> {self.model_dir or self.run_dir}"
        )


def _with_response(table):
    """The rows whose response is neither null nor empty (a comparison with null is null: dropped)."""
    import pyarrow.compute as pc

    return table.filter(pc.not_equal(table["response"], ""))


def build_dataset(cfg: TrainConfig):
    """Ray Dataset with columns (instruction, response) from the configured corpora.

    LaMini-format Parquet streams with ray.data.read_parquet (never whole on the driver); other
    formats go through lamini.corpus, whose readers validate and join '$instruction:$input'.
    Rows without a response cannot teach anything and are left out.
    """
    import pyarrow as pa
    import ray.data

    from lamini.corpus import RejectLog, read_corpora
    from lamini.corpus.schema import INSTRUCTION, LAMINI_FROM_CORPUS, RESPONSE

    parts = []
    others = [s for s in cfg.data.corpora if s.format != "lamini"]
    for spec in cfg.data.corpora:
        if spec.format == "lamini":
            ds = ray.data.read_parquet(spec.path).select_columns([INSTRUCTION, RESPONSE])  # pushed into the read
            ds = ds.map_batches(_with_response, batch_format="pyarrow")  # fused into the read tasks
            parts.append(ds.limit(spec.limit) if spec.limit else ds)
    if others:
        table = read_corpora(others, on_error="raise", rejects=RejectLog())
        table = pa.table({c: table[LAMINI_FROM_CORPUS[c]] for c in (INSTRUCTION, RESPONSE)})
        parts.append(ray.data.from_arrow(_with_response(table)))
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    if cfg.data.limit:
        ds = ds.limit(cfg.data.limit)
    return ds


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
    kept, tokens = _ENCODERS[key].measure(rows)
    return {k: np.array([v], dtype=np.int64) for k, v in (("rows", batch.num_rows), ("kept", kept), ("tokens", tokens))}


def count_sequences(dataset, cfg: TrainConfig, family: str) -> tuple[int, int]:
    """(rows, training sequences one epoch gives the workers) (lamini.train.loop.epoch_sequences).

    Encodes every row once, as the workers will, in parallel Ray Data tasks, and sums the examples
    kept and their tokens: the step plan of an epochs run must count packed sequences and leave
    out the rows truncation drops, which the row count cannot tell. Costs one extra tokenisation
    pass over the data (small next to the epochs of training), which counts the rows as well;
    max_steps runs skip it.
    """
    from lamini.train.loop import epoch_sequences

    parts = dataset.map_batches(
        _measure_batch,
        fn_kwargs={"config_json": cfg.model_dump_json(), "family": family},
        batch_format="pyarrow",
        batch_size=2048,
    )
    rows = kept = tokens = 0
    for row in parts.iter_rows():
        rows += int(row["rows"])
        kept += int(row["kept"])
        tokens += int(row["tokens"])
    return rows, epoch_sequences(kept, tokens, cfg, family)


def _warn_if_no_cpu_left_for_reading(cfg: TrainConfig) -> None:
    """LaMini Parquet streams through Ray Data read tasks while the workers train: if the workers
    take every CPU of the cluster, those tasks never start and training waits forever (seen on a
    2-CPU Ray with one 2-CPU worker). Said up front; not an error, an autoscaling cluster
    may still add a node."""
    import ray

    if not any(s.format == "lamini" for s in cfg.data.corpora):
        return
    total = float(ray.cluster_resources().get("CPU", 0))
    taken = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker
    if total - taken < 1:
        msg = (f"lamini train: the {cfg.scaling.num_workers} workers take {taken:g} of the cluster's {total:g} CPUs; "
               "Ray Data needs at least one more to read the Parquet data, or training waits for it. "
               "Lower scaling.cpus_per_worker or add a node.")  # fmt: skip
        log.warning(msg)
        print(msg, flush=True)


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
    run_root_name: str | None = None,
    callbacks: list | None = None,
    checkpoint_score: tuple[str, str] | None = None,
):
    """(TorchTrainer, loop config) for a TrainConfig and its dataset.

    checkpoint_score: (metric, mode) to keep the best checkpoints by, instead of the newest.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from lamini.models.loading import resolve_family
    from lamini.train.config import DEFAULT_LR
    from lamini.train.loop import (
        fault_injection_from_env,
        plan_steps,
        train_loop_per_worker,
    )

    family = resolve_family(cfg.model)
    # Epochs runs plan their steps from the sequences the workers will see (one pass that counts
    # the rows too); max_steps runs need only the row count.
    if cfg.max_steps:
        n_rows, n_sequences = dataset.count(), None
    else:
        n_rows, n_sequences = count_sequences(dataset, cfg, family)
    total_steps, max_epochs = plan_steps(n_rows if n_sequences is None else n_sequences, cfg)
    name = run_root_name or cfg.name
    storage = RunDir(cfg.run_dir)
    run_root = storage.uri_of(name)
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker, **sc.resources_per_worker}
    if sc.use_gpu:
        resources["GPU"] = 1
    _warn_if_no_cpu_left_for_reading(cfg)
    loop_cfg = {
        "config": cfg.model_dump(mode="json"),
        "family": family,
        "total_steps": total_steps,
        "max_epochs": max_epochs,
        "lr": cfg.optim.lr or DEFAULT_LR[family],
        "run_root": run_root,
        "rows": n_rows,
        "sequences_per_epoch": n_sequences,
        "fault": fault_injection_from_env(),
    }
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
        datasets={"train": dataset},
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


def run_train(cfg: TrainConfig) -> TrainSummary:
    """Fit one student; re-running the same config resumes from its newest checkpoint."""
    from lamini.runs import manifest as mf
    from lamini.runs.ray_env import init_ray

    t0 = time.perf_counter()
    init_ray(cfg.ray)
    dataset = build_dataset(cfg)
    trainer, loop_cfg = build_trainer(cfg, dataset)
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
