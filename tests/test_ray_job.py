"""`ray job submit` against a Ray started with `ray start --head` on 127.0.0.1.

This Ray has its own --temp-dir and ports, and is stopped by its own PIDs: `ray stop` would
end every Ray on the machine (other tests', a user's).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import ROOT, shared_data

SENTINEL = "sk-SENTINEL-headonly-4c1d9e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


@pytest.mark.slow
def test_ray_job_submit_end_to_end(fake_openai, tmp_path):
    import psutil

    seeds = shared_data("self_instruct_seed_tasks.jsonl")
    temp_dir = Path("/tmp") / f"lamini-job-{os.getpid()}"
    gcs_port, dash_port, agent_port, agent_grpc, client_port = (_free_port() for _ in range(5))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    env.pop("LAMINI_TEST_API_KEY", None)
    # The API key reaches the job as on cluster.yaml's nodes: in the environment of `ray start`,
    # which the job's driver and every actor inherit; not in the submission's env_vars (Ray keeps
    # those in the GCS and shows them in `ray job list`). The submitting shell does not have it.
    key = f"sk-test-job-{os.getpid()}"
    fake_openai.configure(expected_api_key=key)
    start = subprocess.run(
        [_ray_bin(), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}",
         f"--dashboard-port={dash_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         # Every port off its default: another Ray on this machine (the session's test Ray,
         # a user's) already holds the defaults, and a job agent that cannot bind its port
         # leaves the job server with "No available agent to submit job".
         f"--dashboard-agent-listen-port={agent_port}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--ray-client-server-port={client_port}",
         "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=dict(env, LAMINI_TEST_API_KEY=key), capture_output=True, text=True, timeout=120,
    )
    assert start.returncode == 0, start.stderr[-2000:]
    try:
        run_dir = tmp_path / "run"
        cfg = {
            "run_dir": str(run_dir),
            "corpora": [{"format": "self_instruct", "path": str(seeds), "source": "self_instruct"}],
            "teacher": {"engine": "openai", "model": "fake", "base_url": fake_openai.url,
                        "api_key_env": "LAMINI_TEST_API_KEY", "backoff_base_s": 0.01},
            "generation": {"max_tokens": 8},
            "pipeline": {"rows_per_block": 50},
        }
        cfg_path = tmp_path / "job.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        submit_cmd = [
            _ray_bin(), "job", "submit", f"--address=http://127.0.0.1:{dash_port}", "--working-dir", ".",
            # Progress every second, so the job's log shows Ray Data's progress lines (one each).
            "--runtime-env-json", json.dumps({"env_vars": {"RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL": "1",
                                                           "RAY_DATA_DISABLE_PROGRESS_BARS": "0"}}),
            "--", "python", "ray_jobs/responses.py", "--config", str(cfg_path),
        ]  # fmt: skip
        # Right after `ray start` on a busy machine the head's job agent may not be up yet; the
        # job server then refuses the submission (no job is created), so trying again is safe.
        deadline = time.time() + 120
        while True:
            submit = subprocess.run(submit_cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if "No available agent to submit job" not in submit.stderr or time.time() > deadline:
                break
            time.sleep(2)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-4000:]
        text = re.sub(r"\x1b\[[0-9;]*m", "", submit.stdout + submit.stderr)
        assert re.search(r"Job 'raysubmit_\w+' succeeded", text), text[-3000:]
        ok = pq.read_table(run_dir / "dataset" / "responses.parquet")
        n_seed_rows = sum(len(json.loads(l)["instances"]) for l in seeds.read_text().splitlines() if l.strip())
        assert ok.num_rows == n_seed_rows == len(set(ok.column("id").to_pylist()))
        stats = fake_openai.stats()
        assert stats["requests"] == n_seed_rows
        assert stats["auth_matched"] == n_seed_rows and stats["auth_mismatched"] == 0  # every request carried the key from `ray start`'s env
        jobs = subprocess.run([_ray_bin(), "job", "list", f"--address=http://127.0.0.1:{dash_port}"], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        leaks = [p for p in run_dir.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
        assert key not in text and key not in jobs.stdout + jobs.stderr and not leaks, leaks
        # Ray Data's progress in a job's (non-interactive) log: one compact line per interval.
        progress = [line for line in text.splitlines() if "logging_progress" in line]
        assert any(" rows | " in line for line in progress), text[-3000:]
        assert not [line for line in progress if "=====" in line or "Tasks:" in line], progress
        ray_logs = [p for p in temp_dir.rglob("*") if p.is_file() and not p.is_symlink() and p.suffix in (".log", ".out", ".err", ".json")]
        assert ray_logs and not [p for p in ray_logs if key.encode() in p.read_bytes()]  # nor in any of Ray's own logs
    finally:
        # Stop only this Ray: every process whose command line names its temp dir or ports.
        # Workers rename themselves (ray::IDLE), so take the descendants of the matches too.
        marks = (str(temp_dir), f"{gcs_port}")
        victims = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if any(m in cmd for m in marks) and p.pid != os.getpid():
                victims.add(p.pid)
                try:
                    victims |= {c.pid for c in p.children(recursive=True)}
                except psutil.NoSuchProcess:
                    pass
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)
