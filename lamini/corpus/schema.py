"""The one Arrow schema every corpus reader produces, and the pure functions that fill it.

Every reader in :mod:`lamini.corpus` turns its format into rows of :data:`CORPUS_SCHEMA`;
later stages (responses, filters, training) read only these columns and never need to
know which format a row came from.
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

CORPUS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),  # row_id(source, subset, instruction, input): stable across reads
        pa.field("instruction", pa.string()),
        pa.field("input", pa.string()),  # "" when the row has no input
        pa.field("prompt", pa.string()),  # join_prompt(instruction, input): what the teacher is sent
        pa.field("response", pa.string()),  # a response already in the corpus, else null
        pa.field("source", pa.string()),  # spec.source, else the format name
        pa.field("subset", pa.string()),  # format-specific: task name, template, app, ...
        pa.field("meta", pa.string()),  # JSON object of source-specific extras ("{}" when none)
        pa.field("origin", pa.string()),  # "<file>:<line>" the row was read from
    ]
)
"""Columns of every table the readers return. All are strings; only ``response`` may be null.

Fields are left nullable in the Arrow sense on purpose: Arrow refuses to concatenate tables whose
schemas differ only in nullability, and Ray Data / Parquet round trips produce nullable fields.
"""

CORPUS_COLUMNS: tuple[str, ...] = tuple(CORPUS_SCHEMA.names)

INSTRUCTION, RESPONSE, INSTRUCTION_SOURCE = "instruction", "response", "instruction_source"
LAMINI_SCHEMA = pa.schema(
    [
        pa.field(INSTRUCTION, pa.string()),  # what the teacher answered: the corpus row's `prompt`
        pa.field(RESPONSE, pa.string()),
        pa.field(INSTRUCTION_SOURCE, pa.string()),  # the corpus or generator it came from
    ]
)
"""The LaMini-instruction dataset's columns: the first columns of every row `lamini responses` and
`lamini dataset` write (provenance follows), what `lamini train` and `lamini analyze` read, and what
the ``lamini`` corpus format reads back."""

LAMINI_COLUMNS: tuple[str, ...] = tuple(LAMINI_SCHEMA.names)

# Which corpus (CORPUS_SCHEMA) column fills each LaMini column: the instruction is the joined prompt.
LAMINI_FROM_CORPUS: dict[str, str] = {INSTRUCTION: "prompt", RESPONSE: "response", INSTRUCTION_SOURCE: "source"}


class CorpusError(ValueError):
    """A bad input row or file, named by file and 1-based line (``None`` for the whole file).

    ``str(err) == f"{file}:{line}: {reason}"`` so the message points an editor at the spot;
    a JSON-array element adds its 0-based index (``f"{file}:{line}: element {i}: {reason}"``),
    since a whole array on one line gives every element line 1; a whole-file error is
    ``f"{file}: {reason}"``.
    """

    def __init__(self, file: str, line: int | None, reason: str, element: int | None = None):
        self.file = file
        self.line = line
        self.reason = reason
        self.element = element
        super().__init__(f"{where(file, line, element)}: {reason}")

    def __reduce__(self):  # keep the attributes when pickled across Ray workers
        return (type(self), (self.file, self.line, self.reason, self.element))


def where(file: str, line: int | None, element: int | None = None) -> str:
    """``file:line``, ``file:line: element i`` (a JSON-array element) or ``file`` (the whole file)."""
    at = file if line is None else f"{file}:{line}"
    return at if element is None else f"{at}: element {element}"


class BadRecord(Exception):
    """Raised by a format's parser for a record it cannot turn into rows; carries only the reason.

    The reader adds the file and line it knows and either raises :class:`CorpusError` or
    sends the record to the reject log.
    """

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def join_prompt(instruction: str, input: str | None) -> str:
    """The prompt a teacher sees: ``"$instruction:$input"`` when the input is non-empty, else the instruction.

    This is the join the LaMini-LM paper uses for instructions that carry an input (Alpaca,
    self-instruct). An input of only whitespace counts as empty.
    """
    if input is None or not input.strip():
        return instruction
    return f"{instruction}:{input}"


def row_id(source: str, subset: str, instruction: str, input: str | None) -> str:
    """Stable content id: the first 20 hex chars of the SHA-1 of a canonical JSON of the four fields.

    The response is not part of the id: two rows asking the same thing of the teacher are the
    same row, whatever answer a corpus happened to carry. Canonical = sorted keys, no spaces,
    non-ASCII kept as UTF-8, so the id does not depend on how the source file escaped text.
    """
    canonical = json.dumps(
        {"source": source, "subset": subset, "instruction": instruction, "input": input or ""},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha1(canonical.encode("utf-8")).hexdigest()[:20]
