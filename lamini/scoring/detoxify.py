"""Detoxify scoring on Ray actors: the one scorer behind `lamini filter-toxic`, the dataset stage's
toxicity filter and the RealToxicityPrompts probe.

`score_dataset(ds, settings)` adds a ``tox_<label>_<column>`` score column (`score_column`) per
detoxify label and scored column. `settings.model` is a detoxify model type ("original", ...: those
download their checkpoint on first use) or a .ckpt file (local path or URI); offline, use a
checkpoint whose ``config.arch.args.model_type`` is a local transformers folder
(lamini.testing.tiny_detoxify builds one). A local checkpoint must exist on every node.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Sequence

import pyarrow as pa

from lamini.scoring.config import ToxicitySettings

# The files `lamini filter-toxic` writes (analysis skips them when it reads a run's data).
KEPT = "kept.parquet"
DROPPED = "dropped.parquet"
# detoxify's named models (detoxify.detoxify.MODEL_URLS), listed here so `import lamini`
# and config checks need no torch.
DETOXIFY_MODELS = ("original", "unbiased", "multilingual", "original-small", "unbiased-small")


def score_column(label: str, column: str) -> str:
    """Name of the column holding `label`'s score of text column `column`."""
    return f"tox_{label}_{column}"


def is_score_column(name: str, columns: Sequence[str]) -> bool:
    return name.startswith("tox_") and any(name.endswith(f"_{c}") for c in columns)


def _is_remote(model: str) -> bool:
    return "://" in model and not model.startswith("file://")


def resolve_model(model: str, fetch: bool = True) -> tuple[str | None, str | None]:
    """cfg.model -> (detoxify model_type, checkpoint path); exactly one is set.

    A checkpoint URI (s3://, gs://) is copied to a local temporary file, as torch.load
    needs one (with fetch=False it is only checked to exist, and returned as is).
    Raises ValueError for a name that is neither a model type nor an existing file.
    """
    if model in DETOXIFY_MODELS:
        return model, None
    if _is_remote(model):
        import pyarrow.fs as pafs

        fs, path = pafs.FileSystem.from_uri(model)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise ValueError(f"toxicity checkpoint {model!r} does not exist")
        if not fetch:
            return None, model
        local = os.path.join(tempfile.mkdtemp(prefix="detoxify-"), os.path.basename(path))
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            dst.write(src.read())
        return None, local
    path = model[len("file://") :] if model.startswith("file://") else model
    if os.path.isfile(path):
        return None, os.path.abspath(path)
    raise ValueError(f"toxicity model {model!r} is neither a detoxify model {DETOXIFY_MODELS} nor a checkpoint file")


class DetoxifyScorer:
    """Ray Data callable class: pyarrow batch in -> the same batch with score columns added.

    model: a detoxify model type or a .ckpt path/URI (see `resolve_model`); columns: the
    text columns scored; batch_size: texts per forward pass; device: "cpu" or "cuda".
    Empty, blank or null texts are not sent to the model and score 0.0 on every label.
    """

    def __init__(self, model: str, columns: Sequence[str], batch_size: int = 64, device: str = "cpu"):
        # detoxify (and torch, transformers) load here, in the actor, never on import.
        from detoxify import Detoxify

        model_type, checkpoint = resolve_model(model)
        if checkpoint is not None:
            self.detox = Detoxify(checkpoint=checkpoint, device=device)
            if _is_remote(model):
                os.remove(checkpoint)  # our copy of a remote checkpoint: loaded, no longer needed
        else:
            self.detox = Detoxify(model_type=model_type, device=device)
        self.labels: list[str] = list(self.detox.class_names)
        self.columns = list(columns)
        self.batch_size = batch_size

    def score_texts(self, texts: Sequence[str | None]) -> dict[str, list[float]]:
        """{label: one score per text}, in the order of `texts`."""
        scores = {label: [0.0] * len(texts) for label in self.labels}
        todo = [i for i, t in enumerate(texts) if t is not None and t.strip()]
        # Similar lengths share a forward pass, so little of it is spent on padding.
        todo.sort(key=lambda i: len(texts[i]))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            out = self.detox.predict([texts[i] for i in chunk])
            for label in self.labels:
                vals = out[label]
                vals = vals if isinstance(vals, list) else [vals]  # detoxify squeezes a batch of 1
                for i, v in zip(chunk, vals):
                    scores[label][i] = float(v)
        return scores

    def __call__(self, batch: pa.Table) -> pa.Table:
        for column in self.columns:
            scores = self.score_texts(batch.column(column).to_pylist())
            for label in self.labels:
                batch = batch.append_column(score_column(label, column), pa.array(scores[label], pa.float64()))
        return batch


def score_dataset(ds, cfg: ToxicitySettings):
    """Map `ds` (must hold cfg.columns) through DetoxifyScorer on an autoscaling actor pool
    of cfg.pipeline.min_actors..max_actors actors, 1 CPU each (or num_cpus_per_actor), and
    num_gpus_per_actor GPUs (then the model runs on cuda). -> the scored ray.data.Dataset."""
    from ray.data import ActorPoolStrategy

    p = cfg.pipeline
    compute = ActorPoolStrategy(
        min_size=p.min_actors, max_size=p.max_actors, max_tasks_in_flight_per_actor=p.max_tasks_in_flight_per_actor
    )
    kwargs: dict[str, Any] = {"num_gpus": p.num_gpus_per_actor} if p.num_gpus_per_actor else {}
    return ds.map_batches(
        DetoxifyScorer,
        fn_constructor_kwargs=dict(
            model=cfg.model,
            columns=list(cfg.columns),
            batch_size=cfg.batch_size,
            device="cuda" if p.num_gpus_per_actor else "cpu",
        ),
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=compute,
        num_cpus=p.num_cpus_per_actor or 1.0,
        udf_modifying_row_count=False,  # adds columns only: lets Ray Data push limits down
        **kwargs,
    )
