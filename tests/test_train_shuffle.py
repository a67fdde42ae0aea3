"""The seeded global shuffle: every epoch in its own order, the same order on every run, and a run
killed (SIGKILL) mid-epoch and re-run trains on exactly the batches an uninterrupted run does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import yaml
from conftest import ROOT, descendants, kill_all, shared_data

from lamini.train.config import TrainConfig
from lamini.train.trainer import read_history


def _rows(n: int) -> list[dict]:
    data = json.loads(shared_data("alpaca_5000.json").read_text(encoding="utf-8"))[:n]
    return [{"instruction": r["instruction"], "response": r["output"]} for r in data]


def _cfg(**kw) -> TrainConfig:
    base = {"model": {"base": "x"}, "data": {"corpora": [{"format": "alpaca", "path": "x"}]}, "seed": 3}
    return TrainConfig.model_validate({**base, **kw})


def _order(ds) -> list[str]:
    return [r["instruction"] for r in ds.iter_rows()]


def test_each_epoch_is_a_seeded_permutation(ray_local):
    import ray.data

    from lamini.train.trainer import epoch_datasets

    rows = _rows(200)
    ctx = ray.data.DataContext.get_current()
    old, ctx.execution_options.preserve_order = ctx.execution_options.preserve_order, True  # as the trainer's ingest
    try:
        def epochs(cfg, n=3):
            ds = ray.data.from_items(rows, override_num_blocks=4)  # a fresh dataset, as a re-run builds
            return {k: _order(v) for k, v in epoch_datasets(ds, cfg, n, no_cpu_left=False).items()}

        first, again = epochs(_cfg()), epochs(_cfg())
        assert list(first) == ["train_0", "train_1", "train_2"]
        assert first == again  # the same orders on a second run
        source = [r["instruction"] for r in rows]
        for order in first.values():
            assert sorted(order) == sorted(source) and order != source  # a permutation, not the file order
        assert len({tuple(o) for o in first.values()}) == 3  # a new order every epoch
        assert epochs(_cfg(seed=4), 1)["train_0"] != first["train_0"]  # seeded by the run's seed
        # the zero-CPU variant (workers hold every CPU) shuffles the same way
        assert epochs(_cfg(), 1)["train_0"] == first["train_0"]
        ds = ray.data.from_items(rows, override_num_blocks=4)
        assert _order(epoch_datasets(ds, _cfg(), 1, no_cpu_left=True)["train_0"]) == first["train_0"]
        # shuffle off: the one dataset, in its own order, every epoch
        off = epoch_datasets(ds, _cfg(data={"corpora": [{"format": "alpaca", "path": "x"}], "shuffle": False}), 3, False)
        assert list(off) == ["train"] and _order(off["train"]) == source
    finally:
        ctx.execution_options.preserve_order = old


def _run_cli(cfg_path, log_path, env):
    cmd = [sys.executable, "-m", "lamini.cli", "train", "--config", str(cfg_path)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT)  # fmt: skip


def _trace(folder) -> list[dict]:
    out = []
    for line in (folder / "trace-rank0.jsonl").read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line the kill cut short
            pass
    return out


def test_killed_mid_epoch_and_rerun_trains_on_the_same_batches(tmp_path, tiny_lms):
    """One 2-CPU worker on a 2-CPU Ray (the shuffle's tasks then take no CPU), 8 steps an epoch,
    3 epochs, a checkpoint every 6 steps (so each one is mid-epoch). Run once uninterrupted; run again, SIGKILL the whole command mid-epoch after a
    checkpoint, re-run it: step for step, the micro batches (digests of their token ids) are the
    uninterrupted run's, including the steps the killed run took past its checkpoint."""

    def config(run_dir) -> dict:
        return {
            "name": "student", "run_dir": str(run_dir), "model": {"base": str(tiny_lms.causal)},
            "data": {"corpora": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json"))}], "limit": 64,
                     "max_length": 128},
            "optim": {"lr": 3e-3}, "global_batch_size": 8, "micro_batch_size": 4, "max_steps": 24,
            "log_every_n_steps": 2, "checkpoint_every_n_steps": 6, "export": False,
            "scaling": {"num_workers": 1, "cpus_per_worker": 2},
            "ray": {"num_cpus": 2, "temp_dir": f"/tmp/lamini-shufkill-{os.getpid()}"},
        }  # fmt: skip

    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, killed with it
    runs = {}
    for name in ("straight", "killed"):
        d = tmp_path / name
        for trace in ("trace", "trace2"):
            (d / trace).mkdir(parents=True)
        (d / "train.yaml").write_text(yaml.safe_dump(config(d / "runs")))
        runs[name] = d

    straight = runs["straight"]
    proc = _run_cli(straight / "train.yaml", straight / "run.log", dict(env, LAMINI_TRAIN_TRACE_DIR=str(straight / "trace")))
    assert proc.wait(timeout=400) == 0, (straight / "run.log").read_text()[-3000:]
    want = _trace(straight / "trace")
    assert [t["step"] for t in want] == list(range(1, 25))
    per_epoch = sum(t["epoch"] == 0 for t in want)  # 64 rows: 8 steps, fewer if truncation dropped a row
    assert per_epoch >= 7 and [t["epoch"] for t in want] == [s // per_epoch for s in range(24)]
    by_epoch = [[m for t in want if t["epoch"] == e for m in t["micro"]] for e in range(3)]
    assert len({tuple(e) for e in by_epoch}) == 3  # each epoch in its own order

    killed = runs["killed"]
    proc = _run_cli(killed / "train.yaml", killed / "first.log", dict(env, LAMINI_TRAIN_TRACE_DIR=str(killed / "trace")))
    metrics = killed / "runs" / "student" / "metrics.jsonl"
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and any(h["step"] >= 14 for h in read_history(killed / "runs" / "student")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "ended before the kill:\n" + (killed / "first.log").read_text()[-3000:]
        kill_all([proc.pid, *descendants(proc.pid)])
        proc.wait(timeout=30)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])
    before = _trace(killed / "trace")
    second = _run_cli(killed / "train.yaml", killed / "second.log", dict(env, LAMINI_TRAIN_TRACE_DIR=str(killed / "trace2")))
    assert second.wait(timeout=400) == 0, (killed / "second.log").read_text()[-3000:]
    resumed_at = int(re.search(r"rank 0 resumed at step (\d+)", (killed / "second.log").read_text()).group(1))
    assert resumed_at % per_epoch and resumed_at >= 12  # mid-epoch (checkpoints at 6, 12, 18): the resume skips part of one
    after = _trace(killed / "trace2")
    assert [t["step"] for t in after] == list(range(resumed_at + 1, 25))
    redone = [t for t in before if t["step"] > resumed_at]
    assert redone, "the kill came before any step past the checkpoint"
    assert redone == after[: len(redone)]  # the steps past the checkpoint, retaken on the same batches
    final = {t["step"]: t for t in before}
    final.update({t["step"]: t for t in after})
    assert [final[s] for s in range(1, 25)] == want  # the whole run: the uninterrupted run's batches
