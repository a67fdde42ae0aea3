"""The one small interface every teacher backend implements.

A teacher takes a batch of chat requests and returns one result per request, in order.
A request that fails after retries comes back as a result with `error` set: a teacher
never raises for a single bad row, so one row cannot stop a run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass
class ChatRequest:
    """One chat-completion request. `messages` is the OpenAI list of {role, content}."""

    messages: list[dict[str, str]]
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class ChatResult:
    """What came back for one request.

    error_kind is a short machine-readable class of failure (http_429, http_500, timeout,
    connection, malformed_response, empty_choices, generation, ...); error is the readable
    reason. Exactly one of `text` / `error` is set.
    """

    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 1
    latency_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Columns the teacher stage adds to every row (also the names in the output Parquet).
RESULT_COLUMNS = (
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
    "error",
    "error_kind",
    "attempts",
    "latency_s",
)


def result_to_columns(r: ChatResult) -> dict[str, Any]:
    """ChatResult -> the output-row fields named in RESULT_COLUMNS."""
    return {
        "response": r.text,
        "finish_reason": r.finish_reason,
        "prompt_tokens": int(r.prompt_tokens or 0),
        "completion_tokens": int(r.completion_tokens or 0),
        "error": r.error,
        "error_kind": r.error_kind,
        "attempts": int(r.attempts),
        "latency_s": float(r.latency_s),
    }


@runtime_checkable
class Teacher(Protocol):
    """A batch of chat requests in, a batch of results out (same length, same order)."""

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...


@dataclass
class BackendInfo:
    """What the registry knows about one backend (filled in by lamini.teachers)."""

    name: str
    # "module:attr" strings so the registry itself imports nothing heavy.
    teacher: str
    stage: str
    io_bound: bool = field(default=False)


def build_request(prompt: str, system_prompt: str | None, gen: Any) -> ChatRequest:
    """Pure: one instruction (already joined as '$instruction:$input') -> a ChatRequest.

    `gen` is a lamini.config.GenerationParams. The system message is the paper's unless
    the config sets another (or None for no system message).
    """
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    return ChatRequest(
        messages=messages, max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed
    )


class Secret:
    """A value that must not be printed: repr/str show only that it is set.

    Used to hand an API key from the driver's environment to teacher actors, whose processes
    do not inherit variables the driver got after Ray started (or on other nodes). It travels
    pickled as an actor constructor argument, never through a config, runtime_env or log.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('<redacted>')"

    __str__ = __repr__
