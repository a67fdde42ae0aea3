"""Sending rubric-filled prompts to an LLM judge: the piece both probes' judges share.

A judge is a teacher (any engine), so its requests go through lamini.runs.answer's
`answer_table`, the resumable core every generation stage uses: rate limits, retries and error
rows behave as for teacher requests, and a judge run that is killed resumes block by block,
sending only the requests that have no reply yet.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from lamini.config import RayInitConfig
from lamini.evaluate.config import JudgeConfig
from lamini.runs.rundir import RunDir

# Teacher fields that change how fast or how persistently a judge's requests go (and what they
# cost), never what it answers: a change to them alone re-sends nothing.
TRANSPORT_FIELDS = frozenset({
    "api_key_env", "http_client", "max_in_flight", "requests_per_minute", "tokens_per_minute", "rate_limit_burst_s",
    "max_retries", "backoff_base_s", "backoff_max_s", "timeout_s", "price_per_1m_prompt_tokens",
    "price_per_1m_completion_tokens", "batch_size", "device", "accelerator_type",
})  # fmt: skip


def judge_settings(judge: JudgeConfig, rubric: str) -> dict[str, Any]:
    """What a judge's replies depend on, besides what it is shown: its engine and model (teacher
    fields but TRANSPORT_FIELDS), its sampling and the rubric text. Not its name, which only says
    where its files go. Its digest goes into the judge's request ids (settings_tag) and into the
    stamp of its stored grades, so a changed judge under the same name asks again."""
    teacher = {k: v for k, v in judge.teacher.model_dump(mode="json").items() if k not in TRANSPORT_FIELDS}
    return {"teacher": teacher, "generation": judge.generation.model_dump(mode="json"), "rubric": rubric}


def settings_tag(settings: dict[str, Any]) -> str:
    """A short hash of judge_settings, for the judge's request ids: the prompt hash in a request id
    covers the rubric and what is judged, not the judge's model or sampling, so without it a
    changed judge under the same name would get the replies the old one stored under
    run/judges/<judge>/."""
    from lamini.runs.fingerprint import digest

    return digest(settings)[:12]


def judge_name(judge: JudgeConfig) -> str:
    """A judge's name in tables and files: its configured name, else `llm:<teacher model>`."""
    return judge.name or f"llm:{getattr(judge.teacher, 'model', None) or 'embedded-smollm2'}"


def load_rubric(path: str | None, packaged: str) -> str:
    """The rubric at `path`, else the packaged lamini/prompts/<packaged>."""
    text = Path(path).read_text(encoding="utf-8") if path else resources.files("lamini").joinpath(
        f"prompts/{packaged}").read_text("utf-8")  # fmt: skip
    return text.rstrip("\n")


def slug(name: str) -> str:
    """A judge's name as a file or folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def request_id(*key: Any, prompt: str) -> str:
    """A request's id: its key (student, item, vote) plus a hash of the prompt, so a changed
    answer is a new request on resume, never an old reply reused."""
    return "/".join(str(k) for k in key) + "/" + hashlib.sha1(prompt.encode("utf-8")).hexdigest()[:12]


def ask_judge(
    judge: JudgeConfig, requests: list[dict[str, str]], run: RunDir, rel: str, ray_cfg: RayInitConfig
) -> dict[str, dict[str, Any]]:
    """requests [{id, prompt}] -> {id: {response, error, error_kind}}, one per request.

    The judge's teacher, generation and pipeline send them; the shards and the finalized replies go
    under run/rel. Raises RuntimeError if a request got no result at all.
    """
    from lamini.runs.answer import answer_table

    out: dict[str, dict[str, Any]] = {}
    if not requests:
        return out
    store = RunDir(run.uri_of(rel))
    table = pa.Table.from_pylist(
        [{"id": r["id"], "prompt": r["prompt"]} for r in requests],
        schema=pa.schema([("id", pa.string()), ("prompt", pa.string())]),
    )
    answer_table(
        table, store, teacher=judge.teacher, generation=judge.generation, system_prompt=None,
        pipeline=judge.pipeline, ray_cfg=ray_cfg,
    )  # fmt: skip
    for r in store.read_table("dataset/responses.parquet").select(["id", "response"]).to_pylist():
        out[r["id"]] = {"response": r["response"], "error": None, "error_kind": None}
    for r in store.read_table("dataset/errors.parquet").select(["id", "error", "error_kind"]).to_pylist():
        out[r["id"]] = {"response": None, "error": r["error"], "error_kind": r["error_kind"]}
    lost = [r["id"] for r in requests if r["id"] not in out]
    if lost:
        raise RuntimeError(f"the judge returned no result for {len(lost)} requests, e.g. {lost[:3]}")
    return out
