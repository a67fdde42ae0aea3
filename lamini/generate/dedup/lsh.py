"""MinHash signatures and LSH banding that propose the pairs ROUGE-L must check.

    flat, lens = shingle_arrays(token_strs)              # "give three tips for staying healthy", ...
    sig = signatures(flat, lens, permutations(128, seed=0))
    sets = ShingleSets.build(flat, lens)
    prefix = prefix_index(sets, threshold=0.7)
    bands, rows = lsh_params(128, lsh_threshold=0.3)     # (42, 3)
    index = BandIndex.build(sig, bands, rows)
    keys, stats = band_candidates(index, band, lengths, has_cand, 0.7, sketch_thresholds(128, 0.538), prefix)
    keep = overlap_pass(pairs, sets, lengths, 0.7)       # the survivors of all bands, deduplicated

Why an LSH on *multiset* unigram shingles is sound for ROUGE-L (:func:`min_jaccard_for_rouge`):
ROUGE-L F > t implies a multiset-token Jaccard J > t / (2 - t) (0.538 at t = 0.7), and a pair
at Jaccard J shares a band key with probability 1 - (1 - J^r)^b (0.9992 at 0.538 with the
default 42 x 3). Per band, pairs are then cut by three tests in numpy: two exact (the length
bound; inside buckets above ``BUCKET_CAP``, sharing a prefix-filter shingle) and one
probabilistic (signature agreement in two stages, miss chance <= 1e-4 at the bound, 8x below
the bands' own). The survivors of all bands, deduplicated, meet one more exact test, the
multiset overlap bound (:func:`overlap_pass`), before the LCS. Only the token hashing loops
in Python.

Each band collision meets the cheap tests first, so few pairs reach the costly ones: no dedup
across bands before the tests (checking each pair's earlier band keys cost more than the sketch
tests it spared); the sketch read in two stages (the first half of the bytes rejects most
collisions); the overlap bound in numpy before the Python LCS, which costs several times more per
pair; a sketch miss of 1e-4 rather than 1e-6 (far fewer distinct pairs get through). The pair
counts at each step and the time of each choice are in benchmarks/README.md (bench_dedup).

Why not datasketch in the hot path (tests check the signatures equal): its MinHash hashes text
by text in Python and ``MinHashLSH`` hands back every (key, match) entry unfiltered, where this
module hashes numpy blocks of many texts (Mersenne reduction without division) and filters
each band's pairs in numpy; both were several times slower (benchmarks/README.md). Above all,
everything here is a numpy array: it ships to Ray tasks as one buffer, where datasketch keeps
one Python object per text.
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
# in cache, where much larger blocks fall out of it
PAIR_CHUNK = 32_768  # pairs filtered at once: (chunk x num_perm) byte arrays of 4 MB stay in the
# malloc heap; much larger temporaries are fresh mmaps each, and their page faults cost more than the work
BUCKET_CAP = 64  # buckets above this are split by prefix-filter shingles (and reported); 64 rather
# than 256 gives fewer pairs and a faster LSH phase (bench_dedup)
# Chance the signature-agreement test drops a pair at the Jaccard bound: 8x below the bands' own
# miss there (8e-4 at 42 x 3), so recall at the bound stays 0.999. A smaller miss lets several
# times more distinct pairs through to the overlap bound and the LCS.
SKETCH_MISS = 1e-4


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
    dropped before the exact ROUGE-L: most LSH candidates among Alpaca-like instructions share
    little but stop words (estimated J far below the bound), and this test costs a small
    fraction of an LCS per pair.
    """
    cdf = 0.0
    for k in range(num_perm + 1):
        p = math.comb(num_perm, k) * jaccard**k * (1.0 - jaccard) ** (num_perm - k)
        if cdf + p > miss:
            return k
        cdf += p
    return num_perm


def sketch_thresholds(num_perm: int, jaccard: float, miss: float = SKETCH_MISS) -> tuple[int, int]:
    """(head, total): agreements a pair must show in the first ``num_perm // 2`` sketch bytes, then in all.

    A sequential form of :func:`min_sketch_matches`, each stage allowed half the miss chance
    (union bound: a pair at ``jaccard`` is dropped with probability <= ``miss``). 128 perms at
    0.538 and a miss of 1e-4: >= 19 of the first 64, then >= 47 of 128. The head test reads half
    the bytes and already rejects most band collisions (most estimate a Jaccard far below the
    bound).
    """
    head = num_perm // 2
    return min_sketch_matches(head, jaccard, miss / 2), min_sketch_matches(num_perm, jaccard, miss / 2)


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
            # x mod (2^61 - 1) = (x & p) + (x >> 61), minus p once if still >= p: no division, unlike %.
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


