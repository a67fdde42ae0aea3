"""Training end to end on a local Ray: tiny students built from configs, real Alpaca rows, real
DeepSpeed (ZeRO-0/2/3 over gloo), checkpoints, a worker failure, a killed and re-run command,
the embedded SmolLM2 GGUF student, and a two-trial Ray Tune search."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import pytest
import yaml
from conftest import ROOT, descendants, kill_all, shared_data

from lamini.train.config import TrainConfig, TuneConfig
from lamini.train.trainer import read_history


@pytest.fixture(scope="module")
def tiny(tiny_lms):
    return {"decoder": tiny_lms.causal, "encoder-decoder": tiny_lms.seq2seq}  # by TrainConfig family


def _cfg(model_dir, run_dir, **kw) -> dict:
    cfg = {
        "name": "student",
        "run_dir": str(run_dir),
        "model": {"base": str(model_dir)},
        "data": {
            "corpora": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json")), "source": "alpaca"}],
            "limit": 256,
            "max_length": 128,
            "max_source_length": 64,
            "max_target_length": 64,
        },
        "optim": {"lr": 3e-3},  # a randomly initialised 2-layer model learns fast at this rate
        "global_batch_size": 8,
        "micro_batch_size": 4,
        "max_steps": 30,
        "log_every_n_steps": 5,
        "checkpoint_every_n_steps": 30,
        "scaling": {"num_workers": 1, "cpus_per_worker": 2},
    }
    for key, value in kw.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


@pytest.mark.parametrize("family", ["decoder", "encoder-decoder"])
def test_tiny_student_learns_and_its_export_reloads(ray_local, tmp_path, tiny, family):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from lamini.models.templates import alpaca_prompt
    from lamini.train.trainer import run_train

    summary = run_train(TrainConfig.model_validate(_cfg(tiny[family], tmp_path / "runs")))
    assert summary.family == family and summary.steps == 30 and summary.rows == 256
    history = read_history(tmp_path / "runs" / "student")
    assert [h["step"] for h in history] == [5, 10, 15, 20, 25, 30]
    losses = [h["loss"] for h in history]
    assert losses[-1] < 0.9 * losses[0] and losses == sorted(losses, reverse=True), losses
    assert all(h["tokens_per_s"] > 0 for h in history) and history[-1]["lr"] < history[1]["lr"]  # cosine decay
    assert (tmp_path / "runs" / "student" / "report" / "loss.png").stat().st_size > 1000
    manifest = json.loads((tmp_path / "runs" / "student" / "manifest.json").read_text())
    assert manifest["family"] == family and manifest["total_steps"] == 30

    # The exported folder is an ordinary Hugging Face model: it reloads and generates.
    model_dir = tmp_path / "runs" / "student" / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    cls = AutoModelForCausalLM if family == "decoder" else AutoModelForSeq2SeqLM
    model = cls.from_pretrained(model_dir)
    prompt = "Give three tips for staying healthy."
    enc = tok(alpaca_prompt(prompt) if family == "decoder" else prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    new = out[0, enc["input_ids"].shape[1]:] if family == "decoder" else out[0]
    assert len(new) > 1
    assert isinstance(tok.decode(new, skip_special_tokens=True), str)

    # ...with its model card: the base (a local folder here, said to be one), the task, the training.
    card = (model_dir / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == str(tiny[family]) and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == {"decoder": "text-generation", "encoder-decoder": "text2text-generation"}[family]
    assert meta["datasets"] == [str(shared_data("alpaca_5000.json"))] and meta["tags"] == ["lamini", "distillation"]
    assert meta["lamini"]["training"]["steps"] == 30 and meta["lamini"]["training"]["global_batch_size"] == 8
    assert meta["lamini"]["training"]["final_loss"] == pytest.approx(history[-1]["loss"])
    assert "not a Hugging Face Hub id" in card and "## Evaluation" in card and "# student" in card


def test_epochs_with_packing_end_at_the_planned_step(ray_local, tmp_path, tiny):
    """An epochs run (no max_steps) with packing: the plan counts packed sequences, so the last
    epoch ends on the last planned step and the cosine schedule has decayed by then."""
    from lamini.train.trainer import run_train

    cfg = _cfg(
        tiny["decoder"], tmp_path / "runs", max_steps=None, epochs=2, global_batch_size=4, export=False,
        log_every_n_steps=2, data={"limit": 64, "max_length": 512, "packing": True},
    )
    summary = run_train(TrainConfig.model_validate(cfg))
    manifest = json.loads((tmp_path / "runs" / "student" / "manifest.json").read_text())
    per_epoch = manifest["sequences_per_epoch"]
    assert per_epoch < 0.6 * 64  # about two whole examples per packed sequence
    assert summary.total_steps == manifest["total_steps"] == 2 * (per_epoch // 4)
    history = read_history(tmp_path / "runs" / "student")
    assert summary.steps == summary.total_steps == history[-1]["step"]  # (counting rows planned 32 steps)
    # ended inside the second epoch, or early in the pass kept in reserve when the shuffled epochs
    # packed into a few sequences fewer than the count (made in the file's order) planned
    assert history[-1]["epoch"] in (1, 2)
    assert history[-1]["lr"] < 0.1 * max(h["lr"] for h in history)  # the schedule ran its course


def test_worker_failure_restarts_from_the_latest_checkpoint(ray_local, tmp_path, tiny, monkeypatch):
    """FailureConfig: rank 0 dies at step 7; Ray Train restarts the group from the step-4 checkpoint."""
    from lamini.train.loop import FAIL_AT_STEP_ENV, FAIL_MARKER_ENV
    from lamini.train.trainer import run_train

    marker = tmp_path / "failed-once"
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "7")
    monkeypatch.setenv(FAIL_MARKER_ENV, str(marker))
    cfg = _cfg(
        tiny["decoder"], tmp_path / "runs", max_steps=12, log_every_n_steps=1, checkpoint_every_n_steps=4,
        micro_batch_size=2, scaling={"num_workers": 2, "cpus_per_worker": 1}, max_failures=1, export=False,
        gradient_checkpointing=True,
    )
    summary = run_train(TrainConfig.model_validate(cfg))
    assert marker.exists(), "the injected failure did not happen"
    history = read_history(tmp_path / "runs" / "student")
    assert [h["step"] for h in history] == list(range(1, 13)) and summary.steps == 12
    # Steps 1-4 came back with the checkpoint, from the first worker group; the restarted group's
    # clock (elapsed_s) began again at step 5. A restart from scratch would have timed 1-12 in one go.
    elapsed = [h["elapsed_s"] for h in history]
    assert elapsed[4] < elapsed[3], elapsed
    assert elapsed[:4] == sorted(elapsed[:4]) and elapsed[4:] == sorted(elapsed[4:])


def test_trains_on_lamini_parquet_streamed_by_ray_data(ray_local, tmp_path, tiny):
    """The zoo's data path: LaMini-instruction Parquet read by ray.data.read_parquet (not through
    the driver); rows with a null or empty response are left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lamini.train.trainer import run_train

    alpaca = json.loads(shared_data("alpaca_5000.json").read_text())[:40]
    responses = [None if i % 10 == 3 else "" if i % 10 == 7 else r["output"] for i, r in enumerate(alpaca)]
    data = tmp_path / "lamini"
    data.mkdir()
    for part in (0, 1):  # a folder of shards, as `lamini dataset` writes
        rows = slice(part * 20, part * 20 + 20)
        pq.write_table(pa.table({"instruction": [r["instruction"] for r in alpaca[rows]], "response": responses[rows],
                                 "instruction_source": ["alpaca"] * 20}), data / f"part-{part}.parquet")  # fmt: skip
    cfg = _cfg(
        tiny["decoder"], tmp_path / "runs", max_steps=4, export=False, log_every_n_steps=2,
        data={"corpora": [{"format": "lamini", "path": str(data)}], "limit": None},
        scaling={"num_workers": 1, "cpus_per_worker": 1},  # the other CPU reads the Parquet (Ray Data tasks)
    )
    summary = run_train(TrainConfig.model_validate(cfg))
    assert summary.rows == 32 and summary.steps == 4  # 40 rows, 8 without a response
    assert all(math.isfinite(h["loss"]) for h in read_history(tmp_path / "runs" / "student"))


