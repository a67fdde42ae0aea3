"""The one small interface every engine implements, and the one result schema they all write.

An engine (the OpenAI-compatible HTTP client, a local transformers model, vLLM) takes a batch of
requests and returns one result per request, in order. It serves every role: the teacher, the
students and the LLM judges. A request that fails after retries comes back as a result with
`error` set: an engine never raises for a single bad row, so one row cannot stop a run.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from lamini.config import GenerationParams


@dataclass
class ChatRequest:
    """One request. `messages` is the OpenAI list of {role, content}, rendered with the model's chat
    template; a student is sent `text` instead, the finished prompt it continues as it is.
    `min_tokens` > 0 suppresses EOS until that many tokens are written (benchmarks).
    `response_schema`: a JSON schema (JSON text) the answer must follow (lamini.engines.structured)."""

    messages: list[dict[str, str]]
    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    text: str | None = None
    min_tokens: int = 0
    response_schema: str | None = None


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


# Columns an engine stage adds to every row (also the names in the output Parquet).
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


# Arrow types of the result columns plus the provenance label and completion time, so every
# output block has the same schema (an all-null `error` column would otherwise be typed `null`
# and clash with a block that has errors). The label column is `teacher` for the teacher and the
# judges, `engine` for students (append_results renames it).
RESULT_SCHEMA = pa.schema(
    [
        ("response", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("attempts", pa.int64()),
        ("latency_s", pa.float64()),
        ("teacher", pa.string()),
        ("completed_at", pa.float64()),
    ]
)


def append_results(batch: pa.Table, results: list[ChatResult], label: str, label_column: str = "teacher") -> pa.Table:
    """`batch` with RESULT_SCHEMA's columns added (one result per row, in order); the label goes
    into `label_column`."""
    cols: dict[str, list] = {name: [] for name in RESULT_COLUMNS}
    for r in results:
        for k, v in result_to_columns(r).items():
            cols[k].append(v)
    now = time.time()
    cols["teacher"] = [label] * len(results)
    cols["completed_at"] = [now] * len(results)
    for f in RESULT_SCHEMA:
        name = label_column if f.name == "teacher" else f.name
        batch = batch.append_column(f.with_name(name), pa.array(cols[f.name], type=f.type))
    return batch


@runtime_checkable
class Engine(Protocol):
    """A batch of requests in, a batch of results out (same length, same order).

    `agenerate` is what a Ray Data async actor awaits (HTTP engines overlap many calls on one
    event loop); local-model engines compute in `generate` and their `agenerate` just calls it.
    """

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    async def agenerate(self, requests: list[ChatRequest]) -> list[ChatResult]: ...

    def close(self) -> None: ...


@dataclass
class EngineInfo:
    """What the registry knows about one engine (filled in by lamini.engines)."""

    name: str
    # "module:attr" strings so the registry itself imports nothing heavy.
    engine: str  # builds the engine from a teacher config: cls(cfg) or cls(cfg, share=...)
    stage: str  # the Ray Data stage that maps a dataset of request rows through it
    io_bound: bool = field(default=False)
    student_stage: str | None = None  # the stage that serves a student (a Serving) on this engine


def text_request(text: str, gen: GenerationParams, min_tokens: int = 0) -> ChatRequest:
    """Pure: a student's finished prompt text -> a ChatRequest that sends it as it is (no chat template)."""
    return ChatRequest(
        messages=[], max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed,
        text=text, min_tokens=min_tokens,
    )  # fmt: skip


def build_request(
    prompt: str, system_prompt: str | None, gen: GenerationParams, response_schema: str | None = None
) -> ChatRequest:
    """Pure: one instruction (already joined as '$instruction:$input') -> a ChatRequest.

    The system message is the paper's unless the config sets another (or None for no system message).
    response_schema: the JSON schema (JSON text) the answer must follow, if any.
    """
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": prompt})
    return ChatRequest(
        messages=messages, max_tokens=gen.max_tokens, temperature=gen.temperature, top_p=gen.top_p, seed=gen.seed,
        response_schema=response_schema,
    )  # fmt: skip


class Secret:
    """A value that must not be printed: repr/str show only that it is set.

    Used to hand an API key from the driver's environment to engine actors, whose processes
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
