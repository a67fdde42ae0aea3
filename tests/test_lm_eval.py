"""`lamini eval`: lm-evaluation-harness on a local multiple-choice task, tiny causal and seq2seq
students, Alpaca wrapper on and off, one Ray task per (model, task); the paper's task table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lamini.evaluate.lm_eval.report import format_params, markdown_tables, summarize
from lamini.evaluate.lm_eval.runner import _absolute, task_gpus
from lamini.evaluate.lm_eval.tasks import (
    PAPER_TASKS,
    eval_tasks,
    metric_for,
    metric_key,
    stderr_key,
)
from lamini.evaluate.lm_eval.wrap import WrappedContexts, wrap_context, wrap_requests
from lamini.models.templates import alpaca_prompt

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "tests" / "fixtures" / "lm_eval"
N_QUESTIONS = sum(1 for line in (TASK_DIR / "science_mc.jsonl").read_text().splitlines() if line.strip())
ALPACA_HEAD = alpaca_prompt("X").split("X")[0]


def _cfg(tiny_lms, run_dir, **kw):
    from lamini.evaluate.config import EvalConfig

    students = [
        {"name": "causal-alpaca", "base": str(tiny_lms.causal)},  # wrapper auto -> alpaca (decoder-only)
        {"name": "causal-raw", "base": str(tiny_lms.causal), "wrapper": "none"},
        {"name": "t5-raw", "base": str(tiny_lms.seq2seq)},  # wrapper auto -> none (encoder-decoder)
        {"name": "t5-alpaca", "base": str(tiny_lms.seq2seq), "wrapper": "alpaca"},
    ]
    base = {"students": students, "tasks": ["science_mc"], "include_path": str(TASK_DIR), "run_dir": str(run_dir)}
    return EvalConfig(**{**base, "bootstrap_iters": 10, "batch_size": 8, **kw})


def test_run_eval_local_task_wrapper_on_and_off_resume_and_failures(ray_local, tiny_lms, tmp_path, capsys):
    from lamini.evaluate.lm_eval.runner import run_eval

    run_dir = tmp_path / "eval"
    # The YAML's data_files path is relative to the YAML; nothing may depend on the test's cwd.
    cfg = _cfg(tiny_lms, run_dir, tasks=["science_mc", "no_such_task"], metrics={"science_mc": "acc_norm"})
    summary = run_eval(cfg)
    out = capsys.readouterr().out
    assert (summary.computed, summary.reused, summary.missing) == (8, 0, 4), out
    assert out.count("science_mc: acc_norm") == 4 and out.count("FAILED") == 4
    assert summary.line().startswith("eval: 4 models x 2 tasks")

    doc = json.loads((run_dir / "results.json").read_text())
    expected = {  # name -> (wrapper recorded, backend, family, model_type)
        "causal-alpaca": ("alpaca", "causal", "decoder", "llama"),
        "causal-raw": ("none", "causal", "decoder", "llama"),
        "t5-raw": ("none", "seq2seq", "encoder-decoder", "t5"),
        "t5-alpaca": ("alpaca", "seq2seq", "encoder-decoder", "t5"),
    }
    for name, (wrapper, backend, family, model_type) in expected.items():
        m = doc["models"][name]
        assert (m["wrapper"], m["backend"], m["family"], m["model_type"]) == (wrapper, backend, family, model_type)
        s = m["scores"]["science_mc"]
        assert s["metric"] == "acc_norm" and 0.0 <= s["value"] <= 1.0 and s["stderr"] is not None
        assert s["n"] == N_QUESTIONS and s["wrapper"] == wrapper
        assert m["params"] > 10_000 and m["average"] == m["micro_average"] == s["value"] and m["tasks_scored"] == 1

        pair = json.loads((run_dir / "results" / name / "science_mc.json").read_text())
        assert pair["status"] == "ok" and pair["all_metrics"][metric_key("acc")] is not None
        # What the model actually scored: the Alpaca template around lm-eval's context, or the context itself.
        ctx, cont = pair["example_request"]
        assert ctx.startswith(ALPACA_HEAD) == (wrapper == "alpaca"), ctx
        assert "Question: " in ctx and ctx.rstrip().endswith("### Response:" if wrapper == "alpaca" else "Answer:")
        assert cont.startswith(" ")

        err = json.loads((run_dir / "results" / name / "no_such_task.error.json").read_text())
        assert err["status"] == "failed" and "no task 'no_such_task'" in err["error"]
    assert {(f["model"], f["task"]) for f in doc["failures"]} == {(n, "no_such_task") for n in expected}
    assert doc["missing"] == 4

    tables = (run_dir / "tables.md").read_text()
    assert "## LLaMA" in tables and "## T5 / Flan-T5" in tables and "## Failures" in tables
    assert "| Task | Metric | causal-alpaca | causal-raw |" in tables
    assert "| Task | Metric | t5-raw | t5-alpaca |" in tables
    for row in ("| science_mc | acc_norm |", "| no_such_task | acc | — | — |", "| **Average** |", "| **Micro-average** |"):
        assert row in tables
    assert "(1/2)" in tables  # averages over fewer tasks than asked are marked
    assert (run_dir / "figure4.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["include_path"] == str(TASK_DIR) and "ray" in manifest["environment"]

    # Re-run: finished pairs are reused untouched; only the failed ones are tried again.
    before = {p: p.read_bytes() for p in run_dir.glob("results/*/science_mc.json")}
    again = run_eval(cfg)
    out = capsys.readouterr().out
    assert (again.computed, again.reused, again.missing) == (4, 4, 4)
    assert "/ science_mc" not in out  # no progress line for a reused pair
    assert {p: p.read_bytes() for p in run_dir.glob("results/*/science_mc.json")} == before
    assert json.loads((run_dir / "results.json").read_text())["models"] == doc["models"]

    # Same config without the broken task: nothing to compute, Ray not even asked.
    done = run_eval(_cfg(tiny_lms, run_dir, metrics={"science_mc": "acc"}))
    assert (done.computed, done.reused, done.missing) == (0, 4, 0)
    # The reported metric is chosen at report time, from every metric the pair recorded.
    assert json.loads((run_dir / "results.json").read_text())["metrics"] == {"science_mc": "acc"}


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_wrapped_hflm_scores_the_wrapped_context(tiny_lms, family):
    """The HFLM subclass gives the model alpaca_prompt(context): its log-likelihoods equal plain HFLM's
    on the wrapped context and differ from plain HFLM's on the raw one."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from lamini.evaluate.lm_eval.wrap import wrapped_hflm_class

    path = getattr(tiny_lms, family)
    cls = AutoModelForCausalLM if family == "causal" else AutoModelForSeq2SeqLM
    model, tok = cls.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)

    def reqs(pairs):
        return [Instance("loglikelihood", {}, (c, x), i, ("t", i, 1)) for i, (c, x) in enumerate(pairs)]

    pairs = [("Question: Which planet is closest to the Sun?\nAnswer:", " Mercury"), ("Is water wet?", " yes")]
    wrapped = wrapped_hflm_class()(pretrained=model, tokenizer=tok, backend=family, batch_size=2)
    wrapped.wrapper = "alpaca"
    plain = HFLM(pretrained=model, tokenizer=tok, backend=family, batch_size=2)
    original = reqs(pairs)
    got = wrapped.loglikelihood(original)
    assert [r.args for r in original] == pairs  # the caller's Instances are not edited
    assert wrapped.first_request == (alpaca_prompt(pairs[0][0]), pairs[0][1])
    same = plain.loglikelihood(reqs([(alpaca_prompt(c), x) for c, x in pairs]))
    raw = plain.loglikelihood(reqs(pairs))
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in same], abs=1e-4)
    assert all(abs(a - b) > 1e-3 for (a, _), (b, _) in zip(got, raw))