def _run_cli(cfg_path, log_path, env):
    cmd = [sys.executable, "-m", "lamini.cli", "train", "--config", str(cfg_path)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_run_killed_and_rerun_continues_where_it_stopped(tmp_path, tiny, stage):
    """2 workers over gloo, ZeRO-2 or ZeRO-3: SIGKILL the whole command (driver and its Ray) after a
    checkpoint, re-run it: the step counter, learning rate and loss curve continue from the checkpoint."""
    run_dir = tmp_path / "runs"
    # Reports every 2 steps, a checkpoint every 8: a Ray Train report costs ~1 s on 2 cores.
    cfg = _cfg(
        tiny["decoder"], run_dir, max_steps=48, log_every_n_steps=2, checkpoint_every_n_steps=8,
        micro_batch_size=2, scaling={"num_workers": 2, "cpus_per_worker": 1}, deepspeed={"zero_stage": stage},
        ray={"num_cpus": 2, "temp_dir": f"/tmp/lamini-trainkill-{os.getpid()}"},
    )
    cfg_path = tmp_path / "train.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, killed with it
    metrics = run_dir / "student" / "metrics.jsonl"

    proc = _run_cli(cfg_path, tmp_path / "first.log", env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and any(h["step"] >= 20 for h in read_history(run_dir / "student")):
                break
            time.sleep(0.1)
        assert proc.poll() is None, "ended before the kill:\n" + (tmp_path / "first.log").read_text()[-3000:]
        kill_all([proc.pid, *descendants(proc.pid)])
        proc.wait(timeout=30)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])
    killed = read_history(run_dir / "student")
    assert 20 <= killed[-1]["step"] < 48

    second = _run_cli(cfg_path, tmp_path / "second.log", env)
    assert second.wait(timeout=400) == 0, (tmp_path / "second.log").read_text()[-3000:]
    log_text = (tmp_path / "second.log").read_text()
    ckpt = int(re.search(r"rank 0 resumed at step (\d+)", log_text).group(1))
    # the newest stored checkpoint: the last one the killed run had finished reporting
    assert ckpt == max(h["step"] for h in killed if h["checkpoint"]) and ckpt >= 16
    resumed = read_history(run_dir / "student")
    assert [h["step"] for h in resumed] == list(range(2, 49, 2))  # no step lost, none repeated
    n = ckpt // 2  # entries up to the checkpoint
    # Up to the checkpoint the curve is the killed run's own; after it, the re-run retraces the
    # steps the killed run had taken past it: same schedule position, same weights and optimizer state.
    assert resumed[:n] == killed[:n]
    assert len(killed) > n, "the kill came before any step past the checkpoint"
    for old, new in zip(killed[n:], resumed[n:]):
        assert new["step"] == old["step"]
        assert new["lr"] == pytest.approx(old["lr"], rel=1e-9)
        assert new["loss"] == pytest.approx(old["loss"], rel=0.02), (old, new)
    assert resumed[n]["loss"] < 0.95 * resumed[0]["loss"]  # not a fresh start

    if stage == 3:  # the export is consolidated from the ZeRO-3 shards of the final checkpoint
        import torch
        from deepspeed.utils.zero_to_fp32 import (
            get_fp32_state_dict_from_zero_checkpoint,
        )
        from safetensors.torch import load_file

        ckpts = [p for p in (run_dir / "student").glob("checkpoint_*") if p.is_dir()]
        newest = max(ckpts, key=lambda p: p.stat().st_mtime)
        shards = get_fp32_state_dict_from_zero_checkpoint(str(newest), tag="state")
        exported = load_file(run_dir / "student" / "model" / "model.safetensors")
        assert set(exported) <= set(shards) and len(exported) > 10
        for name, tensor in exported.items():
            assert torch.allclose(tensor.float(), shards[name].float(), atol=1e-6), name


