"""Moving-average type-token ratio (MATTR, Covington & McFall 2010), exact and streaming.

Definition used for Table 2. A subset's MATTR is computed over the **concatenated token stream**
of its texts, in dataset order (instructions and responses separately): for window ``w`` (paper:
50) and a stream of ``n >= w`` tokens, it is the mean over the ``n - w + 1`` windows
``tokens[s : s + w]`` of ``distinct(window) / w``. This is what ``lexicalrichness`` computes for
``LexicalRichness(" ".join(texts)).mattr(window_size=w)``; a stream shorter than ``w`` has no
MATTR (``None`` here; lexicalrichness raises).

Tokens are those of :func:`mattr_tokens`, which reproduces lexicalrichness 0.5's default
``preprocess`` + ``tokenize``: lowercase, delete ASCII digits and the dashes ``- – —`` (deleted,
not spaced: "well-known" -> "wellknown"), turn every other ``string.punctuation`` character into
a space, split on whitespace. Whatever tokenizer Table 1 uses, Table 2 always uses this one, so
our values are comparable with other lexicalrichness-based reports.

Streaming. :class:`MattrState` summarises one contiguous piece of a stream: its token count, the
sum of distinct counts over the windows that lie wholly inside it, the number of such windows,
and its first and last ``w - 1`` tokens. Two adjacent pieces merge exactly: the windows that
cross their boundary are exactly the windows of ``left.tail + right.head`` (at most
``2(w - 1)`` tokens). So blocks are summarised in parallel (Ray Data ``map_batches``) and merged
on the driver in stream order: O(n) work in all, O(w) memory per stream on the driver, and the
result equals the one-pass value bit for bit (all sums are integers; one division at the end).
No sampling is needed, so none is done.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

# One translate table does lexicalrichness' three steps at once: all its rules map single
# characters, so applying them together after lower() gives the same string.
_DELETE = {ord(c): None for c in "0123456789-–—"}
_SPACE = {ord(c): " " for c in string.punctuation if c != "-"}
_TABLE = {**_DELETE, **_SPACE}


def mattr_tokens(text: str | None) -> list[str]:
    """Text in, lexicalrichness-compatible tokens out (``None`` counts as the empty text)."""
    if not text:
        return []
    return text.lower().translate(_TABLE).split()


def window_distinct_sum(tokens: Sequence[str], window: int) -> tuple[int, int]:
    """Tokens in, ``(sum over windows of distinct types, number of windows)`` out.

    Vectorised rather than a sliding counter: token ``i`` adds one distinct type to every window
    that contains it and does not contain its previous occurrence ``p[i]``. Those windows start
    at ``s`` in ``[max(0, i - w + 1, p[i] + 1), min(i, n - w)]``, so the total is a sum of
    interval lengths, computed with one stable argsort (O(n log n) in C, not a Python loop).
    """
    n = len(tokens)
    if n < window:
        return 0, 0
    vocab: dict[str, int] = {}
    ids = np.fromiter((vocab.setdefault(t, len(vocab)) for t in tokens), dtype=np.int64, count=n)
    order = np.argsort(ids, kind="stable")  # equal ids stay in stream order
    prev = np.full(n, -1, dtype=np.int64)
    same = ids[order[1:]] == ids[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    i = np.arange(n, dtype=np.int64)
    lo = np.maximum(np.maximum(i - window + 1, prev + 1), 0)
    hi = np.minimum(i, n - window)
    return int(np.clip(hi - lo + 1, 0, None).sum()), n - window + 1


@dataclass
class MattrState:
    """Mergeable MATTR summary of one contiguous piece of a token stream (see module docstring)."""

    window: int
    n_tokens: int = 0
    distinct_sum: int = 0  # sum of distinct types over the windows wholly inside the piece
    n_windows: int = 0
    head: list[str] = field(default_factory=list)  # first min(n, w - 1) tokens
    tail: list[str] = field(default_factory=list)  # last min(n, w - 1) tokens

    @classmethod
    def of_tokens(cls, tokens: Sequence[str], window: int) -> "MattrState":
        """A token list in, its summary out."""
        if window < 2:
            raise ValueError(f"MATTR window must be >= 2, got {window}")
        s, nw = window_distinct_sum(tokens, window)
        keep = window - 1
        return cls(window, len(tokens), s, nw, list(tokens[:keep]), list(tokens[-keep:]) if tokens else [])

    @classmethod
    def of_texts(cls, texts: Iterable[str | None], window: int) -> "MattrState":
        """Texts in (stream order), the summary of their concatenated :func:`mattr_tokens` out."""
        tokens: list[str] = []
        for t in texts:
            tokens.extend(mattr_tokens(t))
        return cls.of_tokens(tokens, window)

    def merge(self, right: "MattrState") -> "MattrState":
        """``self`` followed by ``right`` -> the summary of the two pieces joined (a new object)."""
        if right.window != self.window:
            raise ValueError(f"cannot merge MATTR windows {self.window} and {right.window}")
        if right.n_tokens == 0:
            return self
        if self.n_tokens == 0:
            return right
        keep = self.window - 1
        # Both sides hold at most w - 1 tokens here, so no window of `bridge` lies wholly on
        # one side: all its windows are the boundary-crossing ones, counted exactly once.
        cross_sum, cross_n = window_distinct_sum(self.tail + right.head, self.window)
        return MattrState(
            window=self.window,
            n_tokens=self.n_tokens + right.n_tokens,
            distinct_sum=self.distinct_sum + right.distinct_sum + cross_sum,
            n_windows=self.n_windows + right.n_windows + cross_n,
            # A piece shorter than w - 1 has head == tail == all its tokens, so these stay exact.
            head=(self.head + right.head)[:keep],
            tail=(self.tail + right.tail)[-keep:],
        )

    @property
    def value(self) -> float | None:
        """The MATTR of the piece, or ``None`` when it has fewer tokens than the window."""
        if self.n_windows == 0:
            return None
        return self.distinct_sum / (self.window * self.n_windows)

    def to_dict(self) -> dict:
        """JSON-able numbers (no tokens) for the report."""
        return {"window": self.window, "tokens": self.n_tokens, "windows": self.n_windows, "mattr": self.value}


def mattr(texts: Iterable[str | None], window: int = 50) -> float | None:
    """Texts in, the MATTR of their concatenated token stream out (``None`` if under ``window`` tokens)."""
    return MattrState.of_texts(texts, window).value
