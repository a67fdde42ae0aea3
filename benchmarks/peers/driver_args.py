"""What every peer driver reads from its command line (the drivers run in the peers' own
virtualenvs, so they share this file by sitting beside it, not through lamini)."""

import argparse
import json


def parse(extra=()):
    """-> (args, rows): --url (normalised to end in /v1), --prompts (JSONL of {"id", "prompt"},
    read), --system, --in-flight, --max-tokens, --temperature, and the (flag, kwargs) in extra."""
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--prompts", required=True)
    p.add_argument("--system", required=True)
    p.add_argument("--in-flight", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.7)
    for flag, kw in extra:
        p.add_argument(flag, **kw)
    a = p.parse_args()
    if not a.url.endswith("/v1"):
        a.url += "/v1"
    with open(a.prompts, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return a, rows
