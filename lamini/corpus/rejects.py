"""The reject log: every input record a reader did not turn into rows, with where and why.

Readers never drop a record silently. With ``on_error="skip"`` a bad record lands here
(file, 1-based line or None for a whole file, the 0-based element index for a JSON-array
element, reason, the raw text) and reading goes on;
duplicates land here whatever ``on_error`` says. The log is written as JSONL next to a run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import fsspec
import pyarrow as pa

RAW_MAX_CHARS = 2000
"""Raw text kept per reject: enough to see what is wrong, bounded so a 1 GB bad line costs nothing."""

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("file", pa.string()),
        pa.field("line", pa.int64()),
        pa.field("reason", pa.string()),
        pa.field("raw", pa.string()),
        pa.field("element", pa.int64()),  # 0-based index of a JSON-array element; null otherwise
    ]
)

# "(column 12)", "(byte 0xff at byte 7)": the variable detail readers put at the end of a reason.
_DETAIL = re.compile(r"\s*\([^()]*\)$")


@dataclass(frozen=True, slots=True)
class Reject:
    file: str
    line: int | None
    reason: str
    raw: str
    element: int | None = None


def printable(raw: str | bytes | None) -> str:
    """Raw input as text that is valid UTF-8: undecodable bytes become ``\\xNN`` escapes.

    Readers decode array files with ``surrogateescape``, so a bad byte arrives here as a lone
    surrogate; Arrow and JSON writers would fail on it, hence the escape.
    """
    if raw is None:
        return ""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    try:
        raw.encode("utf-8")
        return raw
    except UnicodeEncodeError:
        try:
            return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # a surrogate that is not an escaped byte (from a JSON \\ud800 escape)
            return raw.encode("utf-8", "backslashreplace").decode("utf-8")


def reason_key(reason: str) -> str:
    """The reason without its variable detail, for counting: "duplicate of ab12" -> "duplicate"."""
    if reason.startswith("duplicate of "):
        return "duplicate"
    return _DETAIL.sub("", reason)


class RejectLog:
    """Collects rejected records; in and out: ``add``, ``count``, ``by_reason``, ``to_table``, ``write``."""

    def __init__(self) -> None:
        self._items: list[Reject] = []

    def add(self, file: str, line: int | None, reason: str, raw: str | bytes | None, element: int | None = None) -> None:
        """Record one rejected record; ``raw`` is truncated to ``RAW_MAX_CHARS`` characters."""
        text = printable(raw)
        if len(text) > RAW_MAX_CHARS:
            text = text[:RAW_MAX_CHARS]
        self._items.append(Reject(str(file), line, reason, text, element))

    @property
    def count(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self):
        return iter(self._items)

    def by_reason(self) -> dict[str, int]:
        """Counts per reason, most frequent first; details like columns and duplicate ids are folded."""
        return dict(Counter(reason_key(r.reason) for r in self._items).most_common())

    def to_table(self) -> pa.Table:
        """An Arrow table ``file, line, reason, raw, element`` (line is null for whole-file rejects,
        element for anything but a JSON-array element)."""
        return pa.table(
            {
                "file": [r.file for r in self._items],
                "line": [r.line for r in self._items],
                "reason": [r.reason for r in self._items],
                "raw": [r.raw for r in self._items],
                "element": [r.element for r in self._items],
            },
            schema=REJECTS_SCHEMA,
        )

    def write(self, path_or_uri: str) -> None:
        """Write the log as JSONL (one reject per line) to a local path or any fsspec URI."""
        fs, path = fsspec.core.url_to_fs(str(path_or_uri))
        parent = fs._parent(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "w", encoding="utf-8") as f:
            for r in self._items:
                rec = {"file": r.file, "line": r.line, "element": r.element, "reason": r.reason, "raw": r.raw}
                f.write(json.dumps(rec, ensure_ascii=False))
                f.write("\n")

    def __repr__(self) -> str:
        return f"RejectLog(count={self.count}, by_reason={self.by_reason()})"
