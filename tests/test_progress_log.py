"""Ray Data's progress on a non-interactive stdout is one compact line per interval."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

from conftest import RAY_TMP, ROOT

# A driver whose stdout is a pipe (as under `ray job submit` or in CI): Ray Data then logs its
# progress every RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL seconds instead of drawing bars.
DRIVER = textwrap.dedent("""
    import time, ray
    from lamini.config import RayInitConfig
    from lamini.runs.ray_env import init_ray

    init_ray(RayInitConfig(num_cpus=2, temp_dir=%r))
    def slow(batch):
        time.sleep(0.5)
        return batch
    n = ray.data.range(40, override_num_blocks=8).map_batches(slow, batch_size=5).count()
    print("COUNT", n, flush=True)
""")


def test_progress_blocks_become_one_line_each(tmp_path):
    env = dict(os.environ, RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL="1", PYTHONPATH=str(ROOT))
    env.pop("RAY_DATA_DISABLE_PROGRESS_BARS", None)  # the test session turns them off; this driver wants them
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", DRIVER % str(RAY_TMP / "progress")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "COUNT 40" in text, text[-3000:]
    lines = [line for line in text.splitlines() if "logging_progress" in line]
    compact = [line for line in lines if "] " in line and " rows" in line]
    assert len(compact) >= 2, text[-3000:]  # several intervals were logged, each as one line
    assert not [line for line in lines if "=====" in line or "Tasks:" in line], lines  # no multi-line blocks
    assert any("MapBatches(slow)" in line and "/40" in line for line in compact), compact


def test_filter_folds_a_block_and_keeps_other_messages():
    from lamini.runs.progress_log import CompactProgress

    f = CompactProgress()

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("x", logging.INFO, __file__, 1, msg, None, None)

    block = ["======= Running Dataset: ds_7 =======", "Total Progress: 120/400", "Active resources: 2/2 CPU", "",
             "MapBatches(EngineUDF): 100/400",
             "  Tasks: 0; Actors: 2 (running=2, restarting=0, pending=0, active=2, idle=0, util=1.0, tasks_in_flight=4); Queued",
             "Write: 80/400", "  Tasks: 3; Actors: 0; Queued blocks: 0 (0.0B)", "======================================="]  # fmt: skip
    kept = [r for r in map(rec, block) if f.filter(r)]
    assert [r.getMessage() for r in kept] == [
        "[ds_7] 120/400 rows | MapBatches(EngineUDF) 100/400 (actors 2, in flight 4) | Write 80/400 (tasks 3)"]
    other = rec("Progress will be logged because stdout is a non-interactive terminal.")
    assert f.filter(other) and other.getMessage().startswith("Progress will be logged")
