"""The OpenAI Batch API backend of answer_table (teacher engine `openai_batch`): half the price,
answers within the completion window, no actors.

    pending rows -> JSONL files of <= max_requests_per_batch requests (custom_id = row id)
      -> POST /v1/files, POST /v1/batches   (each batch id saved in run_dir/batches.json at once)
      -> poll GET /v1/batches/{id} until completed / expired / failed / cancelled
      -> output and error files -> one shard per batch (shards/batch-<id>.parquet)
      -> rows that expired or failed transiently (429, 5xx) go again, alone, in a new batch

A killed run resumes polling the batches it had submitted (batches.json) instead of paying
for them twice; rows of a batch already collected are in its shard, so they count as done.
The official SDK does the HTTP: these are a handful of calls per batch, not a hot path.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import pyarrow as pa

from lamini.config import GenerationParams, OpenAIBatchTeacherConfig
from lamini.engines.abort import RunAborted
from lamini.engines.actors import teacher_label
from lamini.engines.base import ChatResult, append_results, build_request
from lamini.engines.http_guards import FATAL_STATUS
from lamini.engines.openai_http import OpenAIEngine, parse_completion
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

STATE = "batches.json"
TERMINAL = ("completed", "expired", "failed", "cancelled")


def _client(cfg: OpenAIBatchTeacherConfig) -> Any:
    import openai

    key = os.environ.get(cfg.api_key_env) or "unused-for-loopback"
    return openai.OpenAI(base_url=cfg.base_url, api_key=key, max_retries=3, timeout=cfg.timeout_s)


def _submit(client: Any, cfg: OpenAIBatchTeacherConfig, lines: list[bytes]) -> str:
    f = client.files.create(file=("requests.jsonl", b"".join(lines)), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window=cfg.completion_window)
    return b.id


def _results(client: Any, batch: Any) -> dict[str, tuple[int | None, Any]]:
    """custom_id -> (HTTP status or None for an expired / failed line, body or error)."""
    out: dict[str, tuple[int | None, Any]] = {}
    for fid in (batch.output_file_id, batch.error_file_id):
        if not fid:
            continue
        for line in client.files.content(fid).content.splitlines():
            if not line.strip():
                continue
            x = json.loads(line)
            resp = x.get("response")
            out[x["custom_id"]] = (resp["status_code"], resp["body"]) if resp else (None, x.get("error"))
    return out


def _to_result(status: int | None, body: Any, sends: int, latency_s: float) -> tuple[ChatResult, bool]:
    """-> (result, whether to send the row again). Expired lines and 429/5xx are sent again."""
    if status == 200:
        r = parse_completion(body)
        if isinstance(r, ChatResult):
            r.attempts, r.latency_s = sends, latency_s
            return r, False
        return ChatResult(error=r.message, error_kind=r.kind, attempts=sends, latency_s=latency_s), r.retryable
    if status is None:
        code = (body or {}).get("code") or "batch_failed"
        return ChatResult(error=f"batch: {(body or {}).get('message') or code}", error_kind=code, attempts=sends,
                          latency_s=latency_s), True
    msg = ((body or {}).get("error") or {}).get("message") if isinstance(body, dict) else None
    return ChatResult(error=f"HTTP {status}: {msg or body}", error_kind=f"http_{status}", attempts=sends,
                      latency_s=latency_s), status == 429 or status >= 500


def answer_with_batches(
    pending: pa.Table, run: RunDir, teacher: OpenAIBatchTeacherConfig, generation: GenerationParams,
    system_prompt: str | None,
) -> None:
    """Answer every row of `pending` (id, prompt, ...) through the Batch API, writing one shard per batch.
    An endpoint that cannot be reached, a rejected key or an unknown route stops the run (RunAborted)."""
    import openai

    try:
        _answer(pending, run, teacher, generation, system_prompt)
    except openai.APIConnectionError as e:
        raise RunAborted(f"cannot reach {teacher.base_url} ({type(e.__cause__ or e).__name__}): is base_url right?") from None
    except openai.APIStatusError as e:
        if e.status_code not in FATAL_STATUS:
            raise
        raise RunAborted(f"the Batch API at {teacher.base_url} answered HTTP {e.status_code} "
                         f"(key in ${teacher.api_key_env} rejected, or no such route or model)") from None


def _answer(
    pending: pa.Table, run: RunDir, teacher: OpenAIBatchTeacherConfig, generation: GenerationParams,
    system_prompt: str | None,
) -> None:
    engine = OpenAIEngine(teacher)  # the same request body as the chat path (and the key check)
    client = _client(teacher)
    label = teacher_label(teacher)
    rows = {r["id"]: i for i, r in enumerate(pending.select(["id"]).to_pylist())}
    prompts = pending.column("prompt").to_pylist()
    state = run.read_json(STATE, default=None) or {"batches": []}
    sends: dict[str, int] = dict(state.get("sends", {}))

    def save() -> None:
        state["sends"] = sends
        run.write_text(STATE, json.dumps(state, indent=1))

    # Rows an open batch (from a killed run) already carries are not sent again.
    carried = {rid for b in state["batches"] if not b.get("collected") for rid in b["ids"]}
    todo = [rid for rid in rows if rid not in carried]
    while True:
        for start in range(0, len(todo), teacher.max_requests_per_batch):
            ids = todo[start : start + teacher.max_requests_per_batch]
            lines = []
            for rid in ids:
                body = engine._payload(build_request(prompts[rows[rid]], system_prompt, generation))
                lines.append(json.dumps({"custom_id": rid, "method": "POST", "url": "/v1/chat/completions",
                                         "body": body}).encode() + b"\n")
                sends[rid] = sends.get(rid, 0) + 1
            bid = _submit(client, teacher, lines)
            state["batches"].append({"id": bid, "ids": ids, "submitted_at": time.time()})
            save()  # before waiting: a killed run finds and polls this batch instead of paying again
            log.info("batch %s: %d requests submitted", bid, len(ids))
        todo = []
        open_batches = [b for b in state["batches"] if not b.get("collected")]
        if not open_batches:
            break
        for b in open_batches:
            batch = client.batches.retrieve(b["id"])
            while batch.status not in TERMINAL:
                time.sleep(teacher.poll_s)
                batch = client.batches.retrieve(b["id"])
            got = _results(client, batch)
            latency = time.time() - b["submitted_at"]
            keep, results = [], []
            for rid in b["ids"]:
                if rid not in rows:  # a row no longer asked for (the input changed): drop its answer
                    continue
                status, body = got.get(rid, (None, {"code": f"batch_{batch.status}", "message": f"batch {batch.status}"}))
                res, again = _to_result(status, body, sends.get(rid, 1), latency)
                if again and sends.get(rid, 1) <= teacher.max_resubmits:
                    todo.append(rid)  # expired or transient: alone, in the next batch
                    continue
                keep.append(rows[rid])
                results.append(res)
            if keep:
                table = append_results(pending.take(pa.array(keep, pa.int64())), results, label)
                run.makedirs("shards")
                run.write_table(f"shards/batch-{b['id']}.parquet", table)
            b["collected"] = True
            b["status"] = batch.status
            save()
            log.info("batch %s %s: %d rows written, %d to send again", b["id"], batch.status, len(keep), len(todo))
    engine.close()
