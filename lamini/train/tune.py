"""`lamini tune`: Ray Tune over `lamini train` runs, with ASHA early stopping.

Ray 2.60 runs Train V2, where a TorchTrainer is not itself a Tune trainable: each trial is a
function trainable that builds and fits its own TorchTrainer, and Ray's TuneReportCallback
forwards every `ray.train.report` (metrics and checkpoint path) to Tune, so ASHA can stop a
trial between reports. The trial function asks for a sliver of a CPU: its workers hold the resources.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from lamini.train.config import TrainConfig, TuneConfig

log = logging.getLogger(__name__)


@dataclass
class TuneSummary:
    run_dir: str
    trials: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    wall_s: float = 0.0
    missing: int = 0  # trials that errored

    def line(self) -> str:
        best = (
            f"best {self.best['metric']} {self.best[self.best['metric']]:.4f} with {self.best['params']}"
            if self.best
            else "no trial finished"
        )
        return f"tune: {len(self.trials)} trials ({self.missing} failed), {best}, {self.wall_s:.0f} s -> {self.run_dir}"


def apply_params(train: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's TrainConfig dict: the base one with the sampled hyperparameters set."""
    out = json.loads(json.dumps(train))
    if "lr" in params:
        out.setdefault("optim", {})["lr"] = params["lr"]
    for key in ("global_batch_size", "epochs"):
        if key in params:
            out[key] = params[key]
    return out


def best_checkpoint(
    rows: list[dict[str, Any]], metric: str, mode: str, exists: Callable[[str], bool]
) -> dict[str, Any] | None:
    """The best reported checkpoint still in storage: {"path", "step", "metric", "value"}, or None.

    rows are a trial's reports (Tune's metrics dataframe); those that carried a checkpoint have its
    checkpoint_path. Trials keep their best checkpoints by this metric (build_trainer's
    checkpoint_score) and Ray Train also keeps the newest, so the best one is normally on disk;
    checking is what makes the answer sure whatever Ray deleted (ties, NaN, keep_checkpoints).
    Ties go to the later step, as Ray's own ordering does.
    """
    sign = 1.0 if mode == "min" else -1.0
    best = None
    for r in rows:
        path, value = r.get("checkpoint_path"), r.get(metric)
        if not isinstance(path, str) or not isinstance(value, numbers.Real) or math.isnan(value):
            continue
        if best is not None and sign * value > sign * best["value"]:
            continue
        if not exists(path):  # deleted by Ray's num_to_keep
            continue
        best = {"path": path, "step": r.get("step"), "metric": metric, "value": value}
    return best


def _trial(config: dict[str, Any]) -> None:
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from lamini.train.trainer import build_dataset, build_trainer, build_validation

    cfg = TrainConfig.model_validate(apply_params(config["train"], config["params"]))
    name = f"trial_{ray.tune.get_context().get_trial_id()}"
    trainer, _ = build_trainer(
        cfg, build_dataset(cfg), build_validation(cfg), run_root_name=name, callbacks=[TuneReportCallback()],
        checkpoint_score=config["checkpoint_score"],  # keep the best checkpoints, not only the newest
    )
    trainer.fit()


def search_space(cfg: TuneConfig) -> dict[str, Any]:
    from ray import tune

    s = cfg.search
    space: dict[str, Any] = {}
    if s.lr:
        space["lr"] = tune.loguniform(*s.lr)
    if s.global_batch_size:
        space["global_batch_size"] = tune.choice(s.global_batch_size)
    if s.epochs:
        space["epochs"] = tune.choice(s.epochs)
    return space


def run_tune(cfg: TuneConfig) -> TuneSummary:
    import pyarrow.fs as pafs
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from lamini.runs.ray_env import init_ray
    from lamini.runs.rundir import RunDir

    t0 = time.perf_counter()
    # Tune stops trials by killing them; their Ray Train workers are then released by Train's
    # placement-group cleaner, which polls the State API: a local Ray needs its dashboard for that.
    init_ray(cfg.train.ray, dashboard=True)
    rd = RunDir(cfg.run_dir)
    train = cfg.train.model_dump(mode="json")
    train["run_dir"] = rd.uri_of("trials")
    a, metric = cfg.asha, cfg.metric
    tuner = tune.Tuner(
        # Tune refuses an empty request; a sliver of a CPU leaves the cores to the trial's workers.
        tune.with_resources(_trial, {"cpu": 0.01}),
        param_space={"train": train, "params": search_space(cfg), "checkpoint_score": [metric, a.mode]},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(
                time_attr="step",
                metric=metric,
                mode=a.mode,
                max_t=a.max_t,
                grace_period=a.grace_period,
                reduction_factor=a.reduction_factor,
            ),
            search_alg=BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent_trials),
            num_samples=cfg.num_samples,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=rd.uri),
    )
    grid = tuner.fit()
    summary = TuneSummary(run_dir=rd.uri)

    def exists(path: str) -> bool:  # checkpoint paths are on the trials' storage filesystem, rd.fs
        return rd.fs.get_file_info(path).type == pafs.FileType.Directory

    for result in grid:
        df = result.metrics_dataframe
        rows = df.to_dict("records") if df is not None else []
        last = result.metrics or {}
        trial = {
            "trial_id": last.get("trial_id"),
            "params": result.config.get("params", {}),
            "steps": last.get("step"),
            "loss": last.get("loss"),
            metric: last.get(metric),
            "stopped_early": last.get("step", 0) < last.get("total_steps", 0),
            "history": [{"step": r.get("step"), "loss": r.get("loss"), metric: r.get(metric)} for r in rows],
            "best_checkpoint": best_checkpoint(rows, metric, a.mode, exists),
            "error": repr(result.error) if result.error else None,
        }
        summary.trials.append(trial)
        summary.missing += trial["error"] is not None
    done = [t for t in summary.trials if t[metric] is not None and not math.isnan(t[metric])]
    if done:
        best = min(done, key=lambda t: t[metric] * (1 if a.mode == "min" else -1))
        summary.best = {k: best[k] for k in ("trial_id", "params", "loss", metric, "best_checkpoint")}
        summary.best["metric"] = metric
    summary.wall_s = time.perf_counter() - t0
    rd.write_text("tune_summary.json", json.dumps(asdict(summary), indent=2, default=str))
    print(summary.line(), flush=True)
    return summary

