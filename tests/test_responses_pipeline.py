"""The responses stage end to end on a local Ray against a real HTTP teacher on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

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
    """SIGKILL the whole run (driver and its local Ray) while blocks are half answered; the re-run
    sends again at most the requests that were in flight (the answered rows of unfinished blocks
    come back from the actors' journals), the final dataset holds each input row exactly once,
    and the accounting counts every request the server answered, the lost ones included."""
    alpaca = shared_data("alpaca_5000.json")
    n_rows, actors, in_flight = 1200, 2, 8
    fake_openai.configure(latency_s=0.1)
    run_dir = tmp_path / "run"
    cfg = {
        "run_dir": str(run_dir),
        "corpora": [{"format": "alpaca", "path": str(alpaca), "source": "alpaca"}],
        "limit": n_rows,
        "teacher": _openai_teacher(fake_openai.url, max_in_flight=in_flight, price_per_1m_prompt_tokens=2.0,
                                   price_per_1m_completion_tokens=8.0),
        "generation": {"max_tokens": 8},
        "pipeline": {"batch_size": 8, "rows_per_block": 200, "min_actors": actors, "max_actors": actors},
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
            if fake_openai.stats()["total_requests"] >= 300:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed:\n" + (tmp_path / "first_run.log").read_text()[-3000:]
        kill_all([proc.pid, *descendants(proc.pid)])
        proc.wait(timeout=30)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])

    # What the shards alone held at the kill: far fewer rows than the server had answered, so
    # resuming from shards alone would send hundreds again (what this test guards against).
    in_shards = set()
    for p in shards.glob("*.parquet"):
        try:
            in_shards |= set(pq.read_table(p, columns=["id"]).column("id").to_pylist())
        except Exception:
            pass
    before = fake_openai.stats()
    assert before["total_requests"] - len(in_shards) > actors * in_flight
    assert list((run_dir / "journal").glob("*.jsonl"))
    fake_openai.reset_stats()

    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"responses: {n_rows} input rows | {n_rows} ok" in second.stdout

    after = fake_openai.stats()
    sent = before["total_requests"] + after["total_requests"]
    assert n_rows <= sent <= n_rows + actors * in_flight, (before["total_requests"], after["total_requests"])
    ok, err = _read_final(run_dir)
    assert err.num_rows == 0
    ids = ok.column("id").to_pylist()
    assert len(ids) == len(set(ids)) == n_rows
    assert not list((run_dir / "journal").glob("*.jsonl"))  # folded into the shards

    # Every request the server saw is counted (a write-ahead line precedes each), and the cost
    # covers every token the server billed: the answers we never read are priced at their maximum.
    m = json.loads((run_dir / "manifest.json").read_text())
    print(f"kill test: server saw {before['total_requests']} + {after['total_requests']} = {sent} requests for {n_rows} rows "
          f"(in shards at the kill: {len(in_shards)}); manifest requests {m['counts']['requests']} "
          f"({m['counts']['unsettled_requests']} unanswered)")
    assert sent <= m["counts"]["requests"] <= sent + actors * in_flight
    served = {k: before["usage_served"][k] + after["usage_served"][k] for k in ("prompt_tokens", "completion_tokens")}
    t = m["tokens"]
    assert t["prompt"] + t["unsettled_prompt_max"] >= served["prompt_tokens"]
    assert t["completion"] + t["unsettled_completion_max"] >= served["completion_tokens"]
    assert m["estimated_cost_usd"] >= round((2.0 * served["prompt_tokens"] + 8.0 * served["completion_tokens"]) / 1e6, 6)


def test_budget_caps_are_never_passed_and_the_rest_is_left_unsent(ray_local, fake_openai, tmp_path, monkeypatch):
    """max_requests / max_cost_usd hold over all runs of a run directory; rows the budget cannot
    cover are left unsent (not errors, not missing), and a run with a larger cap sends them."""
    from lamini.generate.responses import run_responses

    monkeypatch.setenv("LAMINI_TEST_API_KEY", "unused")
    src = _write_rows(tmp_path / "qs.jsonl", [{"instruction": f"Say {i}."} for i in range(80)])
    teacher = _openai_teacher(fake_openai.url, price_per_1m_prompt_tokens=2.0, price_per_1m_completion_tokens=8.0)

    def cfg(run: str, **budget) -> ResponsesConfig:
        return ResponsesConfig.model_validate(
            {"run_dir": str(tmp_path / run), "corpora": [{"format": "generic", "path": str(src)}], "teacher": teacher,
             "generation": {"max_tokens": 16}, "budget": budget,
             "pipeline": {"batch_size": 8, "rows_per_block": 20, "max_actors": 2}}
        )  # fmt: skip

    s = run_responses(cfg("r", max_requests=30))
    assert fake_openai.stats()["total_requests"] == s.requests == s.ok == 30
    assert (s.budget_exhausted, s.unsent, s.missing, s.errors) == ("max_requests", 50, 0, 0)
    assert "budget max_requests reached: 50 rows left unsent" in s.line()
    again = run_responses(cfg("r", max_requests=30))  # spent already: nothing goes out
    assert fake_openai.stats()["total_requests"] == 30 and (again.sent, again.unsent) == (0, 50)
    more = run_responses(cfg("r", max_requests=80))  # the cap counts the first run's 30
    assert fake_openai.stats()["total_requests"] == 80 and (more.ok, more.unsent, more.budget_exhausted) == (80, 0, None)

    fake_openai.reset_stats()
    c = run_responses(cfg("c", max_cost_usd=0.004))
    assert c.budget_exhausted == "max_cost_usd" and 0 < c.ok < 80 and c.ok + c.unsent == 80
    assert c.cost_usd <= 0.004
    served = fake_openai.stats()["usage_served"]  # what the server billed, by its own count
    assert (2.0 * served["prompt_tokens"] + 8.0 * served["completion_tokens"]) / 1e6 <= 0.004


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


# ------------------------------------------------------------------ the command line: errors and exit status


def _cli(tmp_path: Path, cfg: dict, *extra: str, key: str = "unused", timeout: int = 240):
    """`lamini responses` in a subprocess with its own local Ray, as a user runs it."""
    cfg = {"ray": {"num_cpus": 2, "temp_dir": f"/tmp/lamini-cli-{os.getpid()}"}, **cfg}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, LAMINI_TEST_API_KEY=key, RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "lamini.cli", "responses", "--config", str(path), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.mark.parametrize("fault", ["refused", "401", "404"])
def test_cli_stops_at_once_on_a_dead_endpoint_bad_key_or_unknown_model(fault, fake_openai, tmp_path):
    """Exit 3 with one line saying why, after at most fail_fast_after + max_in_flight requests
    (the ones already in flight), instead of sending all 200 rows through all their retries."""
    src = _write_rows(tmp_path / "qs.jsonl", [{"instruction": f"Say {i}."} for i in range(200)])
    url = _refused_url() if fault == "refused" else fake_openai.url
    if fault == "401":
        fake_openai.configure(expected_api_key="sk-the-right-one")
    if fault == "404":
        fake_openai.configure(known_models=["gpt-real"])
    teacher = _openai_teacher(url, max_in_flight=4, fail_fast_after=3, model="gpt-typo")
    cfg = {"run_dir": str(tmp_path / "run"), "corpora": [{"format": "generic", "path": str(src)}], "teacher": teacher,
           "pipeline": {"batch_size": 8, "rows_per_block": 20, "max_actors": 1}}
    out = _cli(tmp_path, cfg, key=SENTINEL)
    assert out.returncode == 3, out.stderr[-3000:]
    lines = [x for x in out.stderr.splitlines() if x.startswith("lamini responses: stopped:")]
    assert len(lines) == 1, out.stderr[-3000:]
    want = {"refused": "failed with connection", "401": "failed with http_401", "404": "'gpt-typo'"}[fault]
    assert want in lines[0] and "Traceback" not in out.stderr and SENTINEL not in out.stderr + out.stdout
    if fault != "refused":
        assert 3 <= fake_openai.stats()["total_requests"] <= 3 + 4


def test_cli_exit_status_says_whether_errors_are_allowed(fake_openai, tmp_path):
    """Rows that end as errors make the run exit 1 (with a line saying so) unless allow_errors."""
    rows = [{"instruction": f"Say {i}." + (" [fault:503]" if i % 10 == 0 else "")} for i in range(30)]
    src = _write_rows(tmp_path / "qs.jsonl", rows)
    cfg = {"run_dir": str(tmp_path / "run"), "corpora": [{"format": "generic", "path": str(src)}],
           "teacher": _openai_teacher(fake_openai.url, max_retries=1), "pipeline": {"rows_per_block": 10}}
    first = _cli(tmp_path, cfg)
    assert first.returncode == 1, first.stderr[-3000:]
    assert "27 ok | 3 errors (http_503: 3)" in first.stdout
    assert "lamini responses: 3 rows ended as errors" in first.stderr and "allow_errors" in first.stderr
    second = _cli(tmp_path, cfg, "--set", "allow_errors=true")  # the 3 are retried, fail again, and are accepted
    assert second.returncode == 0, second.stderr[-3000:]
    assert "27 ok | 3 errors" in second.stdout and "sent 3 this run" in second.stdout


def test_cli_yaml_syntax_error_is_one_line(tmp_path):
    cfg = tmp_path / "broken.yaml"
    cfg.write_text("run_dir: runs/x\ncorpora:\n  - format: alpaca\n    path: [unclosed\nteacher: {engine: hf}\n")
    out = subprocess.run([sys.executable, "-m", "lamini.cli", "responses", "--config", str(cfg)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith(f"lamini responses: error: {cfg}:5:") and "YAML syntax error" in out.stderr


def _say_config(tmp_path: Path, url: str, rows: int, max_in_flight: int, batch_size: int, rows_per_block: int,
                tag: str) -> Path:  # fmt: skip
    """cfg.yaml of a responses run over `rows` "Say i." instructions, one actor, its own local Ray."""
    src = _write_rows(tmp_path / "qs.jsonl", [{"instruction": f"Say {i}."} for i in range(rows)])
    cfg = {"run_dir": str(tmp_path / "run"), "corpora": [{"format": "generic", "path": str(src)}],
           "teacher": _openai_teacher(url, max_in_flight=max_in_flight),
           "pipeline": {"batch_size": batch_size, "rows_per_block": rows_per_block, "max_actors": 1},
           "ray": {"num_cpus": 2, "temp_dir": f"/tmp/lamini-{tag}-{os.getpid()}"}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ctrl_c_stops_with_one_line_and_exit_130(fake_openai, tmp_path):
    """SIGINT to the process group (what a terminal's Ctrl-C does) mid-run."""
    fake_openai.configure(latency_s=0.5)
    path = _say_config(tmp_path, fake_openai.url, rows=400, max_in_flight=4, batch_size=8, rows_per_block=40, tag="int")
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused", RAY_DATA_DISABLE_PROGRESS_BARS="1")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([sys.executable, "-m", "lamini.cli", "responses", "--config", str(path)], cwd=ROOT,
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and fake_openai.stats()["total_requests"] == 0:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        kill_all([proc.pid, *descendants(proc.pid)])
    assert proc.returncode == 130, err[-3000:]
    assert "lamini responses: interrupted; re-run the same command to resume" in err
    assert "Traceback" not in err, err[-3000:]


def test_ray_datas_non_interactive_progress_block_becomes_one_line():
    """Ray Data's own logging functions, as its LoggingExecutionProgressManager.refresh calls them."""
    import logging

    from ray.data._internal.progress import logging_progress as lp

    from lamini.runs.progress_log import RAY_PROGRESS_LOGGER as PROGRESS_LOGGER
    from lamini.runs.progress_log import install_compact_progress

    install_compact_progress()
    install_compact_progress()  # once per process, however often Ray is initialised
    assert len(logging.getLogger(PROGRESS_LOGGER).filters) == 1
    seen: list[str] = []

    class Keep(logging.Handler):  # on the logger itself: Ray Data's loggers do not propagate to the root
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    keep = Keep(level=logging.INFO)
    logging.getLogger(PROGRESS_LOGGER).addHandler(keep)
    for done in (40, 200):
        first = "======= Running Dataset: dataset_7_0 ======="
        lp.logger.info(first)
        lp._log_global_progress(lp._LoggingMetrics("Total Progress", "Active & requested resources: 0.25/2 CPU", done, 200))
        lp.logger.info("")
        lp._log_op_or_sub_progress(lp._LoggingMetrics("MapBatches(JournaledUDF)", "Tasks: 2; Actors: 1", done, 200))
        lp._log_op_or_sub_progress(lp._LoggingMetrics("    - Write", None, done // 2, None))
        lp.logger.info("=" * len(first))
    logging.getLogger(PROGRESS_LOGGER).removeHandler(keep)
    assert seen == [
        "[dataset_7_0] 40/200 rows | MapBatches(JournaledUDF) 40/200 (actors 1) | Write 20/?",
        "[dataset_7_0] 200/200 rows | MapBatches(JournaledUDF) 200/200 (actors 1) | Write 100/?",
    ]


def test_cli_progress_in_a_log_is_one_line_per_interval(fake_openai, tmp_path):
    """A real run with stdout not a terminal and Ray Data's progress on: its report is one line each time."""
    fake_openai.configure(latency_s=0.05)
    path = _say_config(tmp_path, fake_openai.url, rows=120, max_in_flight=2, batch_size=4, rows_per_block=20, tag="prog")
    env = dict(os.environ, LAMINI_TEST_API_KEY="unused", RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL="1")
    env.pop("RAY_DATA_DISABLE_PROGRESS_BARS", None)
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-m", "lamini.cli", "responses", "--config", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    progress = [x for x in text.splitlines() if "logging_progress" in x and "Progress will be logged" not in x]
    assert progress, text[-3000:]
    assert all(" rows | " in x and "| MapBatches(JournaledUDF) " in x for x in progress), progress
    assert "======= Running Dataset" not in text
