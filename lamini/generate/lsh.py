"""MinHash signatures and LSH banding that propose the pairs ROUGE-L must check.

    flat, lens = shingle_arrays(token_strs)              # "give three tips for staying healthy", ...
    sig = signatures(flat, lens, permutations(128, seed=0))
    prefix = prefix_index(flat, lens, threshold=0.7)
    bands, rows = lsh_params(128, lsh_threshold=0.3)     # (42, 3)
    index = BandIndex.build(sig, bands, rows)
    keys, stats = band_candidates(index, band, lengths, has_cand, 0.7, min_sketch_matches(128, 0.538), prefix)

Why an LSH on *multiset* unigram shingles is sound for ROUGE-L (:func:`min_jaccard_for_rouge`):
ROUGE-L F > t implies a multiset-token Jaccard J > t / (2 - t) (0.538 at t = 0.7), and a pair
at Jaccard J shares a band key with probability 1 - (1 - J^r)^b (0.9992 at 0.538 with the
default 42 x 3). Per band, pairs are then cut by three tests in numpy: two exact (the length
bound; inside huge buckets, sharing a prefix-filter shingle) and one probabilistic (signature
agreement, miss chance <= 1e-6 at the bound). Only the token hashing loops in Python.

Why not datasketch in the hot path (measured on the 5,175 seed + Alpaca instructions, 53k
shingles, one core; tests check the signatures equal): MinHash building took 0.19 s with
``update`` per shingle and 0.10 s with ``update_batch`` per text, against 0.05 s here (one
numpy block per 1,024 shingles of many texts, Mersenne reduction without division); and
``MinHashLSH`` insert + query of all texts took 0.85 s and hands back 1.0M unfiltered
(key, match) entries, against 0.16 s here for all 42 bands with dedup across bands and the
length and sketch filters. Above all, everything here is a numpy array: it ships to Ray tasks
as one buffer, where datasketch keeps one Python object per text.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MERSENNE = np.uint64((1 << 61) - 1)  # the (a*x + b) mod p family, as datasketch's legacy scheme
MAX_HASH = np.uint64((1 << 32) - 1)
SIG_CHUNK = 1_024  # shingles per vectorised block: (1024 x num_perm) uint64 temporaries of 1 MB stay
# in cache; 16k-shingle blocks (16 MB) ran 2.3x slower
PAIR_CHUNK = 32_768  # pairs filtered at once: (chunk x num_perm) byte arrays of 4 MB stay in the
# malloc heap; at 256k pairs every temporary was a fresh mmap and page faults doubled the time
BUCKET_CAP = 256  # buckets above this are split by prefix-filter shingles (and reported)
SKETCH_MISS = 1e-6  # chance the signature-agreement filter drops a pair at the Jaccard bound


def min_jaccard_for_rouge(threshold: float) -> float:
    """Smallest multiset-token Jaccard a pair with ROUGE-L F > ``threshold`` can have.

    LCS <= O, the multiset overlap of the token lists, so F = 2 LCS / (m + n) > t gives
    O > t (m + n) / 2, and J = O / (m + n - O) > (t / 2) / (1 - t / 2) = t / (2 - t).
    For t = 0.7: J > 0.538. The bound needs *multiset* shingles (token, occurrence): with
    plain token sets, "the the the the x" / "the the the the y" has F = 0.8 but J = 1/3.
    """
    return threshold / (2.0 - threshold)


def lsh_params(num_perm: int, lsh_threshold: float) -> tuple[int, int]:
    """(bands, rows) whose S-curve 1 - (1 - J^r)^b is centred on ``lsh_threshold``.

    For each r the most bands that fit, b = num_perm // r, and its S-curve midpoint
    (1/b)^(1/r); the r whose midpoint is nearest ``lsh_threshold`` wins. 128 perms at 0.3:
    r=3, b=42 (midpoint 0.288) catches J=0.538 (the worst case of ROUGE-L > 0.7) with
    p = 0.9992 and J=0.7 with p > 0.999999, where r=4, b=32 (midpoint 0.42) gives only
    0.94 at J=0.538. (datasketch's FP/FN-area optimum at 0.3 is b=37, r=3: same r, fewer bands.)
    """
    best = min(range(1, num_perm + 1), key=lambda r: abs((1.0 / (num_perm // r)) ** (1.0 / r) - lsh_threshold))
    return num_perm // best, best


def lsh_recall(jaccard: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard shares at least one band key."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def min_sketch_matches(num_perm: int, jaccard: float, miss: float = SKETCH_MISS) -> int:
    """Fewest agreeing signature positions a pair at ``jaccard`` shows, except with probability <= ``miss``.

    Agreements of a pair at Jaccard J are Binomial(num_perm, J) (128 perms, J=0.538: mean
    69, fewer than 42 with probability < 1e-6). Band candidates with fewer agreements are
    dropped before the exact ROUGE-L: of the LSH candidates among 20k Alpaca-like
    instructions, 95% estimate J < 0.3 (mostly shared stop words), and this test costs
    ~0.15 us per pair against ~2-4 us of LCS.
    """
    cdf = 0.0
    for k in range(num_perm + 1):
        p = math.comb(num_perm, k) * jaccard**k * (1.0 - jaccard) ** (num_perm - k)
        if cdf + p > miss:
            return k
        cdf += p
    return num_perm


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint64 arrays of the hash family h(x) = ((a x + b) mod (2^61 - 1)) & (2^32 - 1)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(1, int(MERSENNE), num_perm, dtype=np.uint64),
        rng.integers(0, int(MERSENNE), num_perm, dtype=np.uint64),
    )


def shingles(tokens: Sequence[str]) -> list[int]:
    """Multiset unigram shingles: the k-th occurrence of a token is the item "token#k" (k > 1).

    Hashed with CRC-32 (C speed, stable across processes, unlike hash()). A collision merges
    two items (chance 2^-32 per pair of distinct shingles): nearly always that only adds a
    candidate; the rare loss is far below the LSH's own miss rate.
    """
    seen: dict[str, int] = {}
    out = []
    for tok in tokens:
        k = seen.get(tok, 0) + 1
        seen[tok] = k
        out.append(zlib.crc32((tok if k == 1 else f"{tok}#{k}").encode()))
    return out


def shingle_arrays(token_strs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Shingle ids of space-joined token strings: (flat uint64 ids, per-text counts int64)."""
    lens = np.zeros(len(token_strs), dtype=np.int64)
    flat: list[int] = []
    for i, s in enumerate(token_strs):
        sh = shingles(s.split())
        lens[i] = len(sh)
        flat.extend(sh)
    return np.asarray(flat, dtype=np.uint64), lens


def signatures(flat: np.ndarray, lens: np.ndarray, perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32 from :func:`shingle_arrays` output.

    One numpy expression per block of shingles, then ``np.minimum.reduceat`` per text. The
    values equal datasketch ``MinHash(scheme="legacy", permutations=perms)`` fed the same
    shingle ids. A text with no shingles keeps the all-MAX signature (callers skip them).
    """
    a, b = perms
    n, num_perm = len(lens), len(a)
    x = flat.astype(np.uint64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    sig = np.full((n, num_perm), int(MAX_HASH), dtype=np.uint32)
    doc = 0
    while doc < n:
        end = min(n, max(doc + 1, int(np.searchsorted(offsets, offsets[doc] + SIG_CHUNK, side="right")) - 1))
        nz = lens[doc:end] > 0
        if nz.any():
            seg = x[offsets[doc] : offsets[end]]
            # uint64 products wrap mod 2^64 before the mod p, exactly like datasketch's legacy scheme.
            h = np.multiply(seg[:, None], a[None, :])
            h += b
            # x mod (2^61 - 1) = (x & p) + (x >> 61), minus p once if still >= p: 3x faster than %.
            hi = h >> np.uint64(61)
            h &= MERSENNE
            h += hi
            h -= MERSENNE * (h >= MERSENNE)
            h &= MAX_HASH
            block = np.minimum.reduceat(h, offsets[doc:end][nz] - offsets[doc], axis=0)
            sig[doc:end][nz] = block.astype(np.uint32)
        doc = end
    return sig


def signatures_from_token_strs(token_strs: Sequence[str], perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32 of space-joined token strings."""
    return signatures(*shingle_arrays(token_strs), perms)


def prefix_index(flat: np.ndarray, lens: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Prefix-filter tokens of each text: (flat global shingle ids int64, offsets (n + 1,)).

    The exact filter of set-similarity joins (Chaudhuri et al. 2006), used to split huge LSH
    buckets without losing a pair: order all shingles rarest first; a text with s distinct
    shingles keeps its first s - o + 1, where o = ceil(s * t / (2 - t)) is the least overlap
    any partner above ROUGE-L t can have (:func:`min_jaccard_for_rouge`: O > (t / (2 - t)) *
    tokens >= (t / (2 - t)) * s). Two texts with that overlap share a shingle of their
    prefixes; pairs that share none cannot exceed t (up to CRC-32 collisions, see :func:`shingles`).
    """
    n = len(lens)
    doc = np.repeat(np.arange(n, dtype=np.int64), lens)
    o = np.lexsort((flat, doc))
    flat, doc = flat[o], doc[o]
    keep = np.concatenate([[True], (flat[1:] != flat[:-1]) | (doc[1:] != doc[:-1])]) if len(flat) else np.zeros(0, bool)
    flat, doc = flat[keep], doc[keep]  # a set per text (CRC collisions inside a text are merged)
    so = np.argsort(flat, kind="stable")
    first = np.concatenate([[True], flat[so][1:] != flat[so][:-1]]) if len(flat) else np.zeros(0, bool)
    gid = np.empty(len(flat), dtype=np.int64)
    gid[so] = np.cumsum(first) - 1
    freq = np.bincount(gid)[gid]
    o = np.lexsort((gid, freq, doc))  # per text, rarest first (ties by id: one global order)
    gid, doc = gid[o], doc[o]
    size = np.bincount(doc, minlength=n)
    tb = min_jaccard_for_rouge(threshold)
    # -1e-9: where s * t / (2 - t) is an integer (or float rounding says so) keep one more shingle.
    plen = np.where(size > 0, size - np.maximum(1, np.ceil(size * tb - 1e-9).astype(np.int64)) + 1, 0)
    starts = np.concatenate([[0], np.cumsum(size)[:-1]])
    take = np.arange(len(gid)) - starts[doc] < plen[doc]
    return gid[take], np.concatenate([[0], np.cumsum(plen)])


def band_key(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """(n,) uint64: the ``rows`` signature values of one band folded into one key.

    rows <= 2 pack exactly; more rows are mixed by multiply-xor, whose rare collisions only
    add candidate pairs (every pair is checked afterwards).
    """
    cols = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
    key = cols[:, 0].copy()
    for j in range(1, rows):
        key = (key << np.uint64(32)) | cols[:, j] if rows <= 2 else (key * np.uint64(0x9E3779B97F4A7C15)) ^ cols[:, j]
    return key


def sketch8(sig: np.ndarray) -> np.ndarray:
    """One byte per signature value (b-bit MinHash, b = 8): 4x less memory to gather per pair.

    The top byte of value * 2654435761 (Fibonacci hashing), not the low byte: the low bits
    of (a x + b) mod 2^64 depend only on the low bits of x, so low bytes of different
    minima agree far more often than 1/256 (measured: 3-band false collisions ~500x too many).
    """
    return ((sig.astype(np.uint32) * np.uint32(2654435761)) >> np.uint32(24)).astype(np.uint8)


def _pairs_within(order: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """All pairs (a < b) inside each group order[s:e], as int64 keys a << 32 | b, with no Python loop."""
    sizes = ends - starts
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.repeat(starts, sizes) + (np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    cnt = np.repeat(ends, sizes) - 1 - pos  # partners after each member in its group
    n_pairs = int(cnt.sum())
    first = np.repeat(pos, cnt)
    second = first + 1 + (np.arange(n_pairs) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    a, b = order[first], order[second]
    return (np.minimum(a, b) << 32) | np.maximum(a, b)


def _band_pair_chunks(key: np.ndarray, bucket_cap: int, prefix: tuple[np.ndarray, np.ndarray], stats: dict):
    """Yield int64 pair keys of one band in chunks of about ``PAIR_CHUNK`` (sort-based grouping).

    Buckets of at most ``bucket_cap`` texts give all their pairs. Bigger ones (a few very
    common shingles: at 100k Alpaca-like texts, 43 buckets of 1,000+ texts held 57% of all
    pairs) give only pairs that also share a prefix-filter shingle (:func:`prefix_index`),
    which loses no pair above the threshold: their cost follows the pairs that share a rarer
    shingle, not the square of the bucket. (A pair skipped here and met again in a later band
    is dropped there as already seen; it can not exceed the threshold either way.)
    """
    n = len(key)
    order = np.argsort(key, kind="stable").astype(np.int64)
    ks = key[order]
    brk = np.flatnonzero(ks[1:] != ks[:-1]) + 1
    starts, ends = np.concatenate([[0], brk]), np.concatenate([brk, [n]])
    sizes = ends - starts
    stats["max_bucket"] = max(stats.get("max_bucket", 0), int(sizes.max()) if n else 0)
    small = (sizes >= 2) & (sizes <= bucket_cap)
    s_starts, s_ends = starts[small], ends[small]
    cum = np.cumsum((sizes[small] * (sizes[small] - 1)) // 2)
    lo = 0
    while lo < len(s_starts):  # whole groups per chunk, cut where the running pair count crosses a chunk
        hi = max(lo + 1, int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + PAIR_CHUNK, side="right")))
        yield _pairs_within(order, s_starts[lo:hi], s_ends[lo:hi])
        lo = hi
    big = np.flatnonzero(sizes > bucket_cap)
    stats.setdefault("large_buckets", []).extend(sizes[big].tolist())
    pflat, poff = prefix
    for bi in big.tolist():  # one bucket at a time: (member, prefix shingle) entries, grouped by shingle
        members = order[starts[bi] : ends[bi]]
        cnt = poff[members + 1] - poff[members]
        ent_doc = np.repeat(members, cnt)
        ent = np.repeat(poff[members], cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        o = np.argsort(pflat[ent], kind="stable")
        g = pflat[ent][o]
        brk2 = np.flatnonzero(g[1:] != g[:-1]) + 1
        gs, ge = np.concatenate([[0], brk2]), np.concatenate([brk2, [len(g)]])
        multi = ge - gs >= 2
        # A pair sharing several prefix shingles comes once per shingle: unique_sorted.
        keys = unique_sorted(_pairs_within(ent_doc[o], gs[multi], ge[multi]))
        stats["large_bucket_pairs"] = stats.get("large_bucket_pairs", 0) + int(sizes[bi]) * (int(sizes[bi]) - 1) // 2
        stats["large_bucket_prefix_pairs"] = stats.get("large_bucket_prefix_pairs", 0) + len(keys)
        for c in range(0, len(keys), PAIR_CHUNK):
            yield keys[c : c + PAIR_CHUNK]


@dataclass
class BandIndex:
    """What the per-band pass gathers per pair, built once from the signatures.

    keys: (n, bands) uint64 band keys (exact re-check); key16: (n, bands) uint16 hashes of
    them (the cheap first test of "did this pair collide in an earlier band?", 84 bytes per
    text instead of 504 of signature); sketch: (n, num_perm) uint8 (:func:`sketch8`).
    """

    keys: np.ndarray
    key16: np.ndarray
    sketch: np.ndarray

    @classmethod
    def build(cls, sig: np.ndarray, bands: int, rows: int) -> "BandIndex":
        keys = np.zeros((len(sig), bands), np.uint64)
        for band in range(bands):
            keys[:, band] = band_key(sig, band, rows)
        key16 = ((keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(48)).astype(np.uint16)
        return cls(keys, key16, sketch8(sig))


def band_candidates(
    index: BandIndex,
    band: int,
    lengths: np.ndarray,
    has_cand: np.ndarray,
    threshold: float,
    min_matches: int,
    prefix: tuple[np.ndarray, np.ndarray],
    bucket_cap: int = BUCKET_CAP,
) -> tuple[np.ndarray, dict]:
    """Pairs sharing the key of ``band`` that survive the cheap filters, as int64 keys a << 32 | b.

    index: :class:`BandIndex` of the distinct texts; lengths: their token counts; has_cand:
    whether a text is (also) a candidate, since reference-reference pairs never matter.
    prefix: :func:`prefix_index` output, to split buckets above ``bucket_cap``.
    A pair is returned by the first band it collides in only, so the bands' outputs are
    disjoint. Filters, in order: reference-only pairs; the exact length bound
    2 min(la, lb) / (la + lb) > threshold (F can not exceed it); ``min_matches`` agreeing
    signature bytes. Returns (keys, stats): pairs generated, distinct (first band is this
    one), and what each filter left.
    """
    stats = {"generated": 0, "distinct": 0, "length_pass": 0, "sketch_pass": 0}
    out = []
    for keys in _band_pair_chunks(index.keys[:, band], bucket_cap, prefix, stats):
        if not len(keys):
            continue
        a, b = keys >> 32, keys & 0xFFFFFFFF
        stats["generated"] += len(keys)
        # Each distinct pair is kept once, in the first band it collides in: equal 16-bit
        # key hashes in an earlier band flag it (all true repeats, plus 1/65536 false
        # alarms per band), and only the flagged ones are re-checked on the 64-bit keys.
        ok = np.ones(len(keys), dtype=bool)
        if band:
            e16 = np.take(index.key16, a, axis=0)[:, :band] == np.take(index.key16, b, axis=0)[:, :band]
            idx = np.flatnonzero(e16.view(np.uint8).sum(axis=1, dtype=np.uint16))  # 1.6x faster than any()
            if len(idx):
                ea = np.take(index.keys, a[idx], axis=0)[:, :band] == np.take(index.keys, b[idx], axis=0)[:, :band]
                ok[idx[ea.any(axis=1)]] = False
        stats["distinct"] += int(np.count_nonzero(ok))
        la, lb = lengths[a], lengths[b]
        # The 1e-9 margin keeps pairs whose bound is within float rounding of the threshold,
        # so they get the exact float F like rouge_score.
        ok &= (has_cand[a] | has_cand[b]) & (2 * np.minimum(la, lb) / (la + lb) > threshold - 1e-9)
        stats["length_pass"] += int(np.count_nonzero(ok))
        keys, a, b = keys[ok], a[ok], b[ok]
        eq = np.take(index.sketch, a, axis=0) == np.take(index.sketch, b, axis=0)
        # Agreements per pair (a uint8 sum: 2x faster than count_nonzero(axis=1)). False byte
        # matches only add agreements, so the test stays conservative.
        keep = eq.view(np.uint8).sum(axis=1, dtype=np.uint16) >= min_matches
        stats["sketch_pass"] += int(np.count_nonzero(keep))
        out.append(keys[keep])
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.int64)), stats


def unique_sorted(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array by sort + neighbour compare.

    numpy 2.4's hash-based ``np.unique`` took 38 s CPU on 20M random int64 here; this, 0.3 s.
    """
    if not len(keys):
        return keys
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
