"""`ray job submit --working-dir . -- python ray_jobs/herd.py --config configs/herd.yaml`

The whole herd on a cluster: dataset, students trained side by side as resources allow,
evaluations, one report. Thin entry point: parse, load the config, call lamini. Inside a Ray job
RAY_ADDRESS is set, so every stage attaches to the cluster instead of starting a local Ray.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lamini.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["herd", *sys.argv[1:]]))
