"""The Batch API backend (teacher engine `openai_batch`) against the fake server's /v1/files and
/v1/batches: batching, expiry and partial failure, resubmission, batch price, resume after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from conftest import ROOT, descendants, kill_all

from lamini.config import ResponsesConfig


def _rows(tmp_path: Path, n: int, marks: dict[int, str]) -> Path:
    p = tmp_path / "qs.jsonl"
    p.write_text("".join(json.dumps({"instruction": f"Say {i}.{marks.get(i, '')}"}) + "\n" for i in range(n)))
    return p


def _cfg(tmp_path: Path, url: str, src: Path, **teacher) -> dict:
    return {"run_dir": str(tmp_path / "run"), "corpora": [{"format": "generic", "path": str(src)}],
            "teacher": {"engine": "openai_batch", "model": "fake-teacher", "base_url": url, "api_key_env": "LAMINI_TEST_API_KEY",
                        "max_requests_per_batch": 12, "poll_s": 0.05, "price_per_1m_prompt_tokens": 2.0,
                        "price_per_1m_completion_tokens": 8.0, **teacher},
            "generation": {"max_tokens": 16}}  # fmt: skip


def test_batches_expiry_partial_failure_and_the_batch_price(fake_openai, tmp_path, monkeypatch):
    from lamini.generate.responses import run_responses

    monkeypatch.setenv("LAMINI_TEST_API_KEY", "unused")
    fake_openai.configure(batch_latency_s=0.2)
    marks = {3: " [fault:expirex1]", 5: " [fault:500x1]", 7: " [fault:400]"}
    src = _rows(tmp_path, 30, marks)
    s = run_responses(ResponsesConfig.model_validate(_cfg(tmp_path, fake_openai.url, src)))
    assert (s.ok, s.errors, s.errors_by_kind, s.missing) == (29, 1, {"http_400": 1}, 0)

    state = json.loads((tmp_path / "run" / "batches.json").read_text())
    sizes = [len(b["ids"]) for b in state["batches"]]
    assert sizes == [12, 12, 6, 2]  # 30 rows in batches of <= 12, then the two that expired / failed, alone
    assert {b["status"] for b in state["batches"][:1]} == {"expired"}  # the batch holding row 3
    stats = fake_openai.stats()
    assert stats["total_requests"] == 32 and stats["faults"] == {"expire": 1, "500": 1, "400": 1}
    ok = pq.read_table(tmp_path / "run" / "dataset" / "responses.parquet").to_pylist()
    attempts = {r["instruction"].split(".")[0]: r["attempts"] for r in ok}
    assert attempts["Say 3"] == attempts["Say 5"] == 2 and attempts["Say 0"] == 1
    assert s.requests == 32
    full = (2.0 * s.prompt_tokens + 8.0 * s.completion_tokens) / 1e6
    assert s.cost_usd == round(round(full, 6) * 0.5, 6) and s.cost_usd > 0


def test_a_killed_batch_run_resumes_polling_instead_of_paying_twice(fake_openai, tmp_path):
    fake_openai.configure(batch_latency_s=4.0)
    src = _rows(tmp_path, 30, {})
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_cfg(tmp_path, fake_openai.url, src)))
    cmd = [sys.executable, "-m", "lamini.cli", "responses", "--config", str(cfg_path)]
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused")
    state = tmp_path / "run" / "batches.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if state.exists() and len(json.loads(state.read_text())["batches"]) == 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None
        kill_all([proc.pid, *descendants(proc.pid)])
        proc.wait(timeout=30)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])
    assert fake_openai.stats()["total_requests"] == 30  # all three batches were submitted before the kill

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "30 ok" in second.stdout
    assert fake_openai.stats()["total_requests"] == 30  # the same batches were polled, not sent again
    assert len(json.loads(state.read_text())["batches"]) == 3


def test_a_rejected_key_stops_a_batch_run(fake_openai, tmp_path, monkeypatch):
    import pytest

    from lamini.engines.abort import RunAborted
    from lamini.generate.responses import run_responses

    monkeypatch.setenv("LAMINI_TEST_API_KEY", "sk-wrong")
    fake_openai.configure(expected_api_key="sk-right")
    cfg = ResponsesConfig.model_validate(_cfg(tmp_path, fake_openai.url, _rows(tmp_path, 5, {})))
    with pytest.raises(RunAborted, match="HTTP 401"):
        run_responses(cfg)
    assert fake_openai.stats()["total_requests"] == 0  # no batch was created
    with pytest.raises(RunAborted, match="cannot reach"):
        run_responses(ResponsesConfig.model_validate(
            _cfg(tmp_path / "x", "http://127.0.0.1:9/v1", _rows(tmp_path, 5, {}), max_requests_per_batch=2)))
