"""A real OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

`FakeOpenAIServer` runs the server in its own process (so its CPU does not compete with
the client's event loop) and talks to it over a small admin API:

    with FakeOpenAIServer(latency_s=0.05, fault_rate=0.1) as srv:
        srv.url              # "http://127.0.0.1:PORT/v1", for OpenAITeacherConfig.base_url
        srv.configure(latency_s=0.0, retry_after_s=0.3)
        srv.stats()          # total_requests, faults, by_prompt, max_concurrent, auth_headers_seen, cpu_s ...
        srv.reset_stats()

Routes: POST /v1/chat/completions and the Azure form
POST /openai/deployments/{name}/chat/completions?api-version=... answer
"echo: <last user message>", cut to max_tokens words (finish_reason "length"), with usage
counted as whitespace words. Three prompt kinds get teacher-like replies instead
(lamini.testing.fake_replies):
instruction-generation prompts (N <example> blocks), the hallucination judge's rubric
("VERDICT: ...\nREASON: ..." by `fake_judge_verdict`) and the user-oriented judge's rubric
("GRADE: A-D\nREASON: ..." by `fake_grade`). A generation request with a `response_format`
json_schema gets the same instructions as that JSON (`structured_reply`), or a 400 when the
setting structured_outputs is off; `free_text_rate` answers that share of unconstrained ones in
tagless prose. The Batch API (/v1/files, /v1/batches, with expiry and partial failure) is
lamini.testing.fake_batches. GET /admin/stats[?detail=1], POST /admin/config, POST /admin/reset,
GET /health.

Faults, by marker in the user message: "[fault:KIND]" fails every attempt of that prompt,
"[fault:KINDxN]" fails its first N attempts and then succeeds; or at random with
`fault_rate` over `fault_kinds` (seeded). KIND is one of FAULT_KINDS or any 3-digit HTTP
status (e.g. 400, 401). Deterministic markers win over random faults. With `known_models`
set, a request for any other model gets OpenAI's 404 "model does not exist" (fault
"unknown_model"); with `expected_api_key` set, any other key gets a 401. With
`ratelimit_requests` set, the server allows that many chat requests per `ratelimit_window_s`,
says so in OpenAI's x-ratelimit-limit/remaining/reset-requests headers, and answers the excess
with 429 (fault "ratelimit"). `record_headers` names request headers whose values stats() lists.

Why a raw asyncio.Protocol with a hand-written HTTP/1.1 parser (keep-alive, Content-Length
bodies) and no framework: the server shares the cores with the client it serves, so it must
cost far less per request than the client (its CPU per request is `cpu_s` in stats(); see
benchmarks/README.md), or a benchmark at thousands of requests/s would time the server.

Run by hand: python -m lamini.testing.fake_openai --port 8000 --latency-s 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from lamini.testing.fake_batches import BatchStore
from lamini.testing.fake_replies import canned_reply

FAULT_KINDS = ("429", "500", "503", "hang", "malformed", "empty_choices", "disconnect")
# "hang" is left out of the random default: it costs the client a full timeout each time.
DEFAULT_RANDOM_FAULTS = ("429", "500", "503", "malformed", "empty_choices", "disconnect")

_MARKER = re.compile(r"\[fault:([a-z_0-9]+?)(?:x(\d+))?\]")
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 411: "Length Required",
            429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}
_READY = "FAKE_OPENAI_LISTENING"
_MAX_HEAD = 64 * 1024


class _Server:
    """Settings, statistics and the request handler, shared by all connections."""

    def __init__(self, latency_s: float, seed: int, fault_rate: float, fault_kinds: tuple[str, ...],
                 retry_after_s: float | None) -> None:
        self.settings: dict[str, Any] = {
            "latency_s": latency_s, "seed": seed, "fault_rate": fault_rate, "fault_kinds": list(fault_kinds),
            "retry_after_s": retry_after_s, "expected_api_key": None, "known_models": None,
            "ratelimit_requests": None, "ratelimit_window_s": 1.0, "record_headers": [], "batch_latency_s": 0.0,
            # structured outputs (see _structured): honour response_format, or refuse it with a 400
            "structured_outputs": True, "free_text_rate": 0.0,
        }
        self.rng = random.Random(seed)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.started = time.monotonic()
        self.conns: set[_Conn] = set()  # open connections, closed at shutdown
        self.batch_store = BatchStore(self._batch_answer, lambda: self.settings["batch_latency_s"])
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.ok = 0
        self.faults: dict[str, int] = {}
        self.by_prompt: dict[str, int] = {}
        self.outcomes: dict[str, list[str]] = {}
        self.times: dict[str, list[float]] = {}
        self.by_target: dict[str, int] = {}
        self.auth_seen = 0
        self.auth_schemes: dict[str, int] = {}
        self.auth_matched = 0
        self.auth_mismatched = 0
        self.max_concurrent = 0
        self.connections = 0
        self.in_flight = getattr(self, "in_flight", 0)  # requests still open survive a reset
        self.last_body: dict | None = None
        self.served = {"prompt_tokens": 0, "completion_tokens": 0}  # usage of every 200 answer sent
        self.window = (time.monotonic(), 0)  # ratelimit: window start, requests counted in it
        self.recorded: dict[str, list[str]] = {}

    def configure(self, changes: dict[str, Any]) -> dict[str, Any]:
        unknown = set(changes) - set(self.settings)
        if unknown:
            raise ValueError(f"unknown settings {sorted(unknown)}")
        for kind in changes.get("fault_kinds") or ():
            if kind not in FAULT_KINDS and not (len(kind) == 3 and kind.isdigit()):
                raise ValueError(f"unknown fault kind {kind!r}")
        self.settings.update(changes)
        if "seed" in changes:
            self.rng = random.Random(changes["seed"])
        return self.public_settings()

    def public_settings(self) -> dict[str, Any]:
        s = dict(self.settings)
        s["expected_api_key"] = s["expected_api_key"] is not None  # never echo a key back
        return s

    def stats(self, detail: bool) -> dict[str, Any]:
        out = {
            "total_requests": self.requests,  # chat requests received (admin calls not counted)
            "requests": self.requests,  # alias of total_requests (both spellings are in use)
            "ok": self.ok,
            "faults": dict(self.faults),  # kind -> requests answered with that fault
            "by_prompt": dict(self.by_prompt),  # last user message -> requests received
            "by_target": dict(self.by_target),  # path?query -> requests
            "auth_headers_seen": self.auth_seen,
            "auth_schemes": dict(self.auth_schemes),  # "bearer" / "api-key" -> requests
            "auth_matched": self.auth_matched,  # against expected_api_key, when one is set
            "auth_mismatched": self.auth_mismatched,
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,  # most chat requests open at once
            "connections": self.connections,  # opened, admin ones included
            "last_body": self.last_body,
            "usage_served": dict(self.served),  # prompt/completion tokens of the completions answered
            "recorded_headers": {k: sorted(set(v)) for k, v in self.recorded.items()},  # of record_headers
            "cpu_s": time.process_time(),  # server CPU: a benchmark divides its delta by the request delta
            "uptime_s": time.monotonic() - self.started,
            "settings": self.public_settings(),
        }
        if detail:
            out["outcomes_by_prompt"] = self.outcomes
            out["times_by_prompt"] = self.times  # time.monotonic() of each arrival, server clock
        return out

    # ---------------------------------------------------------------- request handling

    def handle(self, conn: "_Conn", method: str, target: str, headers: dict[str, str], body: bytes) -> None:
        path, _, query = target.partition("?")
        if path.startswith("/admin/") or path == "/health":
            return self._admin(conn, method, path, query, body)
        if path.startswith(("/v1/files", "/v1/batches")):  # the Batch API (lamini.testing.fake_batches)
            if self._auth_fault(headers):
                return conn.send(401, _error_body("Incorrect API key provided (fake)", "invalid_request_error"))
            routed = self.batch_store.route(method, path, headers, body)
            if routed is not None:
                return conn.send(*routed)
        if method != "POST" or not path.endswith("/chat/completions"):
            return conn.send(404, _error_body(f"no route {method} {path}", "not_found"))
        try:
            req = json.loads(body)
            messages = req["messages"]
            prompt = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
            if not isinstance(prompt, str):  # content parts: key the stats by their JSON
                prompt = json.dumps(prompt)
        except (ValueError, KeyError, TypeError, AttributeError):
            return conn.send(400, _error_body("body is not a chat-completions request", "invalid_request_error"))
        now = time.monotonic()
        self.requests += 1
        self.last_body = req
        self.by_target[target] = self.by_target.get(target, 0) + 1  # path?query, e.g. the Azure api-version
        n = self.by_prompt[prompt] = self.by_prompt.get(prompt, 0) + 1
        self.times.setdefault(prompt, []).append(now)
        self.in_flight += 1
        if self.in_flight > self.max_concurrent:
            self.max_concurrent = self.in_flight
        conn.pending = True

        for name in self.settings["record_headers"]:
            if name.lower() in headers:
                self.recorded.setdefault(name.lower(), []).append(headers[name.lower()])
        limit_headers, over = self._ratelimit(now)
        kind = (self._auth_fault(headers) or self._model_fault(req) or over or self._fault(prompt, n)
                or self._format_fault(req))
        self.outcomes.setdefault(prompt, []).append(kind or "ok")
        if kind:
            self.faults[kind] = self.faults.get(kind, 0) + 1
        else:
            self.ok += 1
        delay = self.settings["latency_s"]
        if delay > 0:
            # A timer, not a task per request: overlapping sleeps at almost no cost.
            self.loop.call_later(delay, self._answer, conn, kind, req, prompt, messages, limit_headers)
        else:
            self._answer(conn, kind, req, prompt, messages, limit_headers)

    def _auth_fault(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization")
        key = None
        if auth is not None:
            self.auth_seen += 1
            scheme, _, key = auth.partition(" ")
            scheme = scheme.lower()
            self.auth_schemes[scheme] = self.auth_schemes.get(scheme, 0) + 1
        elif "api-key" in headers:
            self.auth_seen += 1
            key = headers["api-key"]
            self.auth_schemes["api-key"] = self.auth_schemes.get("api-key", 0) + 1
        expected = self.settings["expected_api_key"]
        if expected is None:
            return None
        if key == expected:
            self.auth_matched += 1
            return None
        self.auth_mismatched += 1
        return "401"

    def _batch_answer(self, req: dict) -> tuple[Any, Any]:
        """One line of a batch, answered (and counted) as the chat route would: (status or "expire", body)."""
        messages = req.get("messages") or []
        prompt = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
        self.requests += 1
        n = self.by_prompt[prompt] = self.by_prompt.get(prompt, 0) + 1
        kind = self._model_fault(req) or self._fault(prompt, n)
        self.outcomes.setdefault(prompt, []).append(kind or "ok")
        if kind:
            self.faults[kind] = self.faults.get(kind, 0) + 1
        else:
            self.ok += 1
        if kind == "expire":
            return "expire", None
        if kind is None or kind == "empty_choices":
            return 200, json.loads(_completion(req, prompt, messages, empty=kind is not None, served=self.served))
        status = int(kind) if kind.isdigit() else 500
        return status, json.loads(_error_body(f"fake fault {kind}", "server_error" if status >= 500 else "invalid_request"))

    def _ratelimit(self, now: float) -> tuple[bytes, str | None]:
        """OpenAI-style request limit over fixed windows: (x-ratelimit-* headers, "ratelimit" when over)."""
        limit = self.settings["ratelimit_requests"]
        if limit is None:
            return b"", None
        width = self.settings["ratelimit_window_s"]
        start, used = self.window
        if now - start >= width:
            start, used = now, 0
        over = used >= limit
        used += 0 if over else 1
        self.window = (start, used)
        reset = max(0.0, start + width - now)
        headers = (b"x-ratelimit-limit-requests: %d\r\nx-ratelimit-remaining-requests: %d\r\n"
                   b"x-ratelimit-reset-requests: %dms\r\n" % (limit, limit - used, int(reset * 1000) + 1))
        return headers, "ratelimit" if over else None

    def _model_fault(self, req: dict) -> str | None:
        known = self.settings["known_models"]
        return "unknown_model" if known is not None and req.get("model") not in known else None

    def _fault(self, prompt: str, n: int) -> str | None:
        if "[fault:" in prompt:
            m = _MARKER.search(prompt)
            if m:
                if m.group(2) is None or n <= int(m.group(2)):
                    return m.group(1)
                return None
        rate, kinds = self.settings["fault_rate"], self.settings["fault_kinds"]
        if rate > 0 and kinds and self.rng.random() < rate:
            return self.rng.choice(kinds)
        return None

    def _format_fault(self, req: dict) -> str | None:
        """A server without structured outputs refuses a response_format, as older endpoints do."""
        if req.get("response_format") and not self.settings["structured_outputs"]:
            return "response_format"
        return None

    def _answer(self, conn: "_Conn", kind: str | None, req: dict, prompt: str, messages: list,
                limit_headers: bytes = b"") -> None:
        if conn.closed:  # the client gave up (timeout) while we slept; connection_lost counted it
            return
        if kind == "hang":
            return  # stays in flight until the client closes the connection
        self.in_flight -= 1
        conn.pending = False
        if kind is None or kind == "empty_choices":
            reply = _structured(req, prompt, self.settings["free_text_rate"])
            conn.send(200, _completion(req, prompt, messages, empty=kind is not None, served=self.served, reply=reply),
                      limit_headers)
        elif kind == "response_format":
            conn.send(400, _error_body("response_format of type json_schema is not supported by this model (fake)",
                                       "invalid_request_error"))  # fmt: skip
        elif kind == "malformed":
            conn.send(200, b"<html>upstream error: this is not JSON")
        elif kind == "disconnect":
            conn.transport.close()
        elif kind == "ratelimit":
            conn.send(429, _error_body("Rate limit reached for requests (fake)", "requests", "rate_limit_exceeded"),
                      limit_headers)
        elif kind == "unknown_model":  # OpenAI's wording and code for a model that does not exist
            msg = f"The model `{req.get('model')}` does not exist or you do not have access to it."
            conn.send(404, _error_body(msg, "invalid_request_error", "model_not_found"))
        elif kind == "429":
            ra = self.settings["retry_after_s"]
            extra = b"" if ra is None else b"Retry-After: %s\r\n" % repr(float(ra)).encode()
            conn.send(429, _error_body("Rate limit reached (fake)", "rate_limit_exceeded"), extra)
        elif kind.isdigit():
            kind_name = "server_error" if kind[0] == "5" else "invalid_request"
            conn.send(int(kind), _error_body(f"fake fault {kind}", kind_name))
        else:
            conn.send(500, _error_body(f"unknown fault kind {kind!r}", "server_error"))

    def _admin(self, conn: "_Conn", method: str, path: str, query: str, body: bytes) -> None:
        try:
            if path == "/health":
                return conn.send(200, b'{"ok": true}')
            if path == "/admin/stats":
                return conn.send(200, json.dumps(self.stats(detail="detail=1" in query)).encode())
            if path == "/admin/config" and method == "POST":
                return conn.send(200, json.dumps(self.configure(json.loads(body or b"{}"))).encode())
            if path == "/admin/reset" and method == "POST":
                self.reset()
                return conn.send(200, b'{"ok": true}')
        except (ValueError, TypeError) as e:
            return conn.send(400, _error_body(str(e), "invalid_request_error"))
        conn.send(404, _error_body(f"no route {method} {path}", "not_found"))


def _error_body(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()


def _structured(req: dict, prompt: str, free_text_rate: float) -> str | None:
    """The reply to an instruction-generation prompt, as structured outputs shape it: the JSON its
    response_format's schema asks for; without one, with probability free_text_rate (seeded per
    prompt), prose that ignores the prompt's tags, as a weak teacher writes. None: the canned reply."""
    from lamini.testing.fake_replies import free_text_reply, structured_reply

    fmt = req.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return structured_reply(prompt, (fmt.get("json_schema") or {}).get("schema"))
    if free_text_rate > 0 and canned_reply(prompt) is not None:
        import zlib

        if random.Random(zlib.crc32(prompt.encode()) ^ 0x5EED).random() < free_text_rate:
            return free_text_reply(prompt)
    return None