@dataclass
class ShingleSets:
    """Each text's distinct shingles as dense int64 ids, ascending, in one flat array.

    ids[offsets[i]:offsets[i + 1]] belong to text i; an id is the shingle's rank in one
    global order, rarest first (ties by CRC value), so a text's slice starts with its rarest
    shingles. keys = text * vocab + id, sorted: a (text, shingle) lookup is one searchsorted.
    """

    ids: np.ndarray
    offsets: np.ndarray
    vocab: int
    keys: np.ndarray

    @classmethod
    def build(cls, flat: np.ndarray, lens: np.ndarray) -> "ShingleSets":
        """From :func:`shingle_arrays` output. One argsort of the ids and one sort of int64 keys
        (cheaper than the three lexsorts it replaced)."""
        n = len(lens)
        if not len(flat):
            return cls(np.zeros(0, np.int64), np.zeros(n + 1, np.int64), 1, np.zeros(0, np.int64))
        o = np.argsort(flat)  # no need for stable: equal ids get one gid either way
        first = np.concatenate([[True], flat[o][1:] != flat[o][:-1]])
        gid = np.empty(len(flat), dtype=np.int64)
        gid[o] = np.cumsum(first) - 1
        v = int(gid[o[-1]]) + 1
        # Counted per entry, not per text: they differ only where CRC-32 merges two shingles of
        # one text, and any one global order keeps the prefix filter exact.
        freq = np.bincount(gid, minlength=v)
        rank = np.empty(v, dtype=np.int64)
        rank[np.lexsort((np.arange(v), freq))] = np.arange(v)
        key = np.sort(np.repeat(np.arange(n, dtype=np.int64), lens) * v + rank[gid])
        key = key[np.concatenate([[True], key[1:] != key[:-1]])]  # a set per text (CRC collisions merged)
        doc = key // v
        offsets = np.concatenate([[0], np.cumsum(np.bincount(doc, minlength=n))])
        return cls(key - doc * v, offsets, v, key)

    def overlaps(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """|S_a & S_b| per pair: every shingle of a looked up in b's slice of the sorted keys."""
        cnt = np.diff(self.offsets)[a]
        if not cnt.sum():
            return np.zeros(len(a), np.int64)
        q = np.repeat(b, cnt) * self.vocab + self.ids[_ranges(self.offsets[a], cnt)]
        keys = self.keys
        hit = keys[np.minimum(np.searchsorted(keys, q), len(keys) - 1)] == q
        return np.bincount(np.repeat(np.arange(len(a)), cnt), weights=hit, minlength=len(a)).astype(np.int64)


def prefix_index(sets: ShingleSets, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Prefix-filter tokens of each text: (flat global shingle ids int64, offsets (n + 1,)).

    The exact filter of set-similarity joins (Chaudhuri et al. 2006), used to split huge LSH
    buckets without losing a pair: order all shingles rarest first; a text with s distinct
    shingles keeps its first s - o + 1, where o = ceil(s * t / (2 - t)) is the least overlap
    any partner above ROUGE-L t can have (:func:`min_jaccard_for_rouge`: O > (t / (2 - t)) *
    tokens >= (t / (2 - t)) * s). Two texts with that overlap share a shingle of their
    prefixes; pairs that share none cannot exceed t (up to CRC-32 collisions, see :func:`shingles`).
    """
    size = np.diff(sets.offsets)
    tb = min_jaccard_for_rouge(threshold)
    # -1e-9: where s * t / (2 - t) is an integer (or float rounding says so) keep one more shingle.
    plen = np.where(size > 0, size - np.maximum(1, np.ceil(size * tb - 1e-9).astype(np.int64)) + 1, 0)
    doc = np.repeat(np.arange(len(size), dtype=np.int64), size)
    take = np.arange(len(sets.ids)) - sets.offsets[:-1][doc] < plen[doc]
    return sets.ids[take], np.concatenate([[0], np.cumsum(plen)])


def overlap_pass(pairs: np.ndarray, sets: ShingleSets, lengths: np.ndarray, threshold: float) -> np.ndarray:
    """Mask of the pairs whose exact overlap bound allows ROUGE-L F > ``threshold``.

    LCS <= O, the multiset-token overlap (= |S_a & S_b| of multiset shingles), so
    F = 2 LCS / (m + n) > t needs 2 O > t (m + n). The LSH candidates the sketch lets through
    mostly sit below the Jaccard bound (0.538), so this vectorised test, a fraction of an LCS per
    pair, leaves only a few of them for the Python LCS.
    Sound up to CRC-32 collisions inside one text (see :func:`shingles`), like the prefix filter.
    """
    if not len(pairs):
        return np.zeros(0, dtype=bool)
    a, b = pairs[:, 0], pairs[:, 1]
    size = np.diff(sets.offsets)
    swap = size[a] > size[b]  # look up the smaller set's shingles
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    out = np.empty(len(pairs), dtype=bool)
    for s in range(0, len(pairs), 1 << 18):  # bounded temporaries: ~13 lookups per pair
        part = slice(s, s + (1 << 18))
        o = sets.overlaps(a[part], b[part])
        # The 1e-9 margin: a pair whose bound is within float rounding of t gets its exact F.
        out[part] = 2 * o > (threshold - 1e-9) * (lengths[a[part]] + lengths[b[part]])
    return out


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
    minima agree far more often than 1/256, and false band collisions multiply.
    """
    return ((sig.astype(np.uint32) * np.uint32(2654435761)) >> np.uint32(24)).astype(np.uint8)


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The int64 ranges [starts[k], starts[k] + counts[k]) one after another, with no Python loop."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.repeat(starts, counts) + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))


def _pairs_within(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All position pairs (i < j) inside each range [s, e), as two int64 arrays, with no Python loop."""
    sizes = ends - starts
    pos = _ranges(starts, sizes)
    cnt = np.repeat(ends, sizes) - 1 - pos  # partners after each member in its group
    return np.repeat(pos, cnt), _ranges(pos + 1, cnt)


def _band_pair_chunks(
    order: np.ndarray, ks: np.ndarray, bucket_cap: int, prefix: tuple[np.ndarray, np.ndarray], stats: dict
):
    """Yield the pairs of one band in chunks of about ``PAIR_CHUNK``: (i, j) positions in ``order``.

    order: the texts sorted by their band key; ks: the keys in that order. Positions, not
    text ids, so the caller reads per-pair data from arrays in bucket order, where a bucket's
    members are neighbours.

    Buckets of at most ``bucket_cap`` texts give all their pairs. Bigger ones (a few very
    common shingles, whose few buckets hold most of the pairs in Alpaca-like text) give only pairs that also share a prefix-filter shingle (:func:`prefix_index`),
    which loses no pair above the threshold: their cost follows the pairs that share a rarer
    shingle, not the square of the bucket. (A pair skipped here may come back from a smaller
    bucket of another band; its ROUGE-L is then checked, and can not exceed the threshold.)
    """
    n = len(ks)
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
        yield _pairs_within(s_starts[lo:hi], s_ends[lo:hi])
        lo = hi
    big = np.flatnonzero(sizes > bucket_cap)
    stats.setdefault("large_buckets", []).extend(sizes[big].tolist())
    if not len(big):
        return
    # All big buckets at once: (bucket, prefix shingle) -> the positions holding it; pairs within.
    pflat, poff = prefix
    pos = _ranges(starts[big], sizes[big])
    bucket = np.repeat(np.arange(len(big), dtype=np.int64), sizes[big])
    members = order[pos]
    cnt = poff[members + 1] - poff[members]
    shingle = pflat[_ranges(poff[members], cnt)]
    group = np.repeat(bucket, cnt) * (int(pflat.max()) + 1 if len(pflat) else 1) + shingle
    o = np.argsort(group)  # the default sort, not stable: faster on int64
    g, ent_pos = group[o], np.repeat(pos, cnt)[o]
    brk2 = np.flatnonzero(g[1:] != g[:-1]) + 1
    gs, ge = np.concatenate([[0], brk2]), np.concatenate([brk2, [len(g)]])
    multi = ge - gs >= 2
    i, j = _pairs_within(gs[multi], ge[multi])
    # A pair sharing several prefix shingles comes once per shingle: unique_sorted.
    i, j = ent_pos[i], ent_pos[j]
    keys = unique_sorted((np.minimum(i, j) << 32) | np.maximum(i, j))
    stats["large_bucket_pairs"] = stats.get("large_bucket_pairs", 0) + int((sizes[big] * (sizes[big] - 1) // 2).sum())
    stats["large_bucket_prefix_pairs"] = stats.get("large_bucket_prefix_pairs", 0) + len(keys)
    for c in range(0, len(keys), PAIR_CHUNK):
        yield keys[c : c + PAIR_CHUNK] >> 32, keys[c : c + PAIR_CHUNK] & 0xFFFFFFFF


@dataclass
class BandIndex:
    """What the per-band pass reads, built once from the signatures.

    keys: (bands, n) uint64 band keys, one contiguous row per band; head / tail: (n,
    num_perm // 2) and the rest, uint8 (:func:`sketch8`), apart so the first sketch stage reads
    half the bytes.
    """

    keys: np.ndarray
    head: np.ndarray
    tail: np.ndarray

    @classmethod
    def build(cls, sig: np.ndarray, bands: int, rows: int) -> "BandIndex":
        keys = np.empty((bands, len(sig)), np.uint64)
        for band in range(bands):
            keys[band] = band_key(sig, band, rows)
        sk = sketch8(sig)
        half = sig.shape[1] // 2
        return cls(keys, np.ascontiguousarray(sk[:, :half]), np.ascontiguousarray(sk[:, half:]))


def _agreements(sketch: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal sketch bytes per pair of rows (false byte matches only add: the tests stay conservative).

    The 0/1 bytes of the comparison are added 8 at a time as uint64 words, then the word's
    bytes folded by one multiply (faster than a uint8 sum along the rows).
    """
    eq = np.take(sketch, a, axis=0) == np.take(sketch, b, axis=0)
    width = eq.shape[1]
    if width % 8 or width > 255:  # each byte of the folded word must stay below 256
        return eq.view(np.uint8).sum(axis=1, dtype=np.uint16)
    words = eq.view(np.uint64)
    acc = words[:, 0].copy()
    for c in range(1, width // 8):
        acc += words[:, c]
    return ((acc * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint16)


def band_candidates(
    index: BandIndex,
    band: int,
    lengths: np.ndarray,
    has_cand: np.ndarray,
    threshold: float,
    min_matches: tuple[int, int],
    prefix: tuple[np.ndarray, np.ndarray],
    bucket_cap: int = BUCKET_CAP,
) -> tuple[np.ndarray, dict]:
    """Pairs sharing the key of ``band`` that survive the cheap filters, as int64 keys a << 32 | b.

    index: :class:`BandIndex` of the distinct texts; lengths: their token counts; has_cand:
    whether a text is (also) a candidate, since reference-reference pairs never matter.
    min_matches: :func:`sketch_thresholds`. prefix: :func:`prefix_index` output, to split
    buckets above ``bucket_cap``. A pair that collides in several bands comes back from each
    (callers deduplicate the survivors: see the module docstring). Filters, in order:
    reference-only pairs; the exact length bound 2 min(la, lb) / (la + lb) > threshold (F can
    not exceed it); agreeing sketch bytes, first in the head, then in all. Returns (keys,
    stats): band collisions generated and what each filter left.

    Lengths, flags and sketch heads are first put in bucket order (one pass per band), so a
    pair reads two neighbouring rows of its own bucket, not two random rows of the whole
    table: the same speed at 100k texts (a 6.4 MB head table stays in cache), and the table
    outgrows the caches at a few million texts.
    """
    stats = {"generated": 0, "length_pass": 0, "head_pass": 0, "sketch_pass": 0}
    head_min, total_min = min_matches
    # The default sort, not a stable one: several times faster on uint64 keys, and the order
    # inside a bucket changes nothing (pairs come out as (min, max) text ids).
    order = np.argsort(index.keys[band]).astype(np.int64)
    ks, lens_o = index.keys[band][order], lengths[order]
    cand_o = None if has_cand.all() else has_cand[order]  # all candidates: no reference-only pair to drop
    head_o = np.take(index.head, order, axis=0)
    out = []
    for i, j in _band_pair_chunks(order, ks, bucket_cap, prefix, stats):
        if not len(i):
            continue
        stats["generated"] += len(i)
        la, lb = lens_o[i], lens_o[j]
        # The 1e-9 margin keeps pairs whose bound is within float rounding of the threshold,
        # so they get the exact float F like rouge_score.
        ok = 2 * np.minimum(la, lb) > (threshold - 1e-9) * (la + lb)
        if cand_o is not None:
            ok &= cand_o[i] | cand_o[j]
        stats["length_pass"] += int(np.count_nonzero(ok))
        i, j = i[ok], j[ok]
        agree = _agreements(head_o, i, j)
        ok = agree >= head_min
        stats["head_pass"] += int(np.count_nonzero(ok))
        a, b, agree = order[i[ok]], order[j[ok]], agree[ok]
        keep = agree + _agreements(index.tail, a, b) >= total_min
        stats["sketch_pass"] += int(np.count_nonzero(keep))
        a, b = a[keep], b[keep]
        out.append((np.minimum(a, b) << 32) | np.maximum(a, b))
    return (np.concatenate(out) if out else np.zeros(0, dtype=np.int64)), stats


def unique_sorted(keys: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an int64 array by sort + neighbour compare.

    numpy 2.4's hash-based ``np.unique`` is two orders of magnitude slower on large int64 arrays.
    """
    if not len(keys):
        return keys
    keys = np.sort(keys)
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
