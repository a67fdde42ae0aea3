"""The `openai` engine: any OpenAI-compatible chat-completions endpoint over HTTP.

In: a list of ChatRequest; out: one ChatResult per request, same order. A request that
still fails after retries comes back with `error` / `error_kind` set; nothing raises.

Fail fast: a `Breaker` (lamini.engines.http_guards) watches every attempt and every finished
row; when the endpoint is unreachable, the key is rejected or the model unknown
(cfg.fail_fast_after requests in a row), or too many rows end as errors (cfg.max_error_rate),
the engine stops sending and raises lamini.engines.abort.RunAborted, which stops the run
(exit 3). Also there: the x-ratelimit-* pause, extra headers, the prompt-token bound. Hooks
for the run layer: `agenerate_each` (per-request callbacks, for the journal) and `budget`.

`agenerate` is what a Ray Data async actor awaits, many calls at once on one event loop:
they share one in-flight semaphore (cfg.max_in_flight), one connection pool and the rate
limiters. `generate` is the sync wrapper for use outside Ray (a private event loop).

Two HTTP paths with the same retry loop, picked by cfg.http_client: "aiohttp" (lean, the
default) and "openai" (the official SDK with its own retries off). The API key is read
from os.environ[cfg.api_key_env] once, and never appears in repr(), describe(), results,
exceptions or logs.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import ipaddress
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from lamini.config import OpenAITeacherConfig
from lamini.engines.abort import RunAborted
from lamini.engines.base import ChatRequest, ChatResult
from lamini.engines.http_guards import (
    FATAL_STATUS,
    Breaker,
    RateLimitHeaders,
    prompt_tokens_max,
    resolve_headers,
)
from lamini.engines.structured import openai_response_format

log = logging.getLogger(__name__)

_REDACTED = "<redacted>"


@dataclass(slots=True)
class _Failure:
    """One failed attempt: kind (error_kind), readable message, and whether to try again."""

    kind: str
    message: str
    retryable: bool
    retry_after: float | None = None
    fatal: bool = False  # says the endpoint, key or model is wrong, not this request (see Breaker)


class TokenBucket:
    """Async token bucket: `rate` tokens/s, holding at most `burst` tokens.

    Reservation style: a caller takes its tokens at once (the level may go negative) and
    sleeps off the debt, so concurrent callers on one loop are spaced in arrival order
    with no lock and no polling. A request bigger than `burst` still passes, after a wait.
    """

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.level = self.burst
        self.t = time.monotonic()

    async def acquire(self, n: float = 1.0) -> None:
        now = time.monotonic()
        level = min(self.burst, self.level + (now - self.t) * self.rate) - n
        self.level, self.t = level, now
        if level < 0:
            await asyncio.sleep(-level / self.rate)

    def refund(self, n: float) -> None:
        """Give back tokens taken but not used (a reservation larger than the use)."""
        self.level = min(self.burst, self.level + n)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` as seconds or an HTTP-date; None if absent/bad."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


# Statuses with which endpoints refuse a request field they do not support.
_FORMAT_REFUSALS = ("http_400", "http_422")


def _mentions_format(message: str) -> bool:
    low = message.lower()
    return any(w in low for w in ("response_format", "json_schema", "structured output", "response format"))


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _status_failure(status: int, headers: Any, body: bytes | str) -> _Failure:
    """An HTTP error status -> a _Failure. 408, 409, 429 and 5xx are retried; other 4xx are final."""
    retryable = status in (408, 409, 429) or status >= 500
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    detail = body[:300]
    try:
        detail = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        pass
    retry_after = parse_retry_after(headers) if retryable else None
    return _Failure(f"http_{status}", f"HTTP {status}: {detail}", retryable, retry_after, fatal=status in FATAL_STATUS)


def _parse_completion(data: Any) -> ChatResult | _Failure:
    """A decoded chat.completion JSON -> ChatResult; only choices[0] content/finish_reason and usage are read."""
    try:
        choices = data["choices"]
        if not choices:
            return _Failure("empty_choices", "response has no choices", True)
        c0 = choices[0]
        text = c0["message"]["content"]
        finish = c0.get("finish_reason")
        usage = data.get("usage") or {}
        pt, ct = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        return _Failure("malformed_response", f"unexpected response shape ({type(e).__name__}: {e})", True)
    if text is None:  # e.g. a content filter: asking again gives the same answer
        return _Failure("no_content", f"choice has no text content (finish_reason={finish})", False)
    return ChatResult(text=text, finish_reason=finish, prompt_tokens=pt, completion_tokens=ct)


parse_completion = _parse_completion  # public name: the Batch API backend reads the same bodies


class _LoopState:
    """What must belong to one event loop: the semaphore and the HTTP client (with its pool)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_in_flight: int, client: Any) -> None:
        self.loop = loop
        self.sem = asyncio.Semaphore(max_in_flight)
        self.client = client  # aiohttp.ClientSession or openai.AsyncOpenAI
        self.stop = asyncio.Event()  # set when the Breaker trips: backoff sleeps end at once


