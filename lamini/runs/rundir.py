"""A run directory on any pyarrow filesystem (local path, s3://, gs://, ...).

Layout of a responses run:
    manifest.json             config (secrets redacted), teacher, counts, tokens, cost, attempts
    rejects.jsonl             input rows that could not be read, with file, line and reason
    shards/*.parquet          raw teacher results as Ray Data writes them, one file per block
    journal/*.jsonl           HTTP teachers: every attempt and answered row as it happens, per actor
    accounting.json           attempts that never got an answer, folded from the journals
    dataset/responses.parquet the final dataset: one row per input row that succeeded
    dataset/errors.parquet    one row per input row whose request failed, with its reason
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger(__name__)


class RunDir:
    """Paths and small-file I/O inside one run directory."""

    def __init__(self, uri: str):
        if "://" not in uri:
            uri = os.path.abspath(uri)
        self.uri = uri.rstrip("/")
        self.fs, self.root = pafs.FileSystem.from_uri(self.uri)
        self.fs.create_dir(self.root, recursive=True)

    # Paths are filesystem paths (no scheme) for use with `self.fs`; `uri_of` gives the URI.
    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def uri_of(self, *parts: str) -> str:
        return posixpath.join(self.uri, *parts)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def makedirs(self, *parts: str) -> str:
        p = self.path(*parts)
        self.fs.create_dir(p, recursive=True)
        return p

    def write_bytes(self, rel: str, data: bytes) -> None:
        # Write to a temporary name then move, so a kill never leaves a half-written file.
        tmp = self.path(rel + ".tmp")
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.fs.move(tmp, self.path(rel))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode("utf-8"))

    def write_table(self, rel: str, table) -> None:
        """Write a Parquet file atomically (temp name, then move), like write_bytes."""
        import pyarrow.parquet as pq

        tmp = self.path(rel + ".tmp")
        pq.write_table(table, tmp, filesystem=self.fs)
        self.fs.move(tmp, self.path(rel))

    def read_table(self, rel: str):
        import pyarrow.parquet as pq

        return pq.read_table(self.path(rel), filesystem=self.fs)

    def read_text(self, rel: str) -> str:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read().decode("utf-8")

    def read_json(self, rel: str, default: Any = None) -> Any:
        return json.loads(self.read_text(rel)) if self.exists(rel) else default

    def list_files(self, rel: str, suffix: str) -> list[str]:
        """Sorted file paths under `rel` ending in `suffix` (empty when the folder is absent)."""
        if not self.exists(rel):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(rel), recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))

    def delete(self, path: str) -> None:
        self.fs.delete_file(path)