def test_wrapper_reaches_generate_until_and_spares_empty_contexts():
    from lm_eval.api.instance import Instance

    class Echo:  # stands in for HFLM: returns the contexts it was given
        def generate_until(self, requests, disable_tqdm=False):
            return [r.args[0] for r in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            return [r.args[0] for r in requests]

    class Wrapped(WrappedContexts, Echo):
        pass

    lm = Wrapped()
    lm.wrapper = "alpaca"
    gen = [Instance("generate_until", {}, ("Name a fruit.", {"until": ["\n"]}), 0)]
    assert lm.generate_until(gen) == [alpaca_prompt("Name a fruit.")]
    assert lm.first_request == (alpaca_prompt("Name a fruit."), {"until": ["\n"]})
    # Unconditional requests (acc_mutual_info) keep their empty context.
    assert lm.loglikelihood([Instance("loglikelihood", {}, ("", " yes"), 0)]) == [""]
    assert wrap_context("", "alpaca") == "" and wrap_context("Hi", "none") == "Hi"
    raw = [Instance("loglikelihood", {}, ("Hi", " there"), 0)]
    assert wrap_requests(raw, "none")[0] is raw[0]


def test_relative_data_files_resolve_against_the_yaml_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b1.jsonl").write_text("{}\n")
    files = {"test": "a.jsonl", "train": ["sub/b*.jsonl", "missing.jsonl"], "x": "s3://bucket/c.jsonl"}
    assert _absolute(files, tmp_path) == {
        "test": str(tmp_path / "a.jsonl"),
        "train": [str(tmp_path / "sub/b*.jsonl"), "missing.jsonl"],
        "x": "s3://bucket/c.jsonl",
    }
    assert _absolute("/abs/path.json", tmp_path) == "/abs/path.json"


def test_paper_tasks_exist_in_lm_eval_with_their_metrics():
    """The 15 names are lm-eval tasks (not groups) whose YAML defines the metric the paper reports."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    assert [t.display for t in PAPER_TASKS] == [
        "OpenBookQA", "SciQ", "RACE", "ARC-C", "PIQA", "ReCoRD", "SST", "MRPC", "RTE", "MNLI", "MNLI (mm)",
        "Winograd", "WinoGrande", "WiC", "HellaSwag",
    ]  # fmt: skip
    tm = TaskManager()
    missing = [t.name for t in PAPER_TASKS if t.name not in tm.all_tasks]
    assert not missing, f"not in lm-eval {tm.__module__}: {missing}"
    for t in PAPER_TASKS:
        entry = tm.task_index[t.name]
        assert entry.kind == Kind.TASK, t.name
        metrics = [m["metric"] for m in load_yaml(entry.yaml_path, resolve_func=False).get("metric_list", [])]
        assert t.metric in metrics, (t.name, t.metric, metrics)


def test_task_table_helpers_and_gpu_sizing():
    from lamini.evaluate.config import EvalConfig

    cfg = EvalConfig(students=[{"name": "s", "base": "gpt2"}])
    assert eval_tasks(cfg) == [t.name for t in PAPER_TASKS] and len(PAPER_TASKS) == 15
    assert eval_tasks(cfg.model_copy(update={"tasks": ["rte", "sciq", "rte"]})) == ["rte", "sciq"]
    assert metric_for("hellaswag") == "acc_norm" and metric_for("record") == "f1" and metric_for("my_task") == "acc"
    assert metric_for("piqa", {"piqa": "acc"}) == "acc"
    assert stderr_key("acc") == "acc_stderr,none"
    assert stderr_key("exact_match,strict-match") == "exact_match_stderr,strict-match"

    small, unknown = cfg.students[0].model_copy(update={"params": 7.7e7}), cfg.students[0]
    assert task_gpus(small, cfg, cluster_gpus=0) == 0.0  # never ask a CPU cluster for a GPU
    assert 0 < task_gpus(small, cfg, cluster_gpus=8) < 1  # small students share a GPU
    assert task_gpus(unknown, cfg, cluster_gpus=8) == 1.0
    assert task_gpus(small, cfg.model_copy(update={"num_gpus_per_task": 0.5}), cluster_gpus=8) == 0.5


def test_averages_and_missing_metric():
    def rec(model, task, n, **metrics):
        return {
            "model": model, "task": task, "status": "ok", "n": n, "wrapper": "none", "backend": "causal",
            "family": "decoder", "model_type": "gpt2", "params": 124e6,
            "all_metrics": {metric_key(k): v for k, v in metrics.items()},
        }  # fmt: skip

    records = [rec("m", "rte", 10, acc=0.5), rec("m", "sciq", 30, acc_norm=0.9), rec("m", "record", 5, em=0.1)]
    doc = summarize(records, ["m"], ["rte", "sciq", "record"], {})
    m = doc["models"]["m"]
    assert m["average"] == pytest.approx((0.5 + 0.9) / 2)
    assert m["micro_average"] == pytest.approx((0.5 * 10 + 0.9 * 30) / 40)
    assert doc["missing"] == 1 and "no 'f1'" in doc["failures"][0]["error"] and "em" in doc["failures"][0]["error"]
    assert "## GPT-2 / Cerebras-GPT" in markdown_tables(doc)
    assert [format_params(x) for x in (61440, 7.7e7, 1.24e8, 1.3e9, None)] == ["61.4K", "77M", "124M", "1.3B", "?"]


def test_configs_and_lazy_imports():
    from lamini.config import load_config
    from lamini.evaluate.config import EvalConfig

    local = load_config(EvalConfig, ROOT / "configs" / "eval_local.yaml")
    assert (ROOT / local.include_path / "science_mc.yaml").exists() and local.tasks == ["science_mc"]
    paper = load_config(EvalConfig, ROOT / "configs" / "eval.yaml")
    assert paper.tasks is None and {s.family for s in paper.students} == {"decoder", "encoder-decoder"}

    code = (
        "import sys, lamini.evaluate.lm_eval.runner, lamini.evaluate.lm_eval.report, lamini.evaluate.lm_eval.tasks\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'matplotlib', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_student_group_splits_tables_of_one_architecture():
    from lamini.evaluate.lm_eval.report import family_groups

    summary = {"models": {
        "t5-small": {"model_type": "t5", "group": None},
        "lamini-t5": {"model_type": "t5", "group": None},
        "flan-t5": {"model_type": "t5", "group": "Flan-T5"},
        "gpt2": {"model_type": "gpt2", "group": None},
    }}  # fmt: skip
    assert family_groups(summary) == [
        ("T5 / Flan-T5", ["t5-small", "lamini-t5"]), ("Flan-T5", ["flan-t5"]), ("GPT-2 / Cerebras-GPT", ["gpt2"])
    ]
