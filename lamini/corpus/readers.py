"""Read corpora: CorpusSpec in, a :data:`CORPUS_SCHEMA` Arrow table out, bad input raised or logged.

The error policy lives here and only here. Sources split files into records, format parsers
turn records into rows; whatever either rejects goes through :func:`_Policy.bad`, which
raises :class:`CorpusError` (``on_error="raise"``) or adds it to the :class:`RejectLog`
(``"skip"``). Duplicates (a row id seen before) are always logged, never raised: a corpus
that repeats itself is normal, and dropping them silently would hide it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

import pyarrow as pa

from lamini.config import CorpusSpec
from lamini.corpus.formats import FORMATS, FileContext, container_for, folder_extensions, meta_json, parquet_columns
from lamini.corpus.rejects import RejectLog
from lamini.corpus.schema import CORPUS_COLUMNS, CORPUS_SCHEMA, BadRecord, CorpusError, join_prompt, row_id
from lamini.corpus.sources import Record, container_of, expand_path, iter_records

OnError = Literal["raise", "skip"]
_BATCH_ROWS = 8192  # rows per Arrow record batch while building a table


class _Policy:
    """What to do with a bad record: raise, or log and go on."""

    def __init__(self, on_error: OnError, rejects: RejectLog):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if not isinstance(rejects, RejectLog):
            raise TypeError(f"rejects must be a RejectLog, got {type(rejects).__name__}")
        self.on_error = on_error
        self.rejects = rejects

    def bad(self, file: str, line: int | None, reason: str, raw: str, element: int | None = None) -> None:
        if self.on_error == "raise":
            raise CorpusError(file, line, reason, element)
        self.rejects.add(file, line, reason, raw, element)


def _raw_of(record: Record) -> str:
    """The record's text for the reject log; Parquet rows have none, so they are shown as JSON."""
    if record.raw or record.value is None:
        return record.raw
    return json.dumps(record.value, ensure_ascii=False, default=str)


def _spec_rows(spec: CorpusSpec, policy: _Policy) -> Iterator[tuple[dict[str, str | None], Record]]:
    """Every good row of one corpus, in file order, with the record (file, line, element) it came from."""
    fmt = FORMATS[spec.format]
    source = spec.source or spec.format
    declared = container_for(spec)
    columns = parquet_columns(spec)
    for file in expand_path(spec.path, folder_extensions(spec)):
        try:
            container = container_of(file, declared)
        except CorpusError as e:
            policy.bad(e.file, e.line, e.reason, "", e.element)
            continue
        ctx = FileContext(spec=spec, stem=file.stem)
        for record in iter_records(file, container, columns):
            if record.error is not None:
                policy.bad(record.file, record.line, record.error, _raw_of(record), record.element)
                continue
            try:
                parsed = fmt.parse(record.value, ctx)
                rows = [
                    {
                        "id": row_id(source, p.subset, p.instruction, p.input),
                        "instruction": p.instruction,
                        "input": p.input,
                        "prompt": join_prompt(p.instruction, p.input),
                        "response": p.response,
                        "source": source,
                        "subset": p.subset,
                        "meta": meta_json(p.meta),
                        "origin": f"{record.file}:{record.line}",
                    }
                    for p in parsed
                ]
            except BadRecord as e:
                policy.bad(record.file, record.line, e.reason, _raw_of(record), record.element)
                continue
            for row in rows:
                yield row, record


def iter_corpora(
    specs: Iterable[CorpusSpec],
    *,
    on_error: OnError = "raise",
    rejects: RejectLog,
    limit: int | None = None,
) -> Iterator[dict[str, str | None]]:
    """Stream the rows of several corpora, deduplicated by id, as dicts with the CORPUS_SCHEMA columns.

    ``spec.limit`` caps each corpus and ``limit`` the total, counting rows kept (after
    duplicates), and reading stops as soon as they are reached. A row whose id was already
    seen goes to ``rejects`` as ``"duplicate of <id>"`` whatever ``on_error`` says.
    """
    policy = _Policy(on_error, rejects)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    seen: set[str] = set()
    total = 0
    for spec in specs:
        if limit is not None and total >= limit:
            return
        kept = 0
        for row, record in _spec_rows(spec, policy):
            if row["id"] in seen:
                raw = json.dumps({"instruction": row["instruction"], "input": row["input"]}, ensure_ascii=False)
                rejects.add(record.file, record.line, f"duplicate of {row['id']}", raw, record.element)
                continue
            seen.add(row["id"])
            yield row
            kept += 1
            total += 1
            if (spec.limit is not None and kept >= spec.limit) or (limit is not None and total >= limit):
                break


def rows_to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    """Dict rows -> a CORPUS_SCHEMA table, built a batch at a time so lists stay small."""
    batches = []
    cols: dict[str, list] = {c: [] for c in CORPUS_COLUMNS}
    n = 0
    for row in rows:
        for c in CORPUS_COLUMNS:
            cols[c].append(row[c])
        n += 1
        if n == _BATCH_ROWS:
            batches.append(pa.RecordBatch.from_pydict(cols, schema=CORPUS_SCHEMA))
            cols, n = {c: [] for c in CORPUS_COLUMNS}, 0
    if n:
        batches.append(pa.RecordBatch.from_pydict(cols, schema=CORPUS_SCHEMA))
    return pa.Table.from_batches(batches, schema=CORPUS_SCHEMA)


def read_corpora(
    specs: list[CorpusSpec],
    *,
    on_error: OnError = "raise",
    rejects: RejectLog,
    limit: int | None = None,
) -> pa.Table:
    """Several corpora -> one CORPUS_SCHEMA table, in spec order then sorted file order.

    Bad records raise :class:`CorpusError` (``on_error="raise"``) or go to ``rejects``
    (``"skip"``); duplicates always go to ``rejects``. Limits as in :func:`iter_corpora`.
    """
    return rows_to_table(iter_corpora(specs, on_error=on_error, rejects=rejects, limit=limit))


def read_corpus(spec: CorpusSpec, *, on_error: OnError = "raise", rejects: RejectLog) -> pa.Table:
    """One corpus -> a CORPUS_SCHEMA table (``spec.limit`` applied, duplicates logged to ``rejects``)."""
    return read_corpora([spec], on_error=on_error, rejects=rejects)