def _completion(req: dict, prompt: str, messages: list, empty: bool, served: dict[str, int] | None = None,
                reply: str | None = None) -> bytes:
    generated = reply if reply is not None else canned_reply(prompt)
    words = generated.split(" ") if generated is not None else ("echo: " + prompt).split()
    max_tokens = req.get("max_tokens") or req.get("max_completion_tokens") or len(words)
    finish = "stop"
    if len(words) > max_tokens:
        words, finish = words[:max_tokens], "length"
    prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
    completion_tokens = len(words)
    if served is not None:  # what a provider would bill, whether or not the client lived to read it
        served["prompt_tokens"] += prompt_tokens
        served["completion_tokens"] += completion_tokens
    message = {"role": "assistant", "content": " ".join(words)}
    choices = [] if empty else [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}]
    return json.dumps({
        "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
        "model": req.get("model", "fake"), "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }).encode()


class _Conn(asyncio.Protocol):
    """One keep-alive connection: parse requests one at a time, answer in order."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.buf = b""
        self.pending = False  # a request was read and is not answered yet
        self.closed = False
        self.parsing = False
        self.keep_alive = True
        self.head: tuple | None = None  # parsed request head waiting for its body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.connections += 1
        self.server.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.conns.discard(self)
        if self.pending:
            self.server.in_flight -= 1
            self.pending = False

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if not self.pending:
            self._parse()

    def _parse(self) -> None:
        if self.parsing:  # send() from inside handle(): the loop below picks up the next request
            return
        self.parsing = True
        try:
            while not self.pending and not self.closed and self.buf:
                buf = self.buf
                if self.head is None:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _MAX_HEAD:
                            self.transport.close()
                        return
                    lines = buf[:end].decode("latin-1").split("\r\n")
                    try:
                        method, target, _version = lines[0].split(" ", 2)
                    except ValueError:
                        self.transport.close()
                        return
                    headers = {}
                    for line in lines[1:]:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                    if "chunked" in headers.get("transfer-encoding", ""):
                        self.keep_alive = False  # no chunked bodies: every real client sends Content-Length
                        self.send(411, _error_body("send Content-Length", "invalid_request_error"))
                        return
                    # Kept until the body is complete: some clients (httpx) send head and body
                    # in separate packets, and parsing the head twice doubled our cost.
                    self.head = (method, target, headers, end + 4, end + 4 + int(headers.get("content-length") or 0))
                method, target, headers, start, total = self.head
                if len(buf) < total:
                    return
                self.head = None
                body = buf[start:total]
                self.buf = buf[total:]
                self.keep_alive = headers.get("connection", "").lower() != "close"
                self.server.handle(self, method, target, headers, body)
        finally:
            self.parsing = False

    def send(self, status: int, body: bytes, extra_headers: bytes = b"") -> None:
        if self.closed:
            return
        head = b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s%s\r\n" % (
            status, _REASONS.get(status, "Error").encode(), len(body), extra_headers,
            b"" if self.keep_alive else b"Connection: close\r\n",
        )
        self.transport.write(head + body)
        if not self.keep_alive:
            self.transport.close()
        elif self.buf and not self.pending:
            self._parse()


async def serve(host: str, port: int, server: _Server, ready=None, watch_stdin: bool = False) -> None:
    """Serve until cancelled, or (watch_stdin) until stdin closes: the parent stopped us or died."""
    loop = asyncio.get_running_loop()
    server.loop = loop
    srv = await loop.create_server(lambda: _Conn(server), host, port, backlog=1024, reuse_address=True)
    stop = loop.create_future()
    if ready is not None:
        ready(srv.sockets[0].getsockname()[1])
    if watch_stdin:
        fd = sys.stdin.fileno()

        def on_stdin() -> None:  # EOF on stdin = the parent stopped us or died: never outlive it
            if not os.read(fd, 4096):
                loop.remove_reader(fd)
                if not stop.done():
                    stop.set_result(None)

        loop.add_reader(fd, on_stdin)
    try:
        await stop
    finally:
        srv.close()
        for conn in list(server.conns):  # hung requests too: don't wait for their clients
            conn.transport.abort()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency-s", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(DEFAULT_RANDOM_FAULTS))
    p.add_argument("--retry-after-s", type=float, default=0.05, help="negative: send no Retry-After header")
    p.add_argument("--exit-on-stdin-eof", action="store_true", help="used by FakeOpenAIServer: exit with the parent")
    a = p.parse_args(argv)
    server = _Server(a.latency_s, a.seed, a.fault_rate, tuple(k for k in a.fault_kinds.split(",") if k),
                     None if a.retry_after_s < 0 else a.retry_after_s)

    def ready(port: int) -> None:
        print(f"{_READY} {port}", flush=True)

    try:
        asyncio.run(serve(a.host, a.port, server, ready, a.exit_on_stdin_eof))
    except KeyboardInterrupt:
        pass


class FakeOpenAIServer:
    """Context manager: the fake server in a child process on 127.0.0.1 (see module docstring)."""

    def __init__(self, latency_s: float = 0.0, port: int = 0, seed: int = 0, fault_rate: float = 0.0,
                 fault_kinds: tuple[str, ...] = DEFAULT_RANDOM_FAULTS, retry_after_s: float | None = 0.05,
                 expected_api_key: str | None = None, startup_timeout_s: float = 30.0) -> None:
        self._args = ["--port", str(port), "--latency-s", str(latency_s), "--seed", str(seed),
                      "--fault-rate", str(fault_rate), "--fault-kinds", ",".join(fault_kinds),
                      "--retry-after-s", str(-1.0 if retry_after_s is None else retry_after_s)]
        self._expected_api_key = expected_api_key  # sent over the admin API, never on a command line
        self._startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """Base URL for OpenAI clients (up to and including /v1)."""
        return self.root + "/v1"

    def start(self) -> "FakeOpenAIServer":
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "lamini.testing.fake_openai", "--exit-on-stdin-eof", *self._args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        proc = self._proc
        deadline = time.monotonic() + self._startup_timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"fake OpenAI server did not start in time (exit code {proc.returncode})")
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 256)
                if not chunk:
                    continue
                line += chunk
        tag, port = line.decode().split()
        assert tag == _READY, line
        self.port = int(port)
        if self._expected_api_key is not None:
            self.configure(expected_api_key=self._expected_api_key)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            try:
                proc.stdin.close()  # the child exits on EOF
            except OSError:
                pass
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            proc.stdout.close()

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _admin(self, method: str, path: str, payload: dict | None = None) -> dict:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(self.root + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self, detail: bool = False) -> dict[str, Any]:
        """Counters since start / last reset. detail=True adds outcomes_by_prompt and times_by_prompt."""
        return self._admin("GET", "/admin/stats" + ("?detail=1" if detail else ""))

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings at runtime: latency_s, seed, fault_rate, fault_kinds, retry_after_s, expected_api_key,
        known_models (a list of model names; None: every model is known), ratelimit_requests, ratelimit_window_s,
        record_headers, structured_outputs (False: refuse response_format with a 400), free_text_rate (share of
        unconstrained generation prompts answered in tagless prose)."""
        if "fault_kinds" in changes:
            changes["fault_kinds"] = list(changes["fault_kinds"])
        return self._admin("POST", "/admin/config", changes)

    def reset_stats(self) -> None:
        self._admin("POST", "/admin/reset", {})


if __name__ == "__main__":
    main()
