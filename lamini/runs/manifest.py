"""The run manifest: what ran, with what, and what came out. Secrets never enter it."""

from __future__ import annotations

import json
import os
import platform
import re
from typing import Any

import lamini
from lamini.config import StrictModel, TeacherConfig
from lamini.runs.rundir import RunDir

# Keys whose values are dropped wherever they appear in a config dump.
_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)$", re.I)


def redact(obj: Any) -> Any:
    """Copy of a JSON-like object with secret-looking keys' values replaced.

    `api_key_env` (the *name* of the variable) is kept: it is not a secret.
    """
    if isinstance(obj, dict):
        return {
            k: ("<redacted>" if _SECRET_KEY.search(str(k)) and not str(k).endswith("_env") else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def scrub(text: str, secret_env_names: list[str]) -> str:
    """Remove the values of the named environment variables from `text` (belt and braces)."""
    for name in secret_env_names:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            text = text.replace(value, "<redacted>")
    return text


# Config fields that *name* the environment variable holding a secret (`api_key_env`).
_SECRET_ENV_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)_env$", re.I)


def secret_env_names(obj: Any) -> list[str]:
    """Names of the variables whose values are secrets: every `*api_key_env` field in a config dump."""
    if isinstance(obj, dict):
        own = [v for k, v in obj.items() if _SECRET_ENV_KEY.search(str(k)) and isinstance(v, str) and v]
        return own + [n for v in obj.values() for n in secret_env_names(v)]
    if isinstance(obj, list):
        return [n for v in obj for n in secret_env_names(v)]
    return []


def estimate_cost(teacher_cfg: TeacherConfig, prompt_tokens: int, completion_tokens: int) -> float | None:
    """USD for the tokens at the teacher's prices (HTTP teachers only); None when it has none."""
    p_in = getattr(teacher_cfg, "price_per_1m_prompt_tokens", None)
    p_out = getattr(teacher_cfg, "price_per_1m_completion_tokens", None)
    if p_in is None and p_out is None:
        return None
    return round(((p_in or 0.0) * prompt_tokens + (p_out or 0.0) * completion_tokens) / 1e6, 6)


def environment() -> dict[str, Any]:
    import ray

    return {
        "lamini": lamini.__version__,
        "ray": ray.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def dumps(manifest: dict[str, Any]) -> str:
    """The manifest as JSON: secret-looking keys redacted, and the value of every variable an
    `*api_key_env` field anywhere in it names (every teacher and judge) scrubbed from the text."""
    return scrub(json.dumps(redact(manifest), indent=2, sort_keys=False, default=str), secret_env_names(manifest))


def write(run: RunDir, stage: str, cfg: StrictModel, **fields: Any) -> None:
    """Write `manifest.json` of a stage's run folder: {stage, config, **fields, environment}.

    Every stage writes through here, so none can forget the redaction or the environment.
    """
    manifest = {"stage": stage, "config": cfg.model_dump(mode="json"), **fields, "environment": environment()}
    run.write_text("manifest.json", dumps(manifest))
