"""Files in, records out: expand a path or URI into files, and split each file into raw records.

Everything goes through fsspec, so a local path, ``file://``, ``s3://``, ``gs://`` and
``memory://`` are read the same way (and ``.gz``/``.zst``... are decompressed on the fly).
A record is one JSONL line, one JSON-array element, one CSV row or one Parquet row, with
the 1-based line (or row number for Parquet) it starts on. Records that cannot even be
decoded carry an ``error`` instead of a ``value``; the format parsers never see them.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.utils import infer_compression

from lamini.corpus.jsonarray import bad_utf8_reason, iter_json_array
from lamini.corpus.schema import CorpusError

log = logging.getLogger(__name__)

Container = Literal["jsonl", "json", "csv", "parquet"]

EXTENSIONS: dict[str, Container] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 8192


@dataclass(slots=True)
class Record:
    """One raw record of a file: ``value`` when it decoded, else ``error`` (the reason) and ``value=None``.

    ``line`` is 1-based (the row number for Parquet); None for an error about the whole file.
    ``raw`` is the record's text as read, for the reject log. ``element`` is the 0-based index
    of a JSON-array element (None for other containers).
    """

    file: str
    line: int | None
    raw: str
    value: Any = None
    error: str | None = None
    element: int | None = None


@dataclass(frozen=True, slots=True)
class SourceFile:
    """One file to read: the filesystem, its path there, and the name to show in errors and origins."""

    fs: fsspec.AbstractFileSystem
    path: str
    display: str

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        """The file name without compression and data extensions: ``a/b.jsonl.gz`` -> ``b``."""
        name = self.name
        if infer_compression(name):
            name = name.rsplit(".", 1)[0]
        return name.rsplit(".", 1)[0] if "." in name else name

    @property
    def extension(self) -> str:
        """The data extension, looking through a compression suffix: ``b.jsonl.gz`` -> ``.jsonl``."""
        name = self.name
        if infer_compression(name):
            name = name.rsplit(".", 1)[0]
        return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""

    def open(self):
        return self.fs.open(self.path, "rb", compression=infer_compression(self.path))


def expand_path(path: str, extensions: frozenset[str]) -> list[SourceFile]:
    """A file, folder or glob (local or URI) -> its files, sorted so ids and limits are deterministic.

    A folder contributes its files (recursively) whose data extension is in ``extensions``,
    skipping hidden and ``_``-prefixed names (``_SUCCESS``, ``.crc``); a glob or a single file
    is taken as named. A path that matches nothing raises CorpusError whatever ``on_error``
    says: it is a config mistake, not a bad row.
    """
    fs, root = fsspec.core.url_to_fs(str(path))
    if glob.has_magic(root):
        found = []
        for p in fs.glob(root):
            found += _folder_files(fs, p, extensions) if fs.isdir(p) else [p]
    elif fs.isdir(root):
        found = _folder_files(fs, root, extensions)
    elif fs.exists(root):
        found = [root]
    else:
        raise CorpusError(str(path), None, "no such file or folder")
    if not found:
        raise CorpusError(str(path), None, f"no data files found (looked for {', '.join(sorted(extensions))})")
    local = isinstance(fs, LocalFileSystem)
    return [SourceFile(fs, p, p if local else fs.unstrip_protocol(p)) for p in sorted(set(found))]


def _folder_files(fs: fsspec.AbstractFileSystem, folder: str, extensions: frozenset[str]) -> list[str]:
    files = []
    for p in fs.find(folder):
        f = SourceFile(fs, p, p)
        if f.name.startswith((".", "_")):
            continue
        if f.extension in extensions:
            files.append(p)
        else:
            log.info("skipping %s: not a %s file", p, "/".join(sorted(extensions)))
    return files


def container_of(file: SourceFile, declared: Container | None) -> Container:
    """The declared container, else the one the extension names; CorpusError if neither says."""
    if declared is not None:
        return declared
    kind = EXTENSIONS.get(file.extension)
    if kind is None:
        raise CorpusError(file.display, None, f"cannot tell the file type from {file.extension or 'no extension'!r}; set file_format")
    return kind


def iter_records(file: SourceFile, container: Container, columns: list[str] | None = None) -> Iterator[Record]:
    """Every record of ``file`` in order, good or bad. A file with no records yields one 'empty file' error.

    ``columns``: for Parquet, read only these (those the file has); other containers ignore it.
    """
    if container == "jsonl":
        yield from _iter_jsonl(file)
    elif container == "json":
        yield from _iter_json(file)
    elif container == "csv":
        yield from _iter_csv(file)
    elif container == "parquet":
        yield from _iter_parquet(file, columns)
    else:  # pragma: no cover - the Literal rules it out
        raise ValueError(f"unknown container {container!r}")


def jsonl_objects(path: str) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Every JSON object of one JSON Lines file (local path or URI; .gz read through) with the
    file and 1-based line it came from, for inputs that are not instruction corpora (probe
    questions, RealToxicityPrompts, ...). A line that is not valid JSON, a line that is not an
    object, and an empty file raise CorpusError naming the file and line."""
    for file in expand_path(path, frozenset({".jsonl", ".json"})):
        for rec in _iter_jsonl(file):
            if rec.error is not None:
                raise CorpusError(rec.file, rec.line, rec.error)
            if not isinstance(rec.value, dict):
                raise CorpusError(rec.file, rec.line, f"expected a JSON object, got {type(rec.value).__name__}")
            yield rec.file, rec.line, rec.value  # type: ignore[misc]