class OpenAIEngine:
    """Engine for an OpenAI-compatible endpoint.

    cfg: the OpenAITeacherConfig. share: this instance's fraction of the run-wide rate
    limits (the pipeline passes 1/max_actors). Raises ValueError at construction if the key
    variable is unset and base_url is not a loopback address.
    """

    def __init__(self, cfg: OpenAITeacherConfig, share: float = 1.0) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.cfg = cfg
        self.share = share
        key = os.environ.get(cfg.api_key_env) or None
        if key is None and not _is_loopback(cfg.base_url):
            raise ValueError(
                f"environment variable {cfg.api_key_env} is not set: it must hold the API key for {cfg.base_url} "
                "(a key is optional only for a loopback base_url)"
            )
        # A closure, not a plain attribute, so vars(teacher) and anything printing it never show the key.
        self._key = lambda: key
        headers, header_secrets = resolve_headers(cfg.extra_headers)
        self._headers = lambda: headers  # a closure too: ${VAR} values may be secrets
        self._secrets = lambda: [x for x in (key, *header_secrets) if x]
        base = cfg.base_url.rstrip("/")
        if cfg.api_type == "azure":
            self._url = (f"{base}/openai/deployments/{quote(cfg.model, safe='')}/chat/completions"
                         f"?api-version={quote(cfg.api_version or '', safe='')}")
        else:
            self._url = f"{base}/chat/completions"
        # Rate limits are for the whole run; each actor enforces its own share locally. A
        # shared limiter (one Ray actor all teachers ask) would cost a round trip per request
        # and be a bottleneck and a single point of failure. A static split never exceeds the
        # run's limit; it under-uses it only while fewer than max_actors are up, and the
        # server's 429 + Retry-After covers any mismatch with the provider's own counting.
        burst = cfg.rate_limit_burst_s
        self._rpm = TokenBucket(cfg.requests_per_minute * share / 60, cfg.requests_per_minute * share / 60 * burst) \
            if cfg.requests_per_minute else None
        self._tpm = TokenBucket(cfg.tokens_per_minute * share / 60, cfg.tokens_per_minute * share / 60 * burst) \
            if cfg.tokens_per_minute else None
        # Providers that count prompt and completion tokens apart (input / output tokens per minute).
        self._itpm = TokenBucket(cfg.input_tokens_per_minute * share / 60,
                                 cfg.input_tokens_per_minute * share / 60 * burst) if cfg.input_tokens_per_minute else None
        self._otpm = TokenBucket(cfg.output_tokens_per_minute * share / 60,
                                 cfg.output_tokens_per_minute * share / 60 * burst) if cfg.output_tokens_per_minute else None
        self._rl = RateLimitHeaders() if cfg.adapt_to_rate_limit_headers else None
        self._rng = random.Random()
        self.breaker = Breaker(cfg)
        # Set by the run layer (lamini.runs.budget.BudgetClient) when the run has budget caps:
        # every attempt first reserves its largest possible cost, and is not sent if it cannot.
        self.budget: Any = None
        self._state: _LoopState | None = None
        self._private_loop: asyncio.AbstractEventLoop | None = None
        self._send_http = self._send_aiohttp if cfg.http_client == "aiohttp" else self._send_openai
        self._send = self._send_with_format_fallback
        # Whether the endpoint takes response_format: None until its first answer to one, then
        # True, or False once it refused (see _send_with_format_fallback).
        self._response_format_ok: bool | None = None
        self._format_probe: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # ------------------------------------------------------------------ public API

    def __repr__(self) -> str:
        c = self.cfg
        return (f"OpenAIEngine(model={c.model!r}, base_url={c.base_url!r}, api_type={c.api_type!r}, "
                f"http_client={c.http_client!r}, api_key_env={c.api_key_env!r}, share={self.share})")

    def __reduce__(self) -> tuple:
        # Pickling (Ray ships objects with cloudpickle) carries the config, never the key: the
        # copy reads the key from its own process's environment, like the original did.
        return (type(self), (self.cfg, self.share))

    def describe(self) -> dict[str, Any]:
        """Manifest-safe description: engine, endpoint, limits. Never the key, only whether one is set."""
        c = self.cfg
        return {
            "engine": "openai", "model": c.model, "base_url": c.base_url, "api_type": c.api_type,
            "api_version": c.api_version, "api_key_env": c.api_key_env, "api_key_set": self._key() is not None,
            "http_client": c.http_client, "max_in_flight": c.max_in_flight, "share": self.share,
            "requests_per_minute": c.requests_per_minute, "tokens_per_minute": c.tokens_per_minute,
            "rate_limit_burst_s": c.rate_limit_burst_s,
            "max_retries": c.max_retries, "timeout_s": c.timeout_s,
        }

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Send every request (bounded by the shared semaphore and rate limits); results in order.

        Raises RunAborted once the Breaker has tripped (see the module docstring)."""
        self._check_breaker()
        state = self._ensure_state()
        if len(requests) == 1:
            results = [await self._one(state, requests[0])]
        else:
            results = list(await asyncio.gather(*(self._one(state, r) for r in requests)))
        self._check_breaker()
        return results

    async def agenerate_each(
        self,
        requests: list[ChatRequest],
        on_result: Callable[[int, ChatResult], None],
        on_attempt: Callable[[int], None] | None = None,
    ) -> list[ChatResult]:
        """agenerate, telling the caller about each request as it happens (lamini.runs.journal):
        `on_attempt(i)` right before each attempt of request i is sent, `on_result(i, result)` as
        soon as request i is finished (not for requests a stopping run never sent)."""
        self._check_breaker()
        state = self._ensure_state()

        async def one(i: int, req: ChatRequest) -> ChatResult:
            res = await self._one(state, req, None if on_attempt is None else partial(on_attempt, i))
            if res.error_kind not in ("aborted", "unsent"):
                on_result(i, res)
            return res

        results = list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
        self._check_breaker()
        return results

    def _check_breaker(self) -> None:
        if self.breaker.reason is not None:
            raise RunAborted(self._scrub(self.breaker.reason))

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """Sync wrapper on a private event loop; not for use inside a running loop (await agenerate)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("OpenAIEngine.generate() called inside a running event loop: await agenerate()")
        if self._private_loop is None or self._private_loop.is_closed():
            self._private_loop = asyncio.new_event_loop()
        return self._private_loop.run_until_complete(self.agenerate(requests))

    async def aclose(self) -> None:
        """Close the HTTP client of the current loop's state."""
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await _close_client(state.client)

    def close(self) -> None:
        """Close the HTTP client and the private loop (if generate() made one)."""
        state, self._state = self._state, None
        loop, self._private_loop = self._private_loop, None
        if state is not None and not state.loop.is_closed():
            if state.loop is loop:
                loop.run_until_complete(_close_client(state.client))
            elif state.loop.is_running():  # an async actor's loop: close there, don't block it
                asyncio.run_coroutine_threadsafe(_close_client(state.client), state.loop)
        if loop is not None:
            loop.close()

    # ------------------------------------------------------------------ one request

    def _payload(self, req: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.cfg.model, "messages": req.messages, "max_tokens": req.max_tokens,
                                "temperature": req.temperature, "top_p": req.top_p}
        if req.seed is not None:
            body["seed"] = req.seed
        if req.response_schema is not None and self._response_format_ok is not False:
            body["response_format"] = openai_response_format(req.response_schema)
        if self.cfg.extra_body:
            body.update(self.cfg.extra_body)
        return body

    async def _one(self, state: _LoopState, req: ChatRequest, on_attempt: Callable[[], None] | None = None) -> ChatResult:
        """Attempts until success, a final error or cfg.max_retries retries; never raises (except cancellation).
        `on_attempt()` is called right before each attempt is sent."""
        cfg = self.cfg
        t0 = time.monotonic()
        attempts = 0
        try:
            payload = self._payload(req)
            est_tokens = sum(len(m.get("content") or "") for m in req.messages) / 4 + req.max_tokens
            while True:
                async with state.sem:  # not held while backing off, so others use the slot
                    if self.breaker.reason is not None:  # the run is stopping: send nothing more
                        return ChatResult(error="not sent: the run was stopped", error_kind="aborted",
                                          attempts=attempts, latency_s=time.monotonic() - t0)
                    ticket = None
                    if self.budget is not None:
                        ticket = await self.budget.reserve(prompt_tokens_max(req.messages), req.max_tokens)
                        if ticket is None:
                            return ChatResult(error="not sent: the run's budget is spent", error_kind="unsent",
                                              attempts=attempts, latency_s=time.monotonic() - t0)
                    attempts += 1
                    # Rate tokens are taken inside the slot, right before sending, so sends stay
                    # spaced even when slots free up in bunches. Retries pay too: providers count them.
                    if self._rpm is not None:
                        await self._rpm.acquire(1.0)
                    if self._tpm is not None:
                        await self._tpm.acquire(est_tokens)
                    await self._provider_limits(req)
                    if on_attempt is not None:
                        on_attempt()
                    out = await self._send(state.client, payload)
                    if self._otpm is not None:  # the reservation was max_tokens; keep only what was written
                        self._otpm.refund(req.max_tokens - (out.completion_tokens if isinstance(out, ChatResult) else 0))
                    if ticket is not None:
                        ok = isinstance(out, ChatResult)
                        self.budget.settle(ticket, out.prompt_tokens if ok else 0, out.completion_tokens if ok else 0)
                self._after_attempt(state, out)
                if isinstance(out, ChatResult):
                    out.attempts, out.latency_s = attempts, time.monotonic() - t0
                    self.breaker.row(out)
                    self._stop_if_tripped(state)
                    return out
                if not out.retryable or attempts > cfg.max_retries:
                    message = self._scrub(out.message)
                    log.debug("request failed for good after %d attempt(s): %s", attempts, message)
                    res = ChatResult(error=message, error_kind=out.kind, attempts=attempts,
                                     latency_s=time.monotonic() - t0)
                    self.breaker.row(res)
                    self._stop_if_tripped(state)
                    return res
                if out.retry_after is not None:
                    delay = min(out.retry_after, cfg.backoff_max_s)
                else:  # exponential backoff with full jitter
                    delay = self._rng.uniform(0, min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** (attempts - 1)))
                log.debug("attempt %d failed (%s), retrying in %.3f s", attempts, out.kind, delay)
                try:  # a backoff ends early when the Breaker trips
                    await asyncio.wait_for(state.stop.wait(), delay)
                except asyncio.TimeoutError:
                    pass
        except Exception as e:  # a bug here must not stop the batch: record it on the row
            log.exception("unexpected error in the openai teacher")
            return ChatResult(error=self._scrub(f"internal error: {type(e).__name__}: {e}"), error_kind="internal",
                              attempts=max(attempts, 1), latency_s=time.monotonic() - t0)

    def _after_attempt(self, state: _LoopState, out: ChatResult | _Failure) -> None:
        self.breaker.attempt(None if isinstance(out, ChatResult) else out)
        self._stop_if_tripped(state)

    def _stop_if_tripped(self, state: _LoopState) -> None:
        if self.breaker.reason is not None and not state.stop.is_set():
            log.error("stopping the run: %s", self._scrub(self.breaker.reason))
            state.stop.set()

    async def _provider_limits(self, req: ChatRequest) -> None:
        """Input/output token buckets and the x-ratelimit-* pause, right before a send."""
        if self._itpm is not None:
            await self._itpm.acquire(sum(len(m.get("content") or "") for m in req.messages) / 4)
        if self._otpm is not None:
            await self._otpm.acquire(req.max_tokens)
        if self._rl is not None:
            await self._rl.wait()

    def _observe(self, headers: Any, payload: dict[str, Any]) -> None:
        if self._rl is not None:
            self._rl.observe(headers, float(payload.get("max_tokens") or 0))

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    # ------------------------------------------------------------------ HTTP paths

    async def _send_with_format_fallback(self, client: Any, payload: dict[str, Any]) -> ChatResult | _Failure:
        """Send; when the endpoint answers 400 to a `response_format` (an older model, a server
        without structured outputs), send again without it and leave it off for this engine from
        then on. The prompt then stands alone: the paper's prompts ask for `<example>` tags, which
        the instruction parser reads as before.

        Until the endpoint has answered one request with a response_format, the others that carry
        one wait for that answer (a per-loop lock), so a refusing endpoint costs one extra request,
        not one per request already in flight."""
        if "response_format" not in payload:
            return await self._send_http(client, payload)
        if self._response_format_ok is None:
            loop = asyncio.get_running_loop()
            if self._format_probe is None or self._format_probe[0] is not loop:
                self._format_probe = (loop, asyncio.Lock())
            async with self._format_probe[1]:
                if self._response_format_ok is None:  # this request is the probe
                    return await self._send_probing(client, payload)
        if self._response_format_ok is False:  # refused while this request waited
            payload = {k: v for k, v in payload.items() if k != "response_format"}
        return await self._send_http(client, payload)

    async def _send_probing(self, client: Any, payload: dict[str, Any]) -> ChatResult | _Failure:
        out = await self._send_http(client, payload)
        if isinstance(out, _Failure) and out.kind in _FORMAT_REFUSALS and _mentions_format(out.message):
            log.warning("endpoint refused response_format (%s): sending without it from now on", out.message[:200])
            self._response_format_ok = False
            return await self._send_http(client, {k: v for k, v in payload.items() if k != "response_format"})
        if isinstance(out, ChatResult):
            self._response_format_ok = True
        return out  # any other failure says nothing about the format: the next request probes again

    def _ensure_state(self) -> _LoopState:
        """The state for the running loop, made lazily (a session must be made inside its loop)."""
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            if state is not None:
                log.debug("event loop changed: opening a new HTTP client (the old one stays with its loop)")
            client = self._make_aiohttp() if self.cfg.http_client == "aiohttp" else self._make_openai()
            state = self._state = _LoopState(loop, self.cfg.max_in_flight, client)
        return state

    def _make_aiohttp(self) -> Any:
        import aiohttp

        key = self._key()
        headers = {"Content-Type": "application/json", **self._headers()}
        if key is not None:
            headers.update({"api-key": key} if self.cfg.api_type == "azure" else {"Authorization": f"Bearer {key}"})
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.cfg.max_in_flight, keepalive_timeout=60),
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            headers=headers,
            skip_auto_headers=("Accept-Encoding",),  # small JSON bodies: compression costs more CPU than it saves
        )

    # The SDK's per-request machinery (pydantic options and response models, httpx) costs an
    # order of magnitude more client CPU than this path (benchmarks/README.md): at a thousand
    # requests/s it alone would need more than two cores per actor. Hence this lean path: one
    # pooled session, headers set once, bytes from json.dumps, and only choices[0] and usage
    # read from the answer.
    async def _send_aiohttp(self, session: Any, payload: dict[str, Any]) -> ChatResult | _Failure:
        import aiohttp

        try:
            async with session.post(self._url, data=json.dumps(payload).encode()) as resp:
                raw = await resp.read()
                status = resp.status
                self._observe(resp.headers, payload)
                if status >= 300:
                    return _status_failure(status, resp.headers, raw)
        except asyncio.TimeoutError:  # aiohttp's timeouts subclass it
            return _Failure("timeout", f"no complete response within {self.cfg.timeout_s} s", True)
        except aiohttp.ClientConnectorError as e:  # refused, unresolvable, unreachable: no request was made
            return _Failure("connection", f"{type(e).__name__}: {e}", True, fatal=True)
        except aiohttp.ClientError as e:
            return _Failure("connection", f"{type(e).__name__}: {e}", True)
        try:
            data = json.loads(raw)
        except ValueError:
            return _Failure("malformed_response", f"response is not JSON: {raw[:80]!r}", True)
        return _parse_completion(data)

    def _make_openai(self) -> Any:
        import openai

        try:
            import httpx2 as httpx  # openai>=3
        except ImportError:
            import httpx
        n = self.cfg.max_in_flight
        http_client = openai.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=n, max_keepalive_connections=n), timeout=self.cfg.timeout_s
        )
        common: dict[str, Any] = dict(api_key=self._key() or "", max_retries=0, timeout=self.cfg.timeout_s,
                                      http_client=http_client, default_headers=self._headers() or None)
        cls = openai.AsyncAzureOpenAI if self.cfg.api_type == "azure" else openai.AsyncOpenAI
        # A keyless endpoint (a local vLLM/SGLang server) is legitimate: newer clients refuse an empty
        # key unless told not to enforce credentials; older ones (openai 1.x) have no such argument.
        if "_enforce_credentials" in inspect.signature(cls.__init__).parameters:
            common["_enforce_credentials"] = False
        if self.cfg.api_type == "azure":
            return cls(azure_endpoint=self.cfg.base_url.rstrip("/"), api_version=self.cfg.api_version, **common)
        return cls(base_url=self.cfg.base_url, **common)

    async def _send_openai(self, client: Any, payload: dict[str, Any]) -> ChatResult | _Failure:
        import openai

        payload = dict(payload)
        kwargs = {k: payload.pop(k) for k in ("model", "messages", "max_tokens", "temperature", "top_p", "seed")
                  if k in payload}
        if self._key() is None:  # a loopback server without a key: the SDK wants the header omitted explicitly
            kwargs["extra_headers"] = {"Authorization": openai.Omit()}
        try:
            # wait_for: a total deadline like aiohttp's (httpx's timeout is per read).
            completions = client.chat.completions
            if self._rl is None:
                resp = await asyncio.wait_for(completions.create(**kwargs, extra_body=payload or None), self.cfg.timeout_s)
            else:  # the raw response carries the x-ratelimit-* headers
                raw = await asyncio.wait_for(completions.with_raw_response.create(**kwargs, extra_body=payload or None),
                                             self.cfg.timeout_s)
                self._observe(raw.headers, kwargs)
                resp = raw.parse()
        except (asyncio.TimeoutError, openai.APITimeoutError):
            return _Failure("timeout", f"no complete response within {self.cfg.timeout_s} s", True)
        except openai.APIStatusError as e:
            self._observe(e.response.headers, kwargs)
            return _status_failure(e.status_code, e.response.headers, e.response.content)
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            # httpx's ConnectError: refused or unresolvable, as aiohttp's ClientConnectorError.
            return _Failure("connection", f"{type(cause).__name__}: {cause}", True,
                            fatal=type(cause).__name__ == "ConnectError")
        except (openai.APIResponseValidationError, ValueError) as e:
            return _Failure("malformed_response", f"response could not be parsed ({type(e).__name__})", True)
        if isinstance(resp, (str, bytes)):  # the SDK hands back text it could not decode as JSON
            return _Failure("malformed_response", f"response is not JSON: {str(resp)[:80]!r}", True)
        try:
            data = {"choices": [c.model_dump() for c in resp.choices],
                    "usage": resp.usage.model_dump() if resp.usage else None}
        except AttributeError as e:
            return _Failure("malformed_response", f"unexpected response shape ({e})", True)
        return _parse_completion(data)


async def _close_client(client: Any) -> None:
    close = getattr(client, "close", None)
    if close is not None:
        await close()
