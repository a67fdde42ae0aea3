"""Which herd steps are finished, and with what inputs: state/<step>.json in the herd's run directory.

A step records the fingerprint of everything it depends on (its config, the data files' hashes,
the models it evaluates) when it finishes. A re-run skips a step whose record matches, and redoes
one whose inputs changed, after clearing its stale outputs (a stage's own reuse keys on paths and
settings, which stay the same when, say, a student is retrained under the same name). A step killed
midway has no record: it runs again, and resumes from what its stage wrote (teacher shards, Ray
Train checkpoints, stored student outputs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from lamini.runs.fingerprint import digest
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)


def _rel(step: str) -> str:
    return f"state/{step}.json"


def finished(run: RunDir, step: str, parts: dict[str, Any]) -> dict[str, Any] | None:
    """The record of `step` if it finished with these inputs, else None (never run, killed, or changed)."""
    rec = run.read_json(_rel(step))
    if rec is None:
        return None
    if rec.get("fingerprint") != digest(parts):
        changed = sorted(k for k in parts.keys() | rec.get("parts", {}).keys()
                         if digest(parts.get(k)) != rec.get("parts", {}).get(k))  # fmt: skip
        log.warning("herd: %s was done with other inputs (%s changed): redoing it", step, ", ".join(changed) or "?")
        return None
    return rec


def mark(run: RunDir, step: str, parts: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Record `step` as finished with these inputs; returns the record."""
    rec = {"step": step, "fingerprint": digest(parts), "parts": {k: digest(v) for k, v in parts.items()},
           "finished_at": time.time(), "result": result}  # fmt: skip
    run.makedirs("state")
    run.write_text(_rel(step), json.dumps(rec, indent=1, default=str))
    return rec


def was_recorded(run: RunDir, step: str) -> bool:
    """Whether `step` has a record (finished once, with whatever inputs)."""
    return run.exists(_rel(step))


def file_digest(uri: str) -> str:
    """sha256 of a file's bytes (local path or URI): the identity of a data file or model weight file."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else "file://" + uri)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def folder_digest(uri: str, suffixes: tuple[str, ...] = (".json", ".safetensors", ".bin", ".model")) -> str:
    """sha256 over a folder's files with these suffixes (names and bytes): a model folder's identity."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri if "://" in uri else "file://" + uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffixes))
    h = hashlib.sha256()
    for p in files:
        h.update(p[len(path):].encode())
        with fs.open_input_stream(p) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()