def _iter_jsonl(file: SourceFile) -> Iterator[Record]:
    """JSON Lines, streamed line by line; each line is decoded strictly so a bad byte names its line.

    Blank lines carry nothing and are passed over (a trailing newline is not a record).
    """
    seen = False
    with file.open() as f:
        for line, data in enumerate(f, 1):
            if line == 1:
                data = data.removeprefix(_BOM)
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                seen = True
                reason = f"not valid UTF-8 (byte 0x{data[e.start]:02x} at byte {e.start + 1} of the line)"
                yield Record(file.display, line, data.rstrip(b"\r\n").decode("utf-8", "backslashreplace"), error=reason)
                continue
            if not text.strip():
                continue
            seen = True
            text = text.rstrip("\r\n")
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Record(file.display, line, text, error=f"malformed JSON: {e.msg} (column {e.colno})")
                continue
            yield Record(file.display, line, text, value)
    if not seen:
        yield Record(file.display, None, "", error="empty file")


def _iter_json(file: SourceFile) -> Iterator[Record]:
    """One JSON array, element by element; a ``.json`` file that is really JSON Lines is read as such."""
    with file.open() as f:
        head = f.read(4096).lstrip(_BOM).lstrip()
    if head.startswith(b"{"):  # many exports name JSON Lines ".json"
        yield from _iter_jsonl(file)
        return
    with file.open() as f:
        for el in iter_json_array(f):
            yield Record(file.display, el.line, el.raw, el.value, el.error, el.index)


def _iter_csv(file: SourceFile) -> Iterator[Record]:
    """CSV with a header row; each record maps header -> text. Quoted fields may span lines.

    Lines are decoded with surrogateescape so one bad byte rejects only its record.
    """
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the 128 KiB default is shorter than long responses
    pending: list[str] = []

    def lines() -> Iterator[str]:
        with file.open() as f:
            for i, data in enumerate(f):
                text = (data.removeprefix(_BOM) if i == 0 else data).decode("utf-8", "surrogateescape")
                pending.append(text)
                yield text

    reader = csv.reader(lines(), strict=True)  # a stray quote is an error, not silently kept text
    header: list[str] | None = None
    start = 1
    rows = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raw, pending[:] = "".join(pending).rstrip("\r\n"), []
            if header is None:
                yield Record(file.display, start, raw, error=f"header: malformed CSV: {e}; file not read")
                return
            rows += 1
            yield Record(file.display, start, raw, error=f"malformed CSV: {e}")
            start = reader.line_num + 1
            continue
        raw, pending[:] = "".join(pending).rstrip("\r\n"), []
        line, start = start, reader.line_num + 1
        if not fields:
            continue  # a blank line
        bad = bad_utf8_reason(raw)
        if header is None:
            if bad:
                yield Record(file.display, line, raw, error=f"header: {bad}; file not read")
                return
            header = fields
            dupes = sorted({h for h in header if header.count(h) > 1})
            if dupes:
                yield Record(file.display, line, raw, error=f"header repeats column(s) {', '.join(dupes)}; file not read")
                return
            continue
        rows += 1
        if bad:
            yield Record(file.display, line, raw, error=bad)
        elif len(fields) != len(header):
            yield Record(file.display, line, raw, error=f"expected {len(header)} fields (as in the header), got {len(fields)}")
        else:
            yield Record(file.display, line, raw, dict(zip(header, fields)))
    if header is None:
        yield Record(file.display, None, "", error="empty file")
    elif rows == 0:
        yield Record(file.display, None, ",".join(header), error="empty file (only a header)")


def _iter_parquet(file: SourceFile, columns: list[str] | None) -> Iterator[Record]:
    """Parquet rows as dicts, in batches; ``line`` is the 1-based row number in the file.

    ``raw`` is left empty: the reader renders a rejected row as JSON only when it needs to.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with file.open() as f:
        first = f.read(1)
    if not first:
        yield Record(file.display, None, "", error="empty file")
        return
    with file.open() as f:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as e:
            yield Record(file.display, None, "", error=f"not a valid Parquet file: {e}")
            return
        if pf.metadata.num_rows == 0:
            yield Record(file.display, None, "", error="empty file (no rows)")
            return
        if columns is not None:
            columns = [c for c in columns if c in pf.schema_arrow.names]
        row = 0
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
            for value in batch.to_pylist():
                row += 1
                yield Record(file.display, row, "", value)
