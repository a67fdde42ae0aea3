"""Test environment: offline, caches inside the repo, one local Ray per session."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
SHARED_DATA = (ROOT.parent / "shared" / "data").resolve()

# Set before anything imports transformers / torch / ray, so they see it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", str(CACHE / "hf"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(CACHE / "torch_extensions"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Keep Ray Data's progress bars out of captured test output.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

RAY_TMP = Path(os.environ.get("LAMINI_TEST_RAY_TMP", "/tmp/lamini-ray-tests"))


def shared_data(name: str) -> Path:
    """Path to a file under ../shared/data, or skip the test with a clear reason."""
    p = SHARED_DATA / name
    if not p.exists():
        pytest.skip(f"real data {p} is absent (expected ../shared/data beside the repo)")
    return p


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session (ray.init costs 3-5 s), stopped at the end.

    Only this Ray is shut down: never `ray stop`, which would kill every Ray on the machine.
    """
    import ray

    RAY_TMP.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            _temp_dir=str(RAY_TMP),
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


class TinyLMs(NamedTuple):
    causal: Path  # decoder-only (Llama architecture), with a ChatML chat template
    seq2seq: Path  # T5-like encoder-decoder


@pytest.fixture(scope="session")
def tiny_lms(tmp_path_factory) -> TinyLMs:
    """The two tiny students every model test uses (2 layers, hidden 64, a BPE tokenizer trained
    on the seed tasks), built once per session. Tests only read them: runs write elsewhere."""
    from lamini.testing.tiny_models import build_tiny_causal_lm, build_tiny_seq2seq_lm

    d = tmp_path_factory.mktemp("tiny_lms")
    return TinyLMs(build_tiny_causal_lm(d / "causal"), build_tiny_seq2seq_lm(d / "seq2seq"))


@pytest.fixture
def fake_openai():
    """A real OpenAI-compatible HTTP server on 127.0.0.1 in its own process."""
    from lamini.testing.fake_openai import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


def descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
