"""`ray job submit --working-dir . -- python ray_jobs/bench_students.py --config configs/bench_students.yaml`

Thin entry point: parse, load the config, call lamini. Inside a Ray job RAY_ADDRESS is set, so
the stage attaches to the cluster and runs one actor per (student, engine) on its GPUs (or CPUs).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lamini.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "students", *sys.argv[1:]]))
