"""Table 1 and Table 2 statistics, computed per block and merged: bounded memory on any size.

One block (an Arrow table with ``instruction``, ``response`` and the ``group_by`` column) goes
into :func:`summarise_block`, which returns a :class:`BlockSummary`: per subset, the counts of
samples and tokens, 64-bit hashes of the instructions and of the (instruction, response) pairs,
the MATTR summaries of the instruction and response streams (:mod:`lamini.analysis.mattr`), and
a bottom-k sample of instructions for t-SNE. The driver folds summaries, in stream order, into a
:class:`StatsAccumulator` and calls :meth:`StatsAccumulator.finish` for :class:`SubsetStats`
rows. Nothing here imports Ray: the Ray Data plan lives in :mod:`lamini.analysis.report`.

Memory on the driver: the unique counts keep one sorted ``uint64`` array per subset and column
(8 bytes per unique instruction, 8 per unique pair), compacted with ``np.unique`` whenever the
pending hashes outgrow it, so the peak is ~3x that while compacting (2.58M rows: ~40 MB for
both columns at the peak). Two different texts share a 64-bit hash with probability ~n^2/2^65
(~2e-7 at 2.58M rows), so the counts are exact in practice. MATTR states hold ``2(w-1)`` tokens
each; the t-SNE sample holds ``k`` instructions per subset. Everything else is a counter.

Token counts (Table 1): ``"whitespace"`` = ``len(text.split())``; any other value is loaded with
``AutoTokenizer.from_pretrained`` and counts ids without special tokens. Empty or null text
counts 0 tokens. A null ``group_by`` value becomes the subset ``"<null>"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa

from lamini.analysis.mattr import MattrState

NULL_SUBSET = "<null>"
TokenCounter = Callable[[list[str]], list[int]]


@lru_cache(maxsize=4)  # one load per worker process and tokenizer, reused across blocks
def token_counter(name: str) -> TokenCounter:
    """Tokenizer name in (``"whitespace"`` or an AutoTokenizer id/folder), ``texts -> counts`` out."""
    if name == "whitespace":
        return lambda texts: [len(t.split()) for t in texts]
    from transformers import AutoTokenizer  # lazy: the whitespace path needs no transformers

    tok = AutoTokenizer.from_pretrained(name)
    tok.model_max_length = 1 << 62  # we count, not feed a model: silence "longer than max" warnings

    def count(texts: list[str]) -> list[int]:
        ids = tok(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return [len(x) for x in ids]

    return count


def _h64(parts: tuple[bytes, ...], key: bytes = b"") -> int:
    # blake2b, not hash(): Python's str hash is salted per process, and blocks are hashed in
    # different Ray workers. Length prefixes keep ("ab", "c") and ("a", "bc") apart.
    h = hashlib.blake2b(digest_size=8, key=key)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return int.from_bytes(h.digest(), "little")


def hash64(texts: list[str], others: list[str] | None = None, key: bytes = b"") -> np.ndarray:
    """Texts (and optionally a second column, hashed as a pair) in, ``uint64`` hashes out."""
    if others is None:
        vals = [_h64((t.encode(),), key) for t in texts]
    else:
        vals = [_h64((a.encode(), b.encode()), key) for a, b in zip(texts, others)]
    return np.array(vals, dtype=np.uint64)


@dataclass
class SubsetPartial:
    """What one block says about one subset; merged on the driver."""

    window: int
    n_samples: int = 0
    instruction_tokens: int = 0
    response_tokens: int = 0
    instruction_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    pair_hashes: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    mattr_instruction: MattrState | None = None
    mattr_response: MattrState | None = None
    sample: list[tuple[int, str]] = field(default_factory=list)  # (seeded key, instruction), bottom-k


@dataclass
class BlockSummary:
    """Per-subset partials of one block, plus the MATTR of the whole block's streams (the total row)."""

    subsets: dict[str, SubsetPartial]
    total_instruction: MattrState
    total_response: MattrState


def _column(table: pa.Table, name: str) -> list[str]:
    return ["" if v is None else v for v in table.column(name).to_pylist()]


def _bottom_k(keys: np.ndarray, texts: list[str], k: int) -> list[tuple[int, str]]:
    # Distinct keys first: a repeated instruction must not take two of the k places.
    uniq, first = np.unique(keys, return_index=True)
    return [(int(u), texts[i]) for u, i in zip(uniq[:k], first[:k])]


def summarise_block(
    table: pa.Table, *, group_by: str, tokenizer: str, window: int, sample_k: int, seed: int
) -> BlockSummary:
    """An Arrow block in (columns ``instruction``, ``response``, ``group_by``), its summary out.

    The t-SNE sample is a bottom-k sketch: each instruction gets a key from a hash seeded by
    ``seed``, and the ``k`` distinct instructions with the smallest keys are kept. That is a
    uniform sample of the distinct instructions, independent of block boundaries and order.
    """
    ins, res = _column(table, "instruction"), _column(table, "response")
    groups = [NULL_SUBSET if g is None else str(g) for g in table.column(group_by).to_pylist()]
    count = token_counter(tokenizer)
    ins_tok, res_tok = count(ins), count(res)
    ins_h, pair_h = hash64(ins), hash64(ins, res)
    key = str(seed).encode()[:64]  # blake2b keys are at most 64 bytes
    sample_keys = hash64(ins, key=key)
    rows_by_subset: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        rows_by_subset.setdefault(g, []).append(i)
    subsets = {}
    for g, rows in rows_by_subset.items():
        idx = np.array(rows)
        g_ins = [ins[i] for i in rows]
        subsets[g] = SubsetPartial(
            window=window,
            n_samples=len(rows),
            instruction_tokens=sum(ins_tok[i] for i in rows),
            response_tokens=sum(res_tok[i] for i in rows),
            instruction_hashes=np.unique(ins_h[idx]),
            pair_hashes=np.unique(pair_h[idx]),
            mattr_instruction=MattrState.of_texts(g_ins, window),
            mattr_response=MattrState.of_texts((res[i] for i in rows), window),
            sample=_bottom_k(sample_keys[idx], g_ins, sample_k),
        )
    return BlockSummary(subsets, MattrState.of_texts(ins, window), MattrState.of_texts(res, window))


