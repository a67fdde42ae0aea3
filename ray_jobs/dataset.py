"""`ray job submit --working-dir . -- python ray_jobs/dataset.py --config configs/dataset.yaml`

Thin entry point for `lamini dataset`: parse, load the config, call lamini (which attaches to
the cluster through RAY_ADDRESS inside a job).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lamini.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["dataset", *sys.argv[1:]]))
