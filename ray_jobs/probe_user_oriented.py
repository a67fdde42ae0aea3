"""`ray job submit --working-dir . -- python ray_jobs/probe_user_oriented.py --config configs/probe_user_oriented.yaml`

Thin entry point: parse, load the config, call lamini. Inside a Ray job RAY_ADDRESS is set,
so the stage attaches to the cluster instead of starting a local Ray.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lamini.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["probe", "user-oriented", *sys.argv[1:]]))
