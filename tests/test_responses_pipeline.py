"""The responses stage end to end on a local Ray against a real HTTP teacher on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import RAY_TMP, ROOT, descendants, kill_all, shared_data

from lamini.config import ResponsesConfig, load_config

SENTINEL = "sk-SENTINEL-7f3a9c1e5b2d4f60"


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _openai_teacher(url: str, **kw) -> dict:
    t = {
        "engine": "openai",
        "model": "fake-teacher",
        "base_url": url,
        "api_key_env": "LAMINI_TEST_API_KEY",
        "max_in_flight": 16,
        "max_retries": 6,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.2,
        "timeout_s": 2.0,
    }
    t.update(kw)
    return t


def _read_final(run_dir: Path):
    ok = pq.read_table(run_dir / "dataset" / "responses.parquet")
    err = pq.read_table(run_dir / "dataset" / "errors.parquet")  # always written, empty when no errors
    return ok, err


def test_every_row_ends_once_under_faults(ray_local, fake_openai, tmp_path, monkeypatch, capsys):
    """Retries recover transient faults; permanent ones end as one recorded error each."""
    monkeypatch.setenv("LAMINI_TEST_API_KEY", SENTINEL)
    rows = []
    for i in range(240):
        q = f"Question {i}: name a colour that starts with letter {chr(65 + i % 26)}."
        if i % 12 == 0:
            q += " [fault:500x2]"  # fails twice, then succeeds
        if i % 40 == 1:
            q += " [fault:503]"  # fails every attempt
        if i % 40 == 2:
            q += " [fault:empty_choices]"
        rows.append({"instruction": q})
    src = _write_rows(tmp_path / "qs.jsonl", rows)
    fake_openai.configure(fault_rate=0.1, fault_kinds=["429", "500", "malformed", "disconnect"])
    run_dir = tmp_path / "run"
    cfg = ResponsesConfig.model_validate(
        {
            "run_dir": str(run_dir),
            "corpora": [{"format": "generic", "path": str(src), "source": "probe"}],
            "teacher": _openai_teacher(fake_openai.url),
            "generation": {"max_tokens": 16},
            "pipeline": {"batch_size": 16, "rows_per_block": 40, "max_actors": 2},
        }
    )
    from lamini.generate.responses import run_responses

    summary = run_responses(cfg)
    print(summary.line())

    ok, err = _read_final(run_dir)
    ok_ids, err_ids = ok.column("id").to_pylist(), err.column("id").to_pylist()
    assert len(ok_ids) == len(set(ok_ids)) and len(err_ids) == len(set(err_ids))
    assert not set(ok_ids) & set(err_ids)
    assert len(ok_ids) + len(err_ids) == 240
    permanent = {r["instruction"] for r in rows if "[fault:503]" in r["instruction"] or "empty_choices" in r["instruction"]}
    assert set(err.column("instruction").to_pylist()) == permanent
    kinds = dict(zip(err.column("instruction").to_pylist(), err.column("error_kind").to_pylist()))
    assert all(kinds[q] == ("http_503" if "503" in q else "empty_choices") for q in permanent)
    assert set(err.column("attempts").to_pylist()) == {7}  # 1 try + 6 retries

    # LaMini schema first, then provenance; the paper's system message reached the teacher.
    assert ok.column_names[:3] == ["instruction", "response", "instruction_source"]
    assert set(ok.column("instruction_source").to_pylist()) == {"probe"}
    assert all(r.startswith("echo: Question") for r in ok.column("response").to_pylist())

    # The server saw each successful prompt exactly as often as our attempts say: a row is
    # never requested again after it succeeded, and the retried ones really were retried.
    stats = fake_openai.stats()
    by_prompt = stats["by_prompt"]
    for q, attempts in zip(ok.column("instruction").to_pylist(), ok.column("attempts").to_pylist()):
        assert by_prompt[q] == attempts
        if "[fault:500x2]" in q:
            assert attempts >= 3
    assert summary.ok == len(ok_ids) and summary.errors == len(err_ids) and summary.missing == 0

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["counts"]["ok"] == len(ok_ids)
    assert manifest["counts"]["errors_by_kind"] == {"http_503": 6, "empty_choices": 6}
    assert manifest["tokens"]["completion"] == sum(ok.column("completion_tokens").to_pylist())
    assert manifest["teacher"]["api_key_env"] == "LAMINI_TEST_API_KEY"

    # The key went to the server, and nowhere else: no file of the run, no Ray log, no output.
    assert stats["auth_headers_seen"] > 0
    out = capsys.readouterr()
    assert SENTINEL not in out.out + out.err
    for p in list(run_dir.rglob("*")) + list(RAY_TMP.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.suffix in (".log", ".out", ".err", ".json", ".jsonl", ".parquet", ".txt"):
            assert SENTINEL.encode() not in p.read_bytes(), p


def test_second_run_sends_nothing(ray_local, fake_openai, tmp_path, monkeypatch):
    """A finished run re-run sends no request and rewrites the same dataset."""
    src = _write_rows(tmp_path / "qs.jsonl", [{"instruction": f"Say {i}."} for i in range(30)])
    cfg = ResponsesConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "corpora": [{"format": "generic", "path": str(src)}],
            "teacher": _openai_teacher(fake_openai.url),
            "pipeline": {"rows_per_block": 8},
        }
    )
    from lamini.generate.responses import run_responses

    first = run_responses(cfg)
    n = fake_openai.stats()["requests"]
    second = run_responses(cfg)
    assert fake_openai.stats()["requests"] == n == 30
    assert (first.ok, second.ok, second.sent, second.already_done) == (30, 30, 0, 30)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [a["sent"] for a in manifest["attempts"]] == [30, 0]


def test_kill_and_resume(fake_openai, tmp_path):
    """SIGKILL the whole run (driver and its local Ray) mid-way; the re-run requests only the
    rows with no output yet, and the final dataset holds each input row exactly once."""
    alpaca = shared_data("alpaca_5000.json")
    n_rows = 1200
    fake_openai.configure(latency_s=0.1)
    run_dir = tmp_path / "run"
    cfg = {
        "run_dir": str(run_dir),
        "corpora": [{"format": "alpaca", "path": str(alpaca), "source": "alpaca"}],
        "limit": n_rows,
        "teacher": _openai_teacher(fake_openai.url, max_in_flight=8),
        "generation": {"max_tokens": 8},
        "pipeline": {"batch_size": 8, "rows_per_block": 40, "max_actors": 1, "max_tasks_in_flight_per_actor": 2},
        # Ray's socket paths must stay short (a Unix socket path is at most 107 bytes).
        "ray": {"num_cpus": 2, "temp_dir": f"/tmp/lamini-kill-{os.getpid()}"},
    }
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "lamini.cli", "responses", "--config", str(cfg_path)]
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)  # this run starts its own local Ray, which we kill with it

    log = open(tmp_path / "first_run.log", "w")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=log)
    shards = run_dir / "shards"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list(shards.glob("*.parquet"))) >= 3:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first_run.log").read_text()[-3000:]
        kill_all([proc.pid, *descendants(proc.pid)])
        proc.wait(timeout=30)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])

    # What survived the kill: readable shards (a half-written one is set aside by the re-run).
    done_ids = set()
    for p in shards.glob("*.parquet"):
        try:
            done_ids |= set(pq.read_table(p, columns=["id"]).column("id").to_pylist())
        except Exception:
            pass
    assert 0 < len(done_ids) < n_rows
    before = fake_openai.stats()
    fake_openai.reset_stats()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "responses: 1200 input rows | 1200 ok" in second.stdout

    after = fake_openai.stats()
    assert after["requests"] == n_rows - len(done_ids)
    ok, err = _read_final(run_dir)
    assert err.num_rows == 0
    ids = ok.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n_rows
    # No prompt answered before the kill was asked again.
    answered_before = set(
        ok.filter(pc.is_in(ok.column("id"), value_set=pa.array(sorted(done_ids)))).column("instruction").to_pylist()
    )
    assert not answered_before & set(after["by_prompt"])
    assert before["requests"] >= len(done_ids)


def test_every_config_in_configs_loads():
    from lamini.cli import STAGES

    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert files
    for f in files:
        # configs/<stage>[_variant].yaml, with '-' and ' ' in stage names written '_' (probe_toxicity.yaml
        # is `lamini probe toxicity`); configs/<stage>/*.yaml (the zoo)
        name = f.parent.name if f.parent != ROOT / "configs" else f.stem.replace("_", "-")
        stage = next(st for st in sorted(STAGES, key=len, reverse=True) if name.startswith(st.replace(" ", "-")))
        load_config(STAGES[stage][0], f)


def test_config_rejects_unknown_keys_and_overrides(tmp_path):
    base = {"corpora": [{"format": "alpaca", "path": "x.json"}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**base, "teachr": {}}))
    with pytest.raises(Exception, match="teachr"):
        load_config(ResponsesConfig, p)
    p.write_text(yaml.safe_dump(base))
    cfg = load_config(ResponsesConfig, p, ["teacher.batch_size=3", "pipeline.max_actors=5", "corpora.0.limit=7"])
    assert (cfg.teacher.engine, cfg.teacher.batch_size, cfg.pipeline.max_actors, cfg.corpora[0].limit) == ("hf", 3, 5, 7)
    # a config written with the old `backend:` key still loads, as the same engine
    p.write_text(yaml.safe_dump({**base, "teacher": {"backend": "openai", "model": "m"}}))
    assert load_config(ResponsesConfig, p).teacher.engine == "openai"
    # every field of every config model carries a description
    from lamini import config as c

    for model in [m for m in vars(c).values() if isinstance(m, type) and issubclass(m, c.StrictModel) and m is not c.StrictModel]:
        for name, f in model.model_fields.items():
            if name != "engine":
                assert f.description, f"{model.__name__}.{name} has no description"


def test_import_and_help_stay_light():
    """`import lamini` and `lamini --help` load no torch, transformers, vllm or deepspeed."""
    code = (
        "import sys, contextlib, io\n"
        "import lamini, lamini.cli, lamini.config, lamini.engines, lamini.corpus, lamini.train.config\n"
        "import lamini.evaluate.config, lamini.evaluate.inference, lamini.engines.actors\n"
        "import lamini.evaluate.probes.hallucination, lamini.evaluate.probes.ratings, lamini.evaluate.probes.toxicity\n"
        "import lamini.evaluate.lm_eval.runner, lamini.evaluate.bench.run, lamini.evaluate.probes.user_oriented\n"
        "import lamini.evaluate.probes.sheets\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        lamini.cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'transformers', 'vllm', 'deepspeed', 'lm_eval', 'detoxify')\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
    help_out = subprocess.run([sys.executable, "-m", "lamini.cli", "responses", "--help"], capture_output=True, text=True)
    assert "--config" in help_out.stdout


def test_bad_input_fails_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "fine"}\n{"instruction": 42}\n')
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "corpora": [{"format": "generic", "path": str(bad)}]}))
    out = subprocess.run([sys.executable, "-m", "lamini.cli", "responses", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert f"{bad}:2:" in out.stderr


def test_skipped_bad_rows_reach_rejects_summary_and_manifest(ray_local, fake_openai, tmp_path, monkeypatch):
    """`on_error: skip` at the stage: each bad line is in run_dir/rejects.jsonl with file, line and
    reason, counted in the summary and the manifest; the good rows are answered; tokens are priced.
    A corpus whose every row is bad ends with both dataset files written, empty."""
    from lamini.generate.responses import run_responses

    monkeypatch.setenv("LAMINI_TEST_API_KEY", "unused")
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(
        b'{"instruction": "Name a fruit."}\n'
        b'{"instruction": 42}\n'  # wrong type
        b'{"instruction": "Name a tree."\n'  # malformed JSON
        b'{"instruction": "Name a bird."}\n'
        b'{"prompt": "no instruction field"}\n'  # missing field
        b'{"instruction": "caf\xe9"}\n'  # not UTF-8
    )
    teacher = _openai_teacher(fake_openai.url, price_per_1m_prompt_tokens=2.0, price_per_1m_completion_tokens=8.0)
    cfg = ResponsesConfig.model_validate(
        {"run_dir": str(tmp_path / "run"), "corpora": [{"format": "generic", "path": str(src)}], "teacher": teacher,
         "on_error": "skip", "pipeline": {"rows_per_block": 8}}
    )  # fmt: skip
    s = run_responses(cfg)
    rejects = [json.loads(line) for line in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [(str(src), n) for n in (2, 3, 5, 6)]
    assert all(r["reason"] for r in rejects)
    assert (s.input_rows, s.ok, s.rejects, s.missing) == (2, 2, 4, 0) and "4 rejects" in s.line()
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["counts"]["rejects"] == 4 and sum(m["counts"]["rejects_by_reason"].values()) == 4
    assert m["tokens"]["prompt"] == s.prompt_tokens > 0 and m["tokens"]["completion"] == s.completion_tokens > 0
    assert m["estimated_cost_usd"] == round((2.0 * s.prompt_tokens + 8.0 * s.completion_tokens) / 1e6, 6)
    assert m["wall_time_s"] > 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": 1}\n{"instruction": 2}\n')
    s = run_responses(ResponsesConfig.model_validate(
        {**cfg.model_dump(), "run_dir": str(tmp_path / "all_bad"), "corpora": [{"format": "generic", "path": str(bad)}]}
    ))  # fmt: skip
    ok, err = _read_final(tmp_path / "all_bad")
    assert (s.input_rows, s.rejects, ok.num_rows, err.num_rows) == (0, 2, 0, 0)
    assert ok.column_names[:3] == ["instruction", "response", "instruction_source"]
