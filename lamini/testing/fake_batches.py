"""The fake server's OpenAI Batch API: /v1/files and /v1/batches, with expiry and partial failure.

    POST /v1/files (multipart, purpose=batch)  -> a file object; GET /v1/files/{id}/content
    POST /v1/batches {input_file_id, endpoint, completion_window} -> a batch object
    GET  /v1/batches/{id}                      -> in_progress until `batch_latency_s` has passed,
                                                  then completed (or expired), with output and error files

Each line of an input file is answered like a chat request (same replies, same fault markers,
counted in the same stats) when the batch is created. Two markers matter here: "[fault:expire]"
(or "[fault:expirexN]": its first N submissions) leaves the line unprocessed and the batch ends
"expired", the line in the error file with code "batch_expired"; any HTTP fault ("[fault:500x1]")
becomes that line's response status. The rest of the batch is answered: partial failure.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?')


def multipart_file(content_type: str, body: bytes) -> bytes | None:
    """The bytes of the `file` part of a multipart/form-data body, or None."""
    m = _BOUNDARY.search(content_type or "")
    if not m:
        return None
    sep = b"--" + m.group(1).encode()
    for part in body.split(sep):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data[: -2] if data.endswith(b"\r\n") else data
    return None


class BatchStore:
    """Files and batches of one fake server. `answer(body, n_for_prompt)` -> (status, body dict)
    answers one chat body as the chat route would; `count(prompt)` counts a request for a prompt."""

    def __init__(self, answer: Callable[[dict], tuple[int, Any]], latency_s: Callable[[], float]) -> None:
        self.answer = answer
        self.latency_s = latency_s
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}

    def _file(self, data: bytes, purpose: str) -> dict[str, Any]:
        fid = f"file-{len(self.files) + 1:06d}"
        self.files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": f"{fid}.jsonl", "purpose": purpose, "status": "processed"}

    def route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes] | None:
        """(status, body) for a Batch API route; None for any other path."""
        if path == "/v1/files" and method == "POST":
            data = multipart_file(headers.get("content-type", ""), body)
            if data is None:
                return 400, _err("expected multipart/form-data with a file part")
            return 200, json.dumps(self._file(data, "batch")).encode()
        m = re.fullmatch(r"/v1/files/([^/]+)/content", path)
        if m and method == "GET":
            data = self.files.get(m.group(1))
            return (200, data) if data is not None else (404, _err("no such file"))
        if path == "/v1/batches" and method == "POST":
            req = json.loads(body or b"{}")
            data = self.files.get(req.get("input_file_id", ""))
            if data is None:
                return 400, _err("no such input file")
            return 200, json.dumps(self._create(req, data)).encode()
        m = re.fullmatch(r"/v1/batches/([^/]+)", path)
        if m and method == "GET":
            b = self.batches.get(m.group(1))
            return (200, json.dumps(self._view(b)).encode()) if b is not None else (404, _err("no such batch"))
        return None

    def _create(self, req: dict, data: bytes) -> dict[str, Any]:
        bid = f"batch_{len(self.batches) + 1:06d}"
        out, errors, expired = [], [], False
        for i, line in enumerate(x for x in data.split(b"\n") if x.strip()):
            item = json.loads(line)
            status, resp = self.answer(item["body"])
            if status == "expire":
                expired = True
                errors.append({"id": f"{bid}-{i}", "custom_id": item["custom_id"], "response": None,
                               "error": {"code": "batch_expired", "message": "not completed within the window"}})
                continue
            out.append({"id": f"{bid}-{i}", "custom_id": item["custom_id"], "error": None,
                        "response": {"status_code": status, "request_id": f"req-{bid}-{i}", "body": resp}})
        now = int(time.time())
        b = {"id": bid, "object": "batch", "endpoint": req.get("endpoint", "/v1/chat/completions"),
             "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window", "24h"),
             "created_at": now, "_done_at": time.monotonic() + self.latency_s(), "_final": "expired" if expired else "completed",
             "_out": out, "_errors": errors, "output_file_id": None, "error_file_id": None}
        self.batches[bid] = b
        return self._view(b)

    def _view(self, b: dict[str, Any]) -> dict[str, Any]:
        done = time.monotonic() >= b["_done_at"]
        if done and b["output_file_id"] is None and b["error_file_id"] is None:
            if b["_out"]:
                b["output_file_id"] = self._file(b"".join(json.dumps(x).encode() + b"\n" for x in b["_out"]), "batch_output")["id"]
            if b["_errors"]:
                b["error_file_id"] = self._file(b"".join(json.dumps(x).encode() + b"\n" for x in b["_errors"]), "batch_output")["id"]
        view = {k: v for k, v in b.items() if not k.startswith("_")}
        ok = sum(1 for x in b["_out"] if x["response"]["status_code"] == 200)
        total = len(b["_out"]) + len(b["_errors"])
        view.update(status=b["_final"] if done else "in_progress",
                    request_counts={"total": total, "completed": ok, "failed": total - ok})
        return view


def _err(message: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}).encode()
