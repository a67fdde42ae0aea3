"""`lamini herd` end to end, small: a dataset built by a teacher (the fake OpenAI server on 127.0.0.1),
two students built from an architecture (decoder-only and encoder-decoder), trained side by side,
the ablation, every evaluation, one report; killed with SIGKILL during training and re-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, descendants, kill_all, shared_data

from lamini.herd.config import HerdConfig, deep_merge

RTP = ROOT / "tests" / "fixtures" / "rtp" / "prompts.jsonl"
LM_EVAL_TASKS = ROOT / "tests" / "fixtures" / "lm_eval"


def _student(name: str, arch: str) -> dict:
    return {
        "name": name,
        "scratch": {"arch": arch, "layers": 2, "hidden": 64, "heads": 2, "ffn": 128, "vocab_size": 512},
        "train": {
            # 256: the Alpaca wrapper alone is ~90 tokens of this 512-token vocabulary; at 96 nearly every
            # row was cut before its response (15 sequences an epoch of 112 rows, 20 Ray Data passes).
            "data": {"max_length": 256, "max_source_length": 48, "max_target_length": 48},
            "optim": {"lr": 3e-3},  # a randomly initialised 2-layer model learns fast at this rate
            "global_batch_size": 8, "micro_batch_size": 8, "max_steps": 40,
            "log_every_n_steps": 5, "checkpoint_every_n_steps": 10,
            # Half a CPU each: two students train at once and one CPU is left for Ray Data's reads.
            "scaling": {"num_workers": 1, "cpus_per_worker": 0.5},
        },
        "serve": {"batch_size": 16, "num_cpus_per_actor": 0.5},
    }  # fmt: skip


def herd_config(tmp_path: Path, url: str, detoxify_ckpt: str | None = None) -> dict:
    teacher = {"engine": "openai", "model": "fake", "base_url": url, "api_key_env": "LAMINI_TEST_API_KEY",
               "max_in_flight": 4, "backoff_base_s": 0.01}  # fmt: skip
    seeds = str(shared_data("self_instruct_seed_tasks.jsonl"))
    cfg = {
        "run_dir": str(tmp_path / "herd"),
        "seed": 3,
        "dataset": {"build": {
            "generate": [{"name": "self_instruct_without_topic", "mode": "example", "per_call": 10, "target": 12,
                          "seeds": {"format": "self_instruct", "path": seeds}}],
            "originals": [{"format": "alpaca", "path": str(shared_data("alpaca_5000.json")), "source": "alpaca",
                           "limit": 120}],
            "teacher": teacher,
            "instruction_generation": {"max_tokens": 800, "temperature": 1.0},
            "response_generation": {"max_tokens": 24},
            "budget": {"max_rounds": 3},
            "on_error": "skip",
            "pipeline": {"batch_size": 8, "rows_per_block": 16, "max_actors": 1},
        }},
        "holdout": {"fraction": 0.2, "max_rows": 12},
        "students": [_student("gpt", "gpt2"), _student("t5", "t5")],
        # Samples of 16 rows: 2 optimiser steps an epoch, and each epoch is a pass of Ray Data.
        "ablation": {"rows": 16, "sources": ["alpaca"], "student": "gpt", "train": {"max_steps": 4},
                     "originals": {"A": {"format": "alpaca", "path": str(shared_data("alpaca_5000.json")), "limit": 80}}},
        "evaluations": {
            "fidelity_generation": {"max_tokens": 16, "temperature": 0.0},
            "lm_eval": {"tasks": ["science_mc"], "include_path": str(LM_EVAL_TASKS), "limit": 8, "bootstrap_iters": 0},
            "hallucination": {"judges": [{"teacher": teacher, "name": "fake-judge"}],
                              "generation": {"max_tokens": 12, "temperature": 0.0}},
            # No judge here: the report then shows the answers and where the rating sheets are.
            "user_oriented": {"instructions": str(shared_data("user_oriented_instructions.jsonl")), "limit": 3,
                              "annotators": 1, "generation": {"max_tokens": 12, "temperature": 0.0}},
        },
        "ray": {"num_cpus": 2},
    }  # fmt: skip
    if detoxify_ckpt:
        cfg["evaluations"]["toxicity"] = {"prompts": str(RTP), "n_nontoxic": 3, "n_toxic": 3,
                                          "detoxify_model": detoxify_ckpt,
                                          "generation": {"max_tokens": 8, "temperature": 0.0}}  # fmt: skip
    return cfg


def test_config_errors_name_the_student_or_stage(tmp_path):
    from lamini.herd.plan import check_plan

    def check(data: dict) -> None:
        check_plan(HerdConfig.model_validate(data))

    base = herd_config(tmp_path, "http://127.0.0.1:9")
    check(base)
    bad = deep_merge(base, {})
    bad["students"] = [{**base["students"][0], "train": {**base["students"][0]["train"], "global_batch_size": 7}}]
    with pytest.raises(Exception, match="student gpt"):
        check(bad)
    with pytest.raises(Exception, match="evaluations.lm_eval"):
        check(deep_merge(base, {"evaluations": {"lm_eval": {"taks": ["x"]}}}))
    with pytest.raises(Exception, match="zoo config 'no-such-model'"):
        check({**base, "students": [{"name": "z", "zoo": "no-such-model"}], "ablation": None})
    with pytest.raises(Exception, match="ablation.student 'nobody'"):
        check(deep_merge(base, {"ablation": {"student": "nobody"}}))
    # every zoo config resolves into a student's training config
    for zoo in sorted(p.stem for p in (ROOT / "configs" / "train").glob("*.yaml")):
        check({**base, "students": [{"name": "z", "zoo": zoo}], "ablation": None})
    assert not (tmp_path / "herd").exists()  # checking a config writes nothing
    # the README's first command: its config resolves too
    from lamini.config import load_config

    check_plan(load_config(HerdConfig, ROOT / "configs" / "herd.yaml"))


def test_data_split_and_ablation_draws_are_seeded_disjoint_and_random(tmp_path):
    import pyarrow as pa

    from lamini.herd.data import draw, read_lamini

    t = pa.table({"instruction": [f"q{i}" for i in range(100)], "response": [f"a{i}" for i in range(100)],
                  "instruction_source": ["x"] * 100})  # fmt: skip
    a, b = draw(t, 10, 1), draw(t, 10, 1)
    assert a.equals(b) and a.num_rows == 10
    assert a.column("instruction").to_pylist() != [f"q{i}" for i in range(10)]  # not the first N
    assert draw(t, 10, 2).column("instruction").to_pylist() != a.column("instruction").to_pylist()
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({**{c: t[c] for c in t.column_names}, "extra": list(range(100))}).slice(0, 5), path)
    assert read_lamini(str(path)).column_names == ["instruction", "response", "instruction_source"]


def _run(cfg_path: Path, log: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lamini.cli", "herd", "--config", str(cfg_path)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_herd_end_to_end_killed_and_resumed(tmp_path, fake_openai, tmp_path_factory):
    from lamini.testing.tiny_detoxify import build_tiny_detoxify_checkpoint

    ckpt = build_tiny_detoxify_checkpoint(tmp_path_factory.mktemp("detox") / "detoxify")
    cfg = herd_config(tmp_path, fake_openai.url, str(ckpt))
    cfg["ray"]["temp_dir"] = f"/tmp/lamini-herd-{os.getpid()}"
    HerdConfig.model_validate(cfg)
    cfg_path = tmp_path / "herd.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, LAMINI_TEST_API_KEY="sk-test-herd", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)  # its own local Ray, killed with it
    herd = tmp_path / "herd"

    # 1. Kill the whole command (driver and its Ray) once a student has trained a few steps.
    first = _run(cfg_path, tmp_path / "first.log", env)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and first.poll() is None:
            if any(p.stat().st_size for p in herd.glob("students/*/metrics.jsonl")):
                break
            time.sleep(0.2)
        assert first.poll() is None, "ended before the kill:\n" + (tmp_path / "first.log").read_text()[-3000:]
        kill_all([first.pid, *descendants(first.pid)])
        first.wait(timeout=30)
    finally:
        kill_all([first.pid, *descendants(first.pid)])
    assert (herd / "state" / "dataset.json").exists() and (herd / "state" / "data.json").exists()
    dataset_manifest = (herd / "dataset" / "manifest.json").stat().st_mtime

    # 2. Re-run to the end: the dataset is not built again, training resumes, everything else runs.
    second = _run(cfg_path, tmp_path / "second.log", env)
    try:
        assert second.wait(timeout=1500) == 0, (tmp_path / "second.log").read_text()[-5000:]
    finally:  # never leave a herd running past the test (it has its own process session)
        kill_all([second.pid, *descendants(second.pid)])
    log = (tmp_path / "second.log").read_text()
    assert (herd / "dataset" / "manifest.json").stat().st_mtime == dataset_manifest
    assert any(line.startswith("herd: ") for line in log.splitlines())  # the summary line (Ray's logs may follow it)

    # The data: a clean HF dataset folder with its card; split disjoint; ablation samples drawn.
    from datasets import load_dataset

    d_all = load_dataset("parquet", data_dir=str(herd / "dataset" / "dataset"))
    assert list(d_all) == ["train"]
    train = pq.read_table(herd / "data" / "train.parquet")
    holdout = pq.read_table(herd / "data" / "holdout.parquet")
    assert 0 < holdout.num_rows <= 12
    assert not set(train.column("instruction").to_pylist()) & set(holdout.column("instruction").to_pylist())
    assert sorted(p.stem for p in (herd / "data" / "ablation").glob("*.parquet")) == ["A", "D_ALL", "alpaca"]
    # Over both runs, the teacher was asked for each response once: the re-run did not build the data again.
    by_prompt = fake_openai.stats(detail=True)["by_prompt"]
    asked = [by_prompt.get(i) for i in train.column("instruction").to_pylist()]
    assert asked and all(n == 1 for n in asked), asked

    # Students trained side by side: the two herd students' training overlapped in time.
    state = {p.stem: json.loads(p.read_text()) for p in (herd / "state").glob("train-*.json")}
    assert set(state) == {"train-gpt", "train-t5", "train-gpt-abl-D_ALL", "train-gpt-abl-alpaca", "train-gpt-abl-A"}
    g, t = state["train-gpt"]["result"], state["train-t5"]["result"]
    assert g["family"] == "decoder" and t["family"] == "encoder-decoder"
    starts = sorted(r["result"]["started_at"] for r in state.values())
    ends = sorted(r["result"]["finished_at"] for r in state.values())
    assert starts[1] < ends[0], "no two students trained at the same time"

    # Fidelity: both students moved toward the teacher on the held-out slice.
    report = json.loads((herd / "report" / "report.json").read_text())
    for name in ("gpt", "t5"):
        f = report["fidelity"][name]
        assert f["after"]["loglik_per_token"] > f["before"]["loglik_per_token"] + 0.2, (name, f)
    md = (herd / "report" / "report.md").read_text()
    for heading in ("Students and provenance", "Dataset (Tables 1-2)", "Distillation fidelity",
                    "Downstream tasks (Tables 9-14, Figure 4)", "Ablation (Table 4)", "Hallucination (Table 5)",
                    "Toxicity (Table 6)", "User-oriented instructions (Figure 5)"):  # fmt: skip
        assert f"## {heading}" in md, heading
    assert "paper: LaMini-Flan-T5-77M" in md  # the paper's own rows beside ours (Table 5)
    unjudged = md.split("## User-oriented instructions (Figure 5)")[1]
    assert "Ran without a judge: 4 models x 3 answers" in unjudged, unjudged
    assert "| item | gpt-base | gpt | t5-base | t5 |" in unjudged, unjudged
    assert (herd / "report" / "fidelity.png").stat().st_size > 1000
    assert report["results"]["gpt"]["lm_eval_average"] is not None
    # Every student's model card carries its evaluation results.
    card = (herd / "students" / "gpt" / "model" / "README.md").read_text()
    assert card.startswith("---") and "fidelity_loglik_per_token" in card and "sk-test-herd" not in card

    # 3. A third run finds every step done: nothing is trained or evaluated again.
    metrics = (herd / "students" / "gpt" / "metrics.jsonl").stat().st_mtime
    evaluated = (herd / "state" / "eval-lm_eval.json").stat().st_mtime
    third = _run(cfg_path, tmp_path / "third.log", env)
    try:
        assert third.wait(timeout=600) == 0, (tmp_path / "third.log").read_text()[-3000:]
    finally:
        kill_all([third.pid, *descendants(third.pid)])
    assert json.loads((herd / "state" / "train-gpt.json").read_text())["finished_at"] == state["train-gpt"]["finished_at"]
    assert (herd / "students" / "gpt" / "metrics.jsonl").stat().st_mtime == metrics
    assert (herd / "state" / "eval-lm_eval.json").stat().st_mtime == evaluated
    assert "sk-test-herd" not in (herd / "manifest.json").read_text()
