"""What keeps an HTTP teacher within bounds beyond its retries: the fail-fast `Breaker`, the
provider's own x-ratelimit-* headers (`RateLimitHeaders`), extra headers whose values may be
secrets from the environment, and an upper bound on a request's prompt tokens (for budgets and
for pricing requests whose answer never came back).

All of it is per engine, that is per teacher actor, and costs a few attribute updates per request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections import Counter, deque
from typing import Any

from lamini.config import OpenAITeacherConfig
from lamini.engines.base import ChatResult

log = logging.getLogger(__name__)

_ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def header_env_names(headers: dict[str, str]) -> list[str]:
    """The environment variables that `${VAR}` header values name."""
    return [m.group(1) for v in headers.values() if (m := _ENV_REF.match(v))]


def resolve_headers(headers: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """extra_headers with each `${VAR}` value read from the environment -> (headers, the values
    read from the environment: secrets, scrubbed like the key). A variable that is unset is an error."""
    out, secrets = {}, []
    for k, v in headers.items():
        m = _ENV_REF.match(v)
        if m:
            value = os.environ.get(m.group(1))
            if not value:
                raise ValueError(f"header {k!r} reads environment variable {m.group(1)}, which is not set")
            out[k] = value
            secrets.append(value)
        else:
            out[k] = v
    return out, secrets


def parse_reset(value: str | None) -> float | None:
    """OpenAI's x-ratelimit-reset-* value ("12ms", "1s", "6m0s", "1h2m3.5s", or bare seconds) -> seconds."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    return sum(float(n) * _UNIT_S[u] for n, u in parts) if parts else None


class RateLimitHeaders:
    """Adapts to the server's own account of its limits (x-ratelimit-remaining-requests/-tokens,
    x-ratelimit-reset-requests/-tokens): when a remainder is used up, every request of this engine
    waits until the reset, instead of being sent to collect a 429. Configured limits can only
    guess the provider's counting; its headers are the truth, shared by all actors alike."""

    def __init__(self) -> None:
        self.pause_until = 0.0

    def observe(self, headers: Any, need_tokens: float) -> None:
        now = time.monotonic()
        for kind, need in (("requests", 1.0), ("tokens", need_tokens)):
            left = headers.get(f"x-ratelimit-remaining-{kind}")
            if left is None:
                continue
            try:
                short = float(left) < need
            except ValueError:
                continue
            reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
            if short and reset:
                self.pause_until = max(self.pause_until, now + reset)

    async def wait(self) -> None:
        delay = self.pause_until - time.monotonic()
        if delay > 0:
            log.debug("x-ratelimit headers: pausing %.3f s", delay)
            await asyncio.sleep(delay)


# 401/403: the key is wrong or lacks access; 404: the model (or the URL) does not exist. Every
# other request would get the same answer, unlike a 400 that one row's content can cause.
FATAL_STATUS = (401, 403, 404)

_HINTS = {
    "connection": "is the server up, and is base_url right?",
    "http_401": "the key in ${env} was rejected: is it set and valid for this endpoint?",
    "http_403": "the key in ${env} has no access to this model or endpoint",
    "http_404": "the server does not know model {model!r} (or base_url is wrong)",
}


def prompt_tokens_max(messages: list[dict[str, Any]]) -> int:
    """An upper bound on a chat request's prompt tokens: UTF-8 bytes of the contents (a token is
    at least one byte) plus 8 per message for the chat format's role and separator tokens."""
    return sum(len(str(m.get("content") or "").encode()) + 8 for m in messages)


class Breaker:
    """Decides when a run must stop rather than go on failing: one per engine (per actor).

    - `fail_fast_after` attempts in a row ended in a fatal failure (401/403/404, or a refused /
      unresolvable connection before any request succeeded: later, a refusal is more likely a
      restart that retries ride out) with no success in between;
    - more than `max_error_rate` of the last `error_rate_window` finished rows are errors.

    Once tripped, `reason` holds the one-line message and every request stops being sent.
    """

    def __init__(self, cfg: OpenAITeacherConfig) -> None:
        self.cfg = cfg
        self.in_a_row = 0
        self.ever_ok = False
        self.rows: deque[str | None] = deque(maxlen=cfg.error_rate_window)  # error_kind or None
        self.reason: str | None = None

    def attempt(self, failure: Any) -> None:
        """After each HTTP attempt: None for a success, else its failure (kind, message, fatal)."""
        if failure is None:
            self.ever_ok, self.in_a_row = True, 0
            return
        if not failure.fatal or (failure.kind == "connection" and self.ever_ok):
            return
        self.in_a_row += 1
        if self.in_a_row >= self.cfg.fail_fast_after and self.reason is None:
            c = self.cfg
            hint = _HINTS.get(failure.kind, "").format(env=c.api_key_env, model=c.model)
            self.reason = (f"{self.in_a_row} requests in a row to {c.base_url} failed with {failure.kind} "
                           f"({failure.message})" + (f": {hint}" if hint else ""))

    def row(self, result: ChatResult) -> None:
        """After each finished row (retries done)."""
        rows = self.rows
        rows.append(result.error_kind if result.error is not None else None)
        limit = self.cfg.max_error_rate
        if limit is None or len(rows) < rows.maxlen or self.reason is not None:
            return
        kinds = Counter(k for k in rows if k is not None)
        n = sum(kinds.values())
        if n > limit * len(rows):
            top = ", ".join(f"{k}: {v}" for k, v in kinds.most_common(3))
            self.reason = (f"{n} of the last {len(rows)} rows ended as errors ({top}), more than max_error_rate="
                           f"{limit}: stopping instead of spending requests on an endpoint that is failing")
