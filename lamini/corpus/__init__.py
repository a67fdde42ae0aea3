"""Readers of every instruction format into one Arrow schema.

    from lamini.corpus import CORPUS_SCHEMA, RejectLog, read_corpora
    rejects = RejectLog()
    table = read_corpora(config.corpora, on_error="skip", rejects=rejects, limit=1000)

Modules: ``schema`` (the columns, ids, prompt join, CorpusError), ``sources`` (paths/URIs ->
files -> raw records), ``jsonarray`` (streaming JSON arrays), ``formats`` (one parser per
format), ``readers`` (error policy, duplicates, limits, tables), ``rejects`` (the reject log).
Only pyarrow and fsspec are imported: reading corpora needs no Ray, torch or transformers.
"""

from lamini.corpus.readers import iter_corpora, read_corpora, read_corpus, rows_to_table
from lamini.corpus.rejects import RejectLog
from lamini.corpus.schema import CORPUS_COLUMNS, CORPUS_SCHEMA, CorpusError, join_prompt, row_id

__all__ = [
    "CORPUS_COLUMNS",
    "CORPUS_SCHEMA",
    "CorpusError",
    "RejectLog",
    "iter_corpora",
    "join_prompt",
    "read_corpora",
    "read_corpus",
    "row_id",
    "rows_to_table",
]
