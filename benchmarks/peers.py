"""The tools users pick instead of lamini for the responses step, run on the same fake server:
(d) distilabel (LoadDataFromDicts >> TextGeneration with OpenAILLM) and (e) bespokelabs-curator
(a curator.LLM on its online OpenAI backend).

Each lives in its own virtualenv, made here on first use: their dependency pins (datasets,
litellm, their own openai) must not touch lamini's environment. Each runs as a subprocess with a
driver script (benchmarks/peers/*_driver.py) that times its own run from building the pipeline to
the last response, without interpreter start-up and imports, as (a) is timed without ray.init.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENVS = Path(os.environ.get("LAMINI_BENCH_ENVS", ROOT / ".cache" / "bench_envs"))

PEERS: dict[str, dict[str, Any]] = {
    # distilabel's OpenAI image-generation module imports `requests` at import time without
    # declaring it in the [openai] extra.
    "distilabel": {"requirements": ["distilabel[openai]==1.5.3", "requests"], "label": "(d) distilabel"},
    "curator": {"requirements": ["bespokelabs-curator==0.1.31"], "label": "(e) curator"},
}


def ensure_env(name: str) -> Path:
    """The peer's virtualenv's python, made and installed on first use (a marker records the
    requirements it was installed with, so a changed pin reinstalls)."""
    env = ENVS / name
    python = env / "bin" / "python"
    reqs = PEERS[name]["requirements"]
    marker = env / ".lamini-requirements.json"
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == reqs:
        return python
    print(f"    installing {name} into {env} ({' '.join(reqs)}) ...", flush=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *reqs], check=True)
    marker.write_text(json.dumps(reqs))
    return python


def run_peer(name: str, url: str, prompts_jsonl: Path, system: str, in_flight: int, max_tokens: int,
             temperature: float, timeout_s: float = 3600) -> dict[str, Any]:  # fmt: skip
    """Run one peer over prompts_jsonl ({"id", "prompt"} per line) -> its driver's JSON line
    (rows, written, ok, run_s, in_flight) plus the subprocess's wall time."""
    import time

    python = ensure_env(name)
    driver = ROOT / "benchmarks" / "peers" / f"{name}_driver.py"
    cmd = [str(python), str(driver), "--url", url, "--prompts", str(prompts_jsonl), "--system", system,
           "--in-flight", str(in_flight), "--max-tokens", str(max_tokens), "--temperature", str(temperature)]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHONPATH"))}
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {**result, "process_wall_s": round(wall, 3)}
