"""`lamini bench students` on two tiny students (causal and seq2seq) built here, on the session's local Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lamini.evaluate.bench.actor import percentile
from lamini.evaluate.bench.run import load_prompts

N_PROMPTS, MAX_TOKENS, BATCH_SIZES = 8, 8, [1, 4]


def test_percentile_interpolates_like_numpy():
    assert percentile([3.0], 0.95) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.95) == pytest.approx(3.85)  # numpy.percentile(..., 95)


def test_prompts_from_either_column_or_the_packaged_questions(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"instruction": "Name a colour."}, {"question": "Who won in 1922?"}, {"instruction": "", "question": "Why"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_prompts(str(path)) == (["Name a colour.", "Who won in 1922?", "Why"], str(path))

    packaged, source = load_prompts(None)
    assert len(packaged) == 40 and source.endswith("hallucination_questions.jsonl")

    path.write_text(json.dumps({"text": "no prompt column"}) + "\n")
    with pytest.raises(ValueError, match="instruction` or `question"):
        load_prompts(str(path))


def test_importing_the_bench_loads_no_torch():
    code = (
        "import sys, lamini.evaluate.bench.run; "
        "print([m for m in ('torch', 'transformers', 'vllm', 'ray', 'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_bench_students_on_tiny_models(ray_local, tiny_lms, tmp_path, capsys):
    from lamini.evaluate.bench.run import run_bench_students
    from lamini.evaluate.config import BenchStudentsConfig

    causal, seq2seq = tiny_lms
    cfg = BenchStudentsConfig(
        students=[
            {"name": "tiny-dec", "base": str(causal), "num_cpus_per_actor": 1},
            {"name": "tiny-s2s", "base": str(seq2seq), "num_cpus_per_actor": 1},
            {"name": "broken", "base": str(tmp_path / "no-such-model")},
        ],
        n_prompts=N_PROMPTS,
        batch_sizes=BATCH_SIZES,
        max_tokens=MAX_TOKENS,
        engines=["hf", "vllm"],
        run_dir=str(tmp_path / "run"),
    )
    summary = run_bench_students(cfg)

    report = json.loads((tmp_path / "run" / "bench_students.json").read_text())
    points = {(p["student"], p["engine"], p["batch_size"]): p for p in report["points"]}
    assert len(points) == len(report["points"]) == 3 * 2 * len(BATCH_SIZES)
    for name in ("tiny-dec", "tiny-s2s"):
        for b in BATCH_SIZES:
            p = points[(name, "hf", b)]
            assert p["status"] == "ok", p
            # EOS ignored: every request wrote max_tokens tokens.
            assert p["output_tokens"] == N_PROMPTS * MAX_TOKENS and p["requests"] == N_PROMPTS
            assert p["batches"] == -(-N_PROMPTS // b) and p["prompt_tokens"] > 0
            assert p["tokens_per_s"] > 0 and p["requests_per_s"] > 0
            assert 0 < p["p50_latency_s"] <= p["p95_latency_s"]
            assert p["peak_memory_mb"] > 0 and p["process_peak_rss_mb"] > 0 and p["params"] > 0

            v = points[(name, "vllm", b)]
            assert v["status"] == "skipped" and "no GPU" in v["reason"]
        # T5 is also refused by vLLM itself, for its own reason.
    assert "encoder-decoder" in points[("tiny-s2s", "vllm", 1)]["reason"]
    assert {p["status"] for (n, _, _), p in points.items() if n == "broken"} == {"failed"}

    runs = {(r["name"], r["engine"] if "engine" in r else None): r for r in report["runs"]}
    hf = runs[("tiny-dec", "hf")]
    assert hf["status"] == "ok" and hf["wrapper"] == "alpaca" and hf["torch_threads"] == 1 and hf["load_s"] > 0
    assert runs[("tiny-s2s", "hf")]["family"] == "encoder-decoder"
    assert report["prompts"]["n_prompts"] == N_PROMPTS and report["environment"]["ray"]

    png = tmp_path / "run" / "bench_students.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary.plot_path.endswith("bench_students.png")
    assert (summary.measured, summary.skipped, summary.missing) == (4, 4, 4)
    assert "4 points measured" in summary.line()
    out = capsys.readouterr().out
    assert "tiny-dec hf batch 4:" in out and "tok/s" in out
