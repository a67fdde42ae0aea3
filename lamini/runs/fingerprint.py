"""Fingerprints that decide whether a stored result may be reused.

A stage that writes a Parquet file stamps it with hashes of everything that decided its content
(model, prompt wrapper, sampling settings, input rows, judge...). A re-run reuses the file only when
the stamp equals this run's; otherwise it says which part changed and redoes the work. Hashes only:
a part may hold settings that must not be written out in clear.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from typing import Any

import pyarrow as pa

from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

# Schema-metadata keys of a stamped Parquet file: the sha256 of the whole fingerprint, and a sha256
# per part (so a mismatch can say which part changed).

# Schema-metadata keys of a stamped Parquet file: the sha256 of the whole fingerprint, and a sha256
# per part (so a mismatch can say which part changed). Hashes only: a part may hold settings that
# must not be written out in clear.
FINGERPRINT_KEY = b"lamini.fingerprint"


FINGERPRINT_PARTS_KEY = b"lamini.fingerprint.parts"


def digest(obj: Any) -> str:
    """sha256 of obj as canonical JSON (sorted keys): the same value gives the same hash in any run."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def table_digest(table: pa.Table) -> str:
    """sha256 of a table's column names and values (types aside: a Parquet round trip may change them)."""
    return digest({"columns": table.column_names, "rows": table.to_pylist()})


def stamp(table: pa.Table, parts: dict[str, Any]) -> pa.Table:
    """`table` with the fingerprint of `parts` (JSON-able values) in its schema metadata, which
    Parquet keeps: a later run compares it with stale_parts before reusing the file."""
    hashes = {k: digest(v) for k, v in parts.items()}
    meta = {**(table.schema.metadata or {}), FINGERPRINT_KEY: digest(hashes).encode(),
            FINGERPRINT_PARTS_KEY: json.dumps(hashes, sort_keys=True).encode()}  # fmt: skip
    return table.replace_schema_metadata(meta)


def stale_parts(table: pa.Table, parts: dict[str, Any]) -> list[str]:
    """Why a stored table may not be reused for `parts`: [] when its fingerprint matches, else the
    parts that differ (or a note that it has no fingerprint, e.g. written by an older lamini)."""
    meta = table.schema.metadata or {}
    hashes = {k: digest(v) for k, v in parts.items()}
    if meta.get(FINGERPRINT_KEY) == digest(hashes).encode():
        return []
    try:
        old = json.loads(meta[FINGERPRINT_PARTS_KEY])
    except (KeyError, ValueError):
        return ["it has no fingerprint"]
    return sorted(k for k in hashes.keys() | old.keys() if hashes.get(k) != old.get(k)) or ["fingerprint"]


def reusable(run: RunDir, rel: str, parts: dict[str, Any], redo: str, check: Any = None) -> pa.Table | None:
    """The table a finished step stored at `rel`, when its stamp matches `parts` (and `check(table)`,
    if given, names no problem); else None, with a warning saying what differs ("<redo> again")
    when a file was there. The one reuse rule of the probes' steps (answers, scores, verdicts, grades)."""
    if not run.exists(rel):
        return None
    old = run.read_table(rel)
    why = stale_parts(old, parts) or (check(old) if check else [])
    if not why:
        return old
    log.warning("%s was written for other inputs (%s differ): %s again", run.uri_of(rel), ", ".join(why), redo)
    return None


def store(run: RunDir, rel: str, table: pa.Table, parts: dict[str, Any]) -> pa.Table:
    """`table` stamped with `parts` and written to `rel` (atomically, its folder made); returns it stamped."""
    table = stamp(table, parts)
    run.makedirs(posixpath.dirname(rel))
    run.write_table(rel, table)
    return table