def test_smollm2_gguf_student_fine_tunes(ray_local, tmp_path):
    from lamini.models.loading import default_teacher_path
    from lamini.train.trainer import run_train

    try:
        default_teacher_path()
    except FileNotFoundError as e:
        pytest.skip(f"the embedded SmolLM2 GGUF is not installed: {e}")
    cfg = _cfg(
        "embedded", tmp_path / "runs", model={"base": "embedded", "family": "decoder"},
        optim={"lr": 2e-5}, global_batch_size=2, micro_batch_size=1, max_steps=3, log_every_n_steps=1,
        data={"corpora": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json"))}], "limit": 16,
              "max_length": 64},
    )
    summary = run_train(TrainConfig.model_validate(cfg))
    history = read_history(tmp_path / "runs" / "student")
    assert [h["step"] for h in history] == [1, 2, 3] and summary.steps == 3
    assert all(math.isfinite(h["loss"]) and h["loss"] < 10 for h in history)  # a trained model, not random
    assert 1.0e8 < history[0]["n_params"] < 2.0e8  # SmolLM2-135M
    # exported as a plain (dequantised) Hugging Face folder, chat template and all
    from transformers import AutoConfig, AutoTokenizer

    exported = tmp_path / "runs" / "student" / "model"
    assert not hasattr(AutoConfig.from_pretrained(exported), "quantization_config")
    assert AutoTokenizer.from_pretrained(exported).chat_template


