"""Wikipedia categories as topics for topic-guided generation (LaMini-LM section 3.1, Figure 7).

    topics = load_topics(spec.topics)     # TopicsConfig -> sorted list of category names

The input is a table ``category, n_subcategories, n_pages`` (CSV, TSV, JSONL or Parquet;
local or any fsspec URI; ``.gz`` and friends decompressed by extension). The paper keeps a
category when its name has fewer than 3 words, it has more than 10 subcategories and more
than 50 pages; the three numbers are fields of :class:`TopicsConfig`.
"""

from __future__ import annotations

import io
import json
from pathlib import PurePosixPath

import fsspec
import pyarrow as pa
import pyarrow.compute as pc

from lamini.generate.config import TopicsConfig
from lamini.corpus.schema import CorpusError

CATEGORY_SCHEMA = pa.schema(
    [
        pa.field("category", pa.string()),
        pa.field("n_subcategories", pa.int64()),
        pa.field("n_pages", pa.int64()),
    ]
)
"""Columns :func:`read_category_table` returns; extra columns of the file are dropped."""

_COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst", ".zip"}
_KINDS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".pq": "parquet"}


def _kind_of(path: str) -> str:
    suffixes = [s.lower() for s in PurePosixPath(path.split("?", 1)[0]).suffixes]
    while suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes.pop()
    kind = _KINDS.get(suffixes[-1]) if suffixes else None
    if kind is None:
        raise CorpusError(path, None, f"cannot tell the table format from the name; use one of {sorted(_KINDS)}")
    return kind


def _read_raw(path: str, kind: str) -> pa.Table:
    """The file as an Arrow table, columns as the file has them (category forced to string for CSV)."""
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb", compression="infer") as f:
        data = f.read()
    try:
        if kind == "parquet":
            return pq.read_table(io.BytesIO(data))
        if kind == "jsonl":
            if data.lstrip()[:1] == b"[":  # a .json file holding one array of objects
                return pa.Table.from_pylist(json.loads(data))
            return pajson.read_json(io.BytesIO(data))
        # A category named "1990" must stay the text "1990", so the column is read as a string.
        return pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ","),
            convert_options=pacsv.ConvertOptions(column_types={"category": pa.string()}),
        )
    except (pa.ArrowInvalid, ValueError) as e:
        raise CorpusError(path, None, f"cannot parse as {kind}: {e}") from e


def _line_of(kind: str, row: int) -> int | None:
    """1-based file line of data row ``row`` (CSV/TSV have a header line; Parquet has no lines)."""
    return {"csv": row + 2, "tsv": row + 2, "jsonl": row + 1}.get(kind)


def _count_column(path: str, kind: str, table: pa.Table, name: str) -> pa.Array:
    col = table.column(name).combine_chunks()
    if pa.types.is_integer(col.type) and col.null_count == 0:
        bad = pc.less(col, 0)
        if not pc.any(bad).as_py():
            return col.cast(pa.int64())
    # Slow path only to find and name the first bad value.
    for i, v in enumerate(col.to_pylist()):
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
        if isinstance(v, float) and v.is_integer() and v >= 0:
            ok = True
        if isinstance(v, str) and v.strip().isdigit():
            ok = True
        if not ok:
            where = "" if _line_of(kind, i) else f"row {i}: "
            raise CorpusError(path, _line_of(kind, i), f"{where}column {name!r} must be a non-negative integer, got {v!r}")
    return pa.array([int(float(v)) for v in col.to_pylist()], pa.int64())


def read_category_table(path: str) -> pa.Table:
    """Read a category table into :data:`CATEGORY_SCHEMA`.

    Raises :class:`CorpusError` (a ValueError, ``"file:line: reason"``) naming the file and
    the missing column, or the line and column of the first bad value: an empty category
    name, or a count that is not a non-negative integer.
    """
    path = str(path)
    kind = _kind_of(path)
    table = _read_raw(path, kind)
    missing = [c for c in CATEGORY_SCHEMA.names if c not in table.column_names]
    if missing:
        raise CorpusError(path, None, f"missing column(s) {missing}; found {table.column_names}")
    cats = table.column("category").combine_chunks()
    if not pa.types.is_string(cats.type) and not pa.types.is_large_string(cats.type):
        cats = cats.cast(pa.string())  # JSONL/Parquet numbers-as-names: keep them, as text
    for i, v in enumerate(cats.to_pylist()):
        if v is None or not v.strip():
            where = "" if _line_of(kind, i) else f"row {i}: "
            raise CorpusError(path, _line_of(kind, i), f"{where}column 'category' is empty")
    return pa.table(
        [
            cats.cast(pa.string()),
            _count_column(path, kind, table, "n_subcategories"),
            _count_column(path, kind, table, "n_pages"),
        ],
        schema=CATEGORY_SCHEMA,
    )


def clean_category(name: str) -> str:
    """Display form of a category name: Wikipedia dumps write ``Design_bureaus``; topics read ``Design bureaus``."""
    name = name.strip()
    if name.lower().startswith("category:"):
        name = name[len("category:") :]
    return " ".join(name.replace("_", " ").split())


def filter_topics(table: pa.Table, cfg: TopicsConfig) -> list[str]:
    """Category names that pass the paper's rules, cleaned, deduplicated and sorted.

    Kept: fewer than ``cfg.fewer_words_than`` words (after :func:`clean_category`), more than
    ``cfg.more_subcategories_than`` subcategories and more than ``cfg.more_pages_than`` pages.
    All three comparisons are strict, as the paper states them.
    """
    names = [clean_category(c) for c in table.column("category").to_pylist()]
    n_words = pc.list_value_length(pc.utf8_split_whitespace(pa.array(names, pa.string())))
    keep = pc.and_(
        pc.and_(
            pc.less(n_words, cfg.fewer_words_than),
            pc.greater(table.column("n_subcategories"), cfg.more_subcategories_than),
        ),
        pc.greater(table.column("n_pages"), cfg.more_pages_than),
    )
    return sorted({n for n, k in zip(names, keep.to_pylist()) if k and n})


def load_topics(cfg: TopicsConfig) -> list[str]:
    """``filter_topics(read_category_table(cfg.path), cfg)``: the topic list of one source."""
    return filter_topics(read_category_table(cfg.path), cfg)
