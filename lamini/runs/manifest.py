"""The run manifest: what ran, with what, and what came out. Secrets never enter it."""

from __future__ import annotations

import json
import os
import platform
import re
from typing import Any

import lamini

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


def secret_env_names(teacher_cfg: Any) -> list[str]:
    name = getattr(teacher_cfg, "api_key_env", None)
    return [name] if name else []


def estimate_cost(teacher_cfg: Any, prompt_tokens: int, completion_tokens: int) -> float | None:
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


def dumps(manifest: dict[str, Any], *teacher_cfgs: Any) -> str:
    """The manifest as JSON, secrets redacted and the API keys of every teacher (or judge) scrubbed."""
    names = [n for cfg in teacher_cfgs for n in secret_env_names(cfg)]
    return scrub(json.dumps(redact(manifest), indent=2, sort_keys=False, default=str), names)
