"""ROUGE-L exactly as Google's ``rouge_score`` computes it, made fast enough for millions of pairs.

    from lamini.generate.dedup.rouge import tokenize, rouge_l_f
    rouge_l_f(tokenize("Give three tips for staying healthy."), tokenize("Give 3 tips for staying healthy"))

Alpaca and self-instruct drop a generated instruction when
``RougeScorer(["rougeL"], use_stemmer=False)`` gives it an F-measure above 0.7 against any
seed or accepted instruction. This module reproduces that number bit for bit (same
tokenizer, same float expression for F) without depending on ``rouge_score`` (tests compare
against it).

Why not the DP table: ``rouge_score`` fills an (m+1) x (n+1) Python list table per pair, and
even a tight Python DP takes m x n interpreted steps. The bit-parallel LCS below (Hyyro 2004 /
Crochemore et al. 2001) keeps one row of the table as the bits of a Python int and advances a
whole row per token of the other text with four big-int operations: an order of magnitude
faster per pair (benchmarks/README.md), exact, for any length (Python ints grow as needed, so
long texts need no 64-bit word splitting).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

# The rouge_score default tokenizer: lowercase (Python's full Unicode lower(), so e.g. the
# Kelvin sign becomes "k" there and here), every run of non [a-z0-9] characters becomes a
# space, split, drop empties. No stemming: Alpaca uses use_stemmer=False.
_NON_ALPHANUM = re.compile(r"[^a-z0-9]+")

Masks = dict[str, int]


def tokenize(text: str) -> list[str]:
    """Text -> lowercase [a-z0-9]+ tokens, identical to ``rouge_score.tokenize.tokenize(text, None)``."""
    # After the substitution only [a-z0-9 ] remain, so str.split() equals rouge_score's
    # re.split(r"\s+") followed by dropping empty / invalid tokens.
    return _NON_ALPHANUM.sub(" ", text.lower()).split()


def match_masks(tokens: Sequence[str]) -> Masks:
    """Token -> bitmask of the positions where it occurs in ``tokens`` (bit i = position i).

    Build it once per text and reuse it for every pair that text is part of.
    """
    masks: Masks = {}
    for i, tok in enumerate(tokens):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def lcs_length_masks(a_masks: Masks, a_len: int, b_tokens: Sequence[str]) -> int:
    """Length of the longest common subsequence of text a (as ``match_masks``) and ``b_tokens``.

    V holds one DP row as bits: a 0 at bit i marks a step up of the LCS along a. For each
    token of b, ``U = V & M`` picks the positions where it matches and
    ``V = (V + U) | (V - U)`` moves each matched step to the next match (the carry does
    the "max" of the DP). The LCS is the number of zeros in the low ``a_len`` bits. Carries
    past bit ``a_len`` never come back down (addition carries only upward), so the extra
    high bits are harmless and masked off at the end.
    """
    full = (1 << a_len) - 1
    v = full
    get = a_masks.get
    for tok in b_tokens:
        m = get(tok)
        if m:  # a token absent from a leaves the row unchanged: skip the four operations
            u = v & m
            v = (v + u) | (v - u)
    return a_len - (v & full).bit_count()


def lcs_length(a_tokens: Sequence[str], b_tokens: Sequence[str]) -> int:
    """LCS length of two token lists (the loop runs over the shorter one, the bit row holds the longer)."""
    if len(a_tokens) < len(b_tokens):
        a_tokens, b_tokens = b_tokens, a_tokens
    # Iterate over the shorter list and keep the longer as the bit row: the loop count is what
    # costs in Python; the width of the int barely matters below a few hundred tokens.
    return lcs_length_masks(match_masks(a_tokens), len(a_tokens), b_tokens)


def f_from_lcs(lcs: int, a_len: int, b_len: int) -> float:
    """ROUGE-L F from the LCS length, with rouge_score's exact float expression.

    rouge_score: precision = lcs / len(prediction), recall = lcs / len(target),
    F = 2PR / (P + R), and 0 when either text has no tokens. 2PR/(P+R) is symmetric in
    float arithmetic too (both * and + commute), so the argument order does not matter.
    """
    if a_len == 0 or b_len == 0 or lcs == 0:
        return 0.0
    p = lcs / b_len
    r = lcs / a_len
    return 2 * p * r / (p + r)


def rouge_l_f(a_tokens: Sequence[str], b_tokens: Sequence[str]) -> float:
    """ROUGE-L F-measure of two token lists (from :func:`tokenize`), equal to rouge_score's."""
    if not a_tokens or not b_tokens:
        return 0.0
    return f_from_lcs(lcs_length(a_tokens, b_tokens), len(a_tokens), len(b_tokens))


def rouge_l_f_text(a: str, b: str) -> float:
    """ROUGE-L F of two raw texts: ``rouge_l_f(tokenize(a), tokenize(b))``."""
    return rouge_l_f(tokenize(a), tokenize(b))


def max_f_for_lengths(a_len: int, b_len: int) -> float:
    """Upper bound of ROUGE-L F for texts of these token counts: LCS <= min(a_len, b_len).

    F = 2 * LCS / (a_len + b_len) (algebraically), so texts whose lengths differ by more than
    a factor (2 - t) / t can never exceed threshold t: the exact length filter used before
    any LCS is computed.
    """
    if a_len == 0 or b_len == 0:
        return 0.0
    return 2 * min(a_len, b_len) / (a_len + b_len)


def verify_pairs(pairs: np.ndarray, token_strs: Sequence[str], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact ROUGE-L of pairs of texts; only the pairs above ``threshold`` come back.

    pairs: (k, 2) int64 indices into ``token_strs`` (space-joined tokens), best sorted by the
    first column so each text's bit masks are built once. Returns (edges (e, 2), scores (e,)).
    The LCS loop of :func:`lcs_length_masks` is inlined: a function call per pair costs a large
    share of the pair's work.
    """
    out_pairs: list[tuple[int, int]] = []
    out_scores: list[float] = []
    split: dict[int, list[str]] = {}
    prev, get, la, full = -1, {}.get, 0, 0
    for a, b in pairs.tolist():
        if a != prev:
            ta = token_strs[a].split()
            prev, get, la, full = a, match_masks(ta).get, len(ta), (1 << len(ta)) - 1
        tb = split.get(b)
        if tb is None:
            tb = split[b] = token_strs[b].split()
        v = full
        for tok in tb:
            m = get(tok)
            if m:
                u = v & m
                v = (v + u) | (v - u)
        lcs = la - (v & full).bit_count()
        f = f_from_lcs(lcs, la, len(tb))
        if f > threshold:
            out_pairs.append((a, b))
            out_scores.append(f)
    return np.asarray(out_pairs, dtype=np.int64).reshape(-1, 2), np.asarray(out_scores, dtype=np.float64)