class HashSet:
    """A set of ``uint64`` kept as one sorted unique array plus pending chunks (8 B per member)."""

    def __init__(self) -> None:
        self._unique = np.empty(0, np.uint64)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0

    def add(self, hashes: np.ndarray) -> None:
        self._pending.append(hashes)
        self._n_pending += len(hashes)
        # Compact when the pending hashes outgrow the set: amortised O(n log n), peak ~3x.
        if self._n_pending > max(len(self._unique), 1 << 16):
            self._compact()

    def _compact(self) -> None:
        if self._pending:
            self._unique = np.unique(np.concatenate([self._unique, *self._pending]))
            self._pending, self._n_pending = [], 0

    def values(self) -> np.ndarray:
        self._compact()
        return self._unique

    def __len__(self) -> int:
        return len(self.values())


@dataclass
class SubsetStats:
    """One row of Tables 1 and 2 (``avg_*`` in tokens per sample; ``mattr_*`` None under a window)."""

    subset: str
    samples: int
    instruction_tokens: int
    avg_instruction_length: float
    response_tokens: int
    avg_response_length: float
    unique_instructions: int
    unique_pairs: int
    mattr_instruction: float | None
    mattr_response: float | None
    mattr_instruction_tokens: int
    mattr_response_tokens: int

    def table1(self) -> dict:
        keys = ("subset", "samples", "instruction_tokens", "avg_instruction_length", "response_tokens",
                "avg_response_length", "unique_instructions", "unique_pairs")  # fmt: skip
        return {k: getattr(self, k) for k in keys}

    def table2(self) -> dict:
        keys = ("subset", "mattr_instruction", "mattr_response", "mattr_instruction_tokens", "mattr_response_tokens")
        return {k: getattr(self, k) for k in keys}


class _Running:
    """Driver-side running totals of one subset (or of the whole dataset)."""

    def __init__(self, window: int):
        self.n = self.ins_tokens = self.res_tokens = 0
        self.ins_hashes, self.pair_hashes = HashSet(), HashSet()
        self.mattr_ins, self.mattr_res = MattrState(window), MattrState(window)
        self.sample: dict[int, str] = {}

    def stats(self, name: str, unique_ins: int, unique_pairs: int) -> SubsetStats:
        avg = lambda tok: round(tok / self.n, 4) if self.n else 0.0  # noqa: E731
        return SubsetStats(
            name, self.n, self.ins_tokens, avg(self.ins_tokens), self.res_tokens, avg(self.res_tokens),
            unique_ins, unique_pairs, self.mattr_ins.value, self.mattr_res.value,
            self.mattr_ins.n_tokens, self.mattr_res.n_tokens,
        )  # fmt: skip


class StatsAccumulator:
    """Folds :class:`BlockSummary` objects (in stream order) into per-subset and total statistics."""

    def __init__(self, window: int, sample_k: int):
        self.window, self.sample_k = window, sample_k
        self.subsets: dict[str, _Running] = {}
        self.total = _Running(window)

    def add(self, block: BlockSummary) -> None:
        for name, p in block.subsets.items():
            r = self.subsets.setdefault(name, _Running(self.window))
            r.n += p.n_samples
            r.ins_tokens += p.instruction_tokens
            r.res_tokens += p.response_tokens
            r.ins_hashes.add(p.instruction_hashes)
            r.pair_hashes.add(p.pair_hashes)
            r.mattr_ins = r.mattr_ins.merge(p.mattr_instruction)
            r.mattr_res = r.mattr_res.merge(p.mattr_response)
            r.sample.update(p.sample)  # same key = same instruction: duplicates collapse
            if len(r.sample) > 2 * self.sample_k:  # keep the driver's share bounded
                r.sample = dict(sorted(r.sample.items())[: self.sample_k])
            self.total.n += p.n_samples
            self.total.ins_tokens += p.instruction_tokens
            self.total.res_tokens += p.response_tokens
        self.total.mattr_ins = self.total.mattr_ins.merge(block.total_instruction)
        self.total.mattr_res = self.total.mattr_res.merge(block.total_response)

    def finish(self) -> tuple[list[SubsetStats], SubsetStats]:
        """Per-subset rows (largest first, then by name) and the total row (unique = union over subsets)."""
        rows = [r.stats(n, len(r.ins_hashes), len(r.pair_hashes)) for n, r in self.subsets.items()]
        rows.sort(key=lambda s: (-s.samples, s.subset))
        union = lambda attr: len(np.unique(np.concatenate(  # noqa: E731
            [np.empty(0, np.uint64)] + [getattr(r, attr).values() for r in self.subsets.values()])))
        total = self.total.stats("total", union("ins_hashes"), union("pair_hashes"))
        return rows, total

    def samples(self, subset: str) -> list[str]:
        """The seeded sample of distinct instructions of ``subset`` (at most ``sample_k``), in key order."""
        items = sorted(self.subsets[subset].sample.items())[: self.sample_k]
        return [text for _, text in items]
