"""The herd's training data: D_ALL split into a training set and a held-out slice, and the
ablation's random samples (paper Table 4), each written once as Parquet in the LaMini schema.

In: D_ALL (a LaMini-instruction Parquet file or folder). Out: data/train.parquet,
data/holdout.parquet and data/ablation/<sample>.parquet (see lamini.herd.plan), all with the
columns `instruction, response, instruction_source`. Rows with no response are not trained on.
Draws are seeded random samples (numpy's Generator), never the first N rows, and a sample is
drawn from the training split only, so no student sees the held-out slice.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lamini.corpus.schema import LAMINI_COLUMNS
from lamini.generate.card import count_by_source
from lamini.herd.config import HerdConfig
from lamini.herd.fidelity import split_holdout
from lamini.herd.plan import D_ALL_SAMPLE, Layout, ablation_samples
from lamini.herd.state import file_digest, finished, mark

log = logging.getLogger(__name__)




def read_lamini(uri: str) -> pa.Table:
    """A LaMini-instruction Parquet file or folder -> its three columns, rows with a response only."""
    import pyarrow.dataset as pads

    table = pads.dataset(uri, format="parquet").to_table()
    missing = [c for c in LAMINI_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{uri}: not a LaMini-instruction Parquet, it lacks {missing}")
    table = table.select(list(LAMINI_COLUMNS))
    return table.filter(pc.and_(pc.is_valid(table["response"]), pc.not_equal(table["response"], "")))


def draw(table: pa.Table, n: int, seed: int) -> pa.Table:
    """`n` rows drawn at random without replacement (all rows when there are fewer), in table order."""
    if table.num_rows <= n:
        return table
    idx = np.sort(np.random.default_rng(seed).choice(table.num_rows, size=n, replace=False))
    return table.take(pa.array(idx))


def original_rows(spec: Any, label: str) -> pa.Table:
    """An original corpus (its own responses) -> LaMini rows labelled `label` (the paper's A, P, F)."""
    from lamini.corpus import RejectLog, read_corpora

    t = read_corpora([spec], on_error="skip", rejects=RejectLog())
    t = t.filter(pc.and_(pc.is_valid(t["response"]), pc.not_equal(t["response"], "")))
    return pa.table({"instruction": t["prompt"], "response": t["response"],
                     "instruction_source": pa.array([label] * t.num_rows, pa.string())})  # fmt: skip


def prepare_data(cfg: HerdConfig, d_all_uri: str) -> dict[str, Any]:
    """Write the training split, the holdout and the ablation samples (once per D_ALL and settings).

    Returns {"rows", "train", "holdout", "sources": {source: rows}, "samples": {sample: rows},
    "d_all_sha256", "train_sha256"}.
    """
    lay = Layout(cfg)
    run = lay.run
    d_all_hash = _data_digest(d_all_uri)
    parts = {"d_all": d_all_hash, "holdout": cfg.holdout.model_dump(), "seed": cfg.seed,
             "ablation": cfg.ablation.model_dump(mode="json") if cfg.ablation else None}  # fmt: skip
    rec = finished(run, "data", parts)
    if rec is not None:
        return rec["result"]

    d_all = read_lamini(d_all_uri)
    seed = cfg.holdout.seed if cfg.holdout.seed is not None else cfg.seed
    train, holdout = split_holdout(d_all, cfg.holdout.fraction, cfg.holdout.max_rows, seed)
    run.makedirs("data")
    run.write_table("data/train.parquet", train)
    run.write_table("data/holdout.parquet", holdout)
    sources = count_by_source(train)
    samples: dict[str, int] = {}
    if cfg.ablation is not None:
        a = cfg.ablation
        a_seed = a.seed if a.seed is not None else cfg.seed
        run.makedirs("data", "ablation")
        for i, sample in enumerate(ablation_samples(cfg, sorted(sources))):
            if sample == D_ALL_SAMPLE:
                pool = train
            elif sample in a.originals:
                pool = original_rows(a.originals[sample], sample)
            else:
                pool = train.filter(pc.equal(train["instruction_source"], sample))
            if pool.num_rows == 0:
                raise ValueError(f"ablation sample {sample!r} has no rows (sources in D_ALL: {sorted(sources)})")
            if pool.num_rows < a.rows:
                log.warning("ablation sample %s: only %d rows, fewer than %d", sample, pool.num_rows, a.rows)
            table = draw(pool, a.rows, a_seed + i)
            run.write_table(lay.sample_data(sample)[len(lay.uri) + 1 :], table)
            samples[sample] = table.num_rows
    result = {"rows": d_all.num_rows, "train": train.num_rows, "holdout": holdout.num_rows, "sources": sources,
              "samples": samples, "d_all_sha256": d_all_hash,
              "train_sha256": file_digest(lay.train_data)}  # fmt: skip
    mark(run, "data", parts, result)
    return result


def _data_digest(uri: str) -> str:
    """The identity of D_ALL: one file's bytes, or every Parquet file of a folder."""
    import pyarrow.fs as pafs

    from lamini.herd.state import folder_digest

    fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else "file://" + uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        return folder_digest(uri, (".parquet",))
    return file_digest(uri)