def test_tune_runs_two_trials_with_asha(tmp_path, tiny):
    """`lamini tune` in its own process and Ray (with the dashboard its trial clean-up needs); with a
    validation share, ASHA and each trial's best checkpoint go by eval_loss, not training loss."""
    train = _cfg(
        tiny["decoder"], tmp_path / "unused", max_steps=6, log_every_n_steps=1, checkpoint_every_n_steps=2,
        export=False, scaling={"num_workers": 1, "cpus_per_worker": 1}, validation={"fraction": 0.1},
        ray={"num_cpus": 2, "temp_dir": f"/tmp/lamini-tune-{os.getpid()}"},
    )
    cfg = {
        "run_dir": str(tmp_path / "tune"),
        "train": train,
        "search": {"lr": [1e-3, 1e-2], "global_batch_size": [4, 8]},
        "num_samples": 2,
        # max_t above the 6 steps: a trial that runs to the end finishes on its own; one that Tune
        # stops leaves its workers to Train's placement-group cleaner, which cannot find its Ray
        # while the test session's Ray also runs on this machine (the next trial would wait for CPUs).
        "asha": {"max_t": 7, "grace_period": 2},
    }
    assert TuneConfig.model_validate(cfg).metric == "eval_loss"
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "lamini.cli", "tune", "--config", str(tmp_path / "tune.yaml")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])
    assert proc.returncode == 0, out[-3000:]
    assert "tune: 2 trials (0 failed), best eval_loss" in out
    saved = json.loads((tmp_path / "tune" / "tune_summary.json").read_text())
    trials = saved["trials"]
    assert len(trials) == 2 and saved["missing"] == 0
    for trial in trials:
        assert 1e-3 <= trial["params"]["lr"] <= 1e-2 and trial["params"]["global_batch_size"] in (4, 8)
        steps = [h["step"] for h in trial["history"]]
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # ASHA's grace period
        assert len(steps) == 6 or trial["stopped_early"]  # ran to max_steps, or ASHA stopped it
        assert all(math.isfinite(h["eval_loss"]) and math.isfinite(h["loss"]) for h in trial["history"])
        # the lowest-eval-loss checkpoint (one every 2 steps), kept by the trial and still on disk
        best = trial["best_checkpoint"]
        assert os.path.isdir(best["path"]) and best["metric"] == "eval_loss"
        at_checkpoints = {h["step"]: h["eval_loss"] for h in trial["history"] if h["step"] % 2 == 0}
        assert best["value"] == min(at_checkpoints.values()) == at_checkpoints[best["step"]]
    assert len({t["params"]["lr"] for t in trials}) == 2
    assert saved["best"]["metric"] == "eval_loss"
    assert saved["best"]["eval_loss"] == min(t["eval_loss"] for t in trials)


@pytest.mark.gpu
@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_zero_training_on_a_gpu(ray_local, tmp_path, tiny, stage):
    """GPU only (the device machine): bf16 mixed precision under ZeRO-2/3 on one GPU worker."""
    import torch

    from lamini.train.trainer import run_train

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = _cfg(
        tiny["decoder"], tmp_path / "runs", precision="bf16", deepspeed={"zero_stage": stage},
        scaling={"num_workers": 1, "use_gpu": True, "cpus_per_worker": 1}, max_steps=20,
    )
    summary = run_train(TrainConfig.model_validate(cfg))
    history = read_history(tmp_path / "runs" / "student")
    assert summary.steps == 20 and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["peak_flops_source"].startswith("spec:")
