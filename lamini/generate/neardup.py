"""Near-duplicate removal at ROUGE-L > t, with Alpaca's greedy semantics, in near-linear work.

    from lamini.generate.neardup import near_dup_filter
    res = near_dup_filter(generated, reference=seed_instructions, threshold=0.7)
    accepted = [t for t, k in zip(generated, res.keep) if k]

Semantics (Alpaca / self-instruct, sequential greedy): go through the candidates in order;
candidate i is kept iff ROUGE-L F(i, x) <= t for every reference x and every *kept*
candidate j < i. Alpaca compares every pair (O(N^2)); here:

1. tokenize (rouge_score's tokenizer) and fold exact duplicates (same token list: F = 1);
2. MinHash signatures of each distinct text, vectorised in numpy (:mod:`.minhash`);
3. LSH banding -> candidate pairs (sort-based grouping, sharing an r-row band key);
4. an exact length bound, then the exact ROUGE-L (bit-parallel LCS, :mod:`.rouge`) of every
   remaining candidate pair; only pairs above t are kept as edges;
5. the greedy pass on the driver over that sparse graph: i is dropped iff a neighbour is a
   reference or a kept j < i. The match reported is the neighbour with the highest ROUGE-L
   (ties: the earliest, references first), the same rule as :func:`brute_force_filter`.

Steps 2 and 4 run as Ray tasks over shards when ``use_ray`` (cluster-wide); the rest is
numpy on the driver. Recall is set by the LSH S-curve (see :func:`.minhash.lsh_params`).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lamini.generate.rouge import f_from_lcs, lcs_length_masks, match_masks, tokenize, verify_pairs

# Auto mode uses Ray above this many texts (if a Ray is already initialised): below it the
# local path is faster than shipping shards (~20k texts: ~5 s locally on one core).
AUTO_RAY_MIN_TEXTS = 20_000
SIG_SHARD = 20_000  # texts per signature task
VERIFY_SHARD = 200_000  # candidate pairs per verification task (~0.5 s of LCS)


# --------------------------------------------------------------------------------------
# MinHash signatures and LSH banding
# --------------------------------------------------------------------------------------

MERSENNE = np.uint64((1 << 61) - 1)  # the (a*x + b) mod p family, as datasketch's legacy scheme
MAX_HASH = np.uint64((1 << 32) - 1)
SIG_CHUNK = 16_384  # shingles per vectorised block: a (16384 x num_perm) uint64 temporary, 16 MB
BUCKET_CAP = 2_000  # buckets above this are paired in chunks and reported


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
    r=3, b=42 (midpoint 0.288): catches J=0.538 (the worst case of ROUGE-L > 0.7) with
    p = 0.9992, J=0.7 with p > 0.999999; r=4, b=32 (midpoint 0.42) would give only 0.94 at
    J=0.538. (datasketch's FP/FN-area optimum at 0.3 is b=37, r=3: same r, fewer bands.)
    """
    best = min(range(1, num_perm + 1), key=lambda r: abs((1.0 / (num_perm // r)) ** (1.0 / r) - lsh_threshold))
    return num_perm // best, best


def lsh_recall(jaccard: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard shares at least one band key."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) uint64 arrays of the hash family h(x) = ((a x + b) mod (2^61 - 1)) & (2^32 - 1)."""
    rng = np.random.default_rng(seed)
    return (
        rng.integers(1, int(MERSENNE), num_perm, dtype=np.uint64),
        rng.integers(0, int(MERSENNE), num_perm, dtype=np.uint64),
    )


def shingles(tokens: Sequence[str]) -> list[int]:
    """Multiset unigram shingles: the k-th occurrence of a token is the item "token#k" (k > 1).

    Hashed with CRC-32 (C speed, stable across processes, unlike hash()); a collision only
    merges two items, which raises Jaccard and can add a candidate, never lose one.
    """
    seen: dict[str, int] = {}
    out = []
    for tok in tokens:
        k = seen.get(tok, 0) + 1
        seen[tok] = k
        out.append(zlib.crc32((tok if k == 1 else f"{tok}#{k}").encode()))
    return out


def signatures_from_token_strs(token_strs: Sequence[str], perms: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """MinHash signatures (n, num_perm) uint32 of space-joined token strings.

    One numpy expression per block of shingles, then ``np.minimum.reduceat`` per text. The
    values equal datasketch ``MinHash(scheme="legacy", permutations=perms)`` fed the same
    shingle ids, but datasketch updates one shingle at a time with a numpy call each:
    on 5,175 Alpaca+seed instructions (~53k shingles) it takes ~0.9 s against ~0.06 s here.
    A text with no shingles keeps the all-MAX signature (never paired: callers skip them).
    """
    a, b = perms
    n, num_perm = len(token_strs), len(a)
    lens = np.zeros(n, dtype=np.int64)
    flat: list[int] = []
    for i, s in enumerate(token_strs):
        sh = shingles(s.split())
        lens[i] = len(sh)
        flat.extend(sh)
    x = np.asarray(flat, dtype=np.uint64)
    offsets = np.concatenate([[0], np.cumsum(lens)])
    sig = np.full((n, num_perm), int(MAX_HASH), dtype=np.uint32)
    doc = 0
    while doc < n:
        end = max(doc + 1, int(np.searchsorted(offsets, offsets[doc] + SIG_CHUNK, side="right")) - 1)
        end = min(end, n)
        nz = lens[doc:end] > 0
        if nz.any():
            seg = x[offsets[doc] : offsets[end]]
            # uint64 products wrap mod 2^64 before the mod p, exactly like datasketch's legacy scheme.
            h = ((seg[:, None] * a[None, :] + b[None, :]) % MERSENNE) & MAX_HASH
            block = np.minimum.reduceat(h, offsets[doc:end][nz] - offsets[doc], axis=0)
            sig[doc:end][nz] = block.astype(np.uint32)
        doc = end
    return sig


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64: each band's ``rows`` signature values folded into one 64-bit key.

    rows <= 2 pack exactly; more rows are mixed by a multiply-xor, whose rare collisions
    only add candidate pairs (all verified exactly afterwards).
    """
    n = len(sig)
    s = sig[:, : bands * rows].astype(np.uint64).reshape(n, bands, rows)
    key = s[:, :, 0].copy()
    for j in range(1, rows):
        key = (key << np.uint64(32)) | s[:, :, j] if rows <= 2 else (key * np.uint64(0x9E3779B97F4A7C15)) ^ s[:, :, j]
    return np.ascontiguousarray(key.T)


@dataclass
class Candidates:
    """Distinct candidate pairs (k, 2) int64, a < b, sorted; bucket statistics."""

    pairs: np.ndarray
    max_bucket: int
    large_buckets: list[int]


def _pairs_within(order: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """All pairs (a < b) inside each group order[s:e], as int64 keys a * 2^32 + b, no Python loop."""
    sizes = ends - starts
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    pos = np.repeat(starts, sizes) + (np.arange(total) - np.repeat(np.cumsum(sizes) - sizes, sizes))
    cnt = np.repeat(ends, sizes) - 1 - pos  # partners after each member in its group
    n_pairs = int(cnt.sum())
    first = np.repeat(pos, cnt)
    second = first + 1 + (np.arange(n_pairs) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    a, b = order[first], order[second]  # stable sort: ascending ids inside a group, so a < b
    return (a << 32) | b


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, bucket_cap: int = BUCKET_CAP, keep=None) -> Candidates:
    """Pairs of rows of ``sig`` that share a band key in at least one band.

    Sort-based grouping per band (argsort + run boundaries). Buckets bigger than
    ``bucket_cap`` (very common token multisets) are paired in slices of members so memory
    stays bounded; their sizes are reported. ``keep(a, b) -> bool mask`` prunes pairs per
    band before the cross-band dedup (e.g. the exact length bound).
    """
    n = len(sig)
    if n < 2:
        return Candidates(np.zeros((0, 2), dtype=np.int64), 0, [])
    keys = band_keys(sig, bands, rows)
    found: list[np.ndarray] = []
    held, max_bucket, large = 0, 0, []

    def add(k: np.ndarray) -> None:
        nonlocal found, held
        if keep is not None and len(k):
            k = k[keep(k >> 32, k & 0xFFFFFFFF)]
        found.append(k)
        held += len(k)
        if held > 20_000_000:  # dedup as we go, so repeats across bands do not pile up
            found = [np.unique(np.concatenate(found))]
            held = len(found[0])

    for band in range(bands):
        order = np.argsort(keys[band], kind="stable").astype(np.int64)
        ks = keys[band][order]
        brk = np.flatnonzero(ks[1:] != ks[:-1]) + 1
        starts, ends = np.concatenate([[0], brk]), np.concatenate([brk, [n]])
        sizes = ends - starts
        max_bucket = max(max_bucket, int(sizes.max()))
        small = (sizes >= 2) & (sizes <= bucket_cap)
        add(_pairs_within(order, starts[small], ends[small]))
        for s, e in zip(starts[sizes > bucket_cap].tolist(), ends[sizes > bucket_cap].tolist()):
            large.append(e - s)
            members = np.sort(order[s:e])
            for i in range(0, len(members) - 1, 256):  # 256 members x the rest: bounded slices
                a = np.repeat(members[i : i + 256], len(members))
                b = np.tile(members, min(256, len(members) - i))
                add((a << 32)[a < b] | b[a < b])
    keys_all = np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    pairs = np.stack([keys_all >> 32, keys_all & 0xFFFFFFFF], axis=1)
    return Candidates(pairs, max_bucket, large)


@dataclass
class NearDupResult:
    """Outcome of a near-duplicate filter, one entry per candidate.

    keep: True for candidates that survive. dropped_by: None when kept, else the index of
    the kept candidate that caused the drop, or ``-1 - ref_index`` for a reference.
    rouge_l: the ROUGE-L F with that match (None when kept). pairs_compared: exact ROUGE-L
    computations. candidate_pairs: distinct pairs of distinct texts proposed by the index
    (brute force: every pair compared). timings: seconds per step. stats: index parameters
    and sizes (bands, rows, buckets, distinct texts, ...).
    """

    keep: list[bool]
    dropped_by: list[int | None]
    rouge_l: list[float | None]
    pairs_compared: int
    candidate_pairs: int
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> int:
        return sum(self.keep)


def _consider(best: list, score: float, pos: int, threshold: float) -> None:
    """Keep the best match so far: highest score, then earliest global position."""
    if score > threshold and (score > best[0] or (score == best[0] and pos < best[1])):
        best[0], best[1] = score, pos


def _decode(pos: int, n_ref: int) -> int:
    return pos - n_ref if pos >= n_ref else -1 - pos


def brute_force_filter(candidates: Sequence[str], reference: Sequence[str] = (), threshold: float = 0.7) -> NearDupResult:
    """The O(N^2) reference: Alpaca's loop, each candidate against every reference and kept one.

    Uses the same exact ROUGE-L as :func:`near_dup_filter`, so the two must agree exactly.
    """
    t0 = time.perf_counter()
    n_ref = len(reference)
    ref_toks = [tokenize(x) for x in reference]
    kept: list[tuple[int, list[str]]] = []  # (global position, tokens)
    keep, dropped_by, scores = [], [], []
    compared = 0
    for i, text in enumerate(candidates):
        toks = tokenize(text)
        best = [-1.0, 1 << 62]
        if toks:
            masks, n = match_masks(toks), len(toks)
            others = [(p, t) for p, t in enumerate(ref_toks) if t] + [(p, t) for p, t in kept]
            compared += len(others)
            for pos, other in others:
                _consider(best, f_from_lcs(lcs_length_masks(masks, n, other), n, len(other)), pos, threshold)
        if best[0] < 0:
            keep.append(True), dropped_by.append(None), scores.append(None)
            if toks:
                kept.append((n_ref + i, toks))
        else:
            keep.append(False), dropped_by.append(_decode(best[1], n_ref)), scores.append(best[0])
    return NearDupResult(keep, dropped_by, scores, compared, compared, {"total_s": time.perf_counter() - t0})


def _resolve_use_ray(use_ray: bool | None, n: int) -> bool:
    if use_ray is False:
        return False
    try:
        import ray
    except ImportError:
        if use_ray:
            raise
        return False
    if use_ray and not ray.is_initialized():
        # Starting a Ray here would grab every core of the machine: that is the caller's call.
        raise RuntimeError("near_dup_filter(use_ray=True) needs ray.init() (or a cluster) first")
    return bool(use_ray) or (n > AUTO_RAY_MIN_TEXTS and ray.is_initialized())


def _signatures(token_strs: list[str], num_perm: int, seed: int, ray_on: bool) -> np.ndarray:
    if not ray_on:
        return signatures_from_token_strs(token_strs, permutations(num_perm, seed))
    import ray

    task = ray.remote(num_cpus=1)(_sig_task)
    refs = [task.remote(token_strs[s : s + SIG_SHARD], num_perm, seed) for s in range(0, len(token_strs), SIG_SHARD)]
    parts = ray.get(refs)
    return np.concatenate(parts) if parts else np.zeros((0, num_perm), dtype=np.uint32)


def _sig_task(token_strs: list[str], num_perm: int, seed: int) -> np.ndarray:
    return signatures_from_token_strs(token_strs, permutations(num_perm, seed))


def _verify(pairs: np.ndarray, token_strs: list[str], threshold: float, ray_on: bool) -> tuple[np.ndarray, np.ndarray]:
    if not ray_on or len(pairs) <= VERIFY_SHARD:
        return verify_pairs(pairs, token_strs, threshold)
    import ray

    task = ray.remote(num_cpus=1)(verify_pairs)
    strs_ref = ray.put(token_strs)  # one copy in the object store, shared by every task on a node
    refs = [task.remote(pairs[s : s + VERIFY_SHARD], strs_ref, threshold) for s in range(0, len(pairs), VERIFY_SHARD)]
    parts = ray.get(refs)
    return np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])


def near_dup_filter(
    candidates: Sequence[str],
    reference: Sequence[str] = (),
    *,
    threshold: float = 0.7,
    num_perm: int = 128,
    lsh_threshold: float = 0.3,
    use_ray: bool | None = None,
    seed: int = 0,
    bucket_cap: int = BUCKET_CAP,
) -> NearDupResult:
    """Alpaca's greedy ROUGE-L filter of ``candidates`` against ``reference`` and each other.

    threshold: drop when ROUGE-L F > threshold. num_perm / lsh_threshold: MinHash size and the
    Jaccard the LSH S-curve is centred on (see :func:`.minhash.lsh_params`). use_ray: True =
    Ray tasks (needs ray.init), False = this process, None = Ray when more than
    ``AUTO_RAY_MIN_TEXTS`` texts and a Ray is initialised. seed: MinHash permutations.
    bucket_cap: LSH buckets larger than this are paired in chunks and listed in stats.
    """
    timings: dict[str, float] = {}
    t0 = tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name] = now - tick
        tick = now

    n_ref, n = len(reference), len(candidates)
    texts = [x or "" for x in reference] + [x or "" for x in candidates]
    if threshold >= 1.0:  # F <= 1 always: nothing can exceed the threshold
        return NearDupResult([True] * n, [None] * n, [None] * n, 0, 0, {"total_s": 0.0}, {"threshold": threshold})
    ray_on = _resolve_use_ray(use_ray, len(texts))

    # 1. Tokens, and exact duplicates folded: `group[pos]` is the distinct text of position pos.
    token_strs: list[str] = []
    index: dict[str, int] = {}
    group = np.full(len(texts), -1, dtype=np.int64)
    for pos, text in enumerate(texts):
        key = " ".join(tokenize(text))
        if key:  # texts with no token score 0 against everything: never duplicates, always kept
            g = index.get(key)
            if g is None:
                g = index[key] = len(token_strs)
                token_strs.append(key)
            group[pos] = g
    del index
    n_uniq = len(token_strs)
    first_ref = np.full(n_uniq, -1, dtype=np.int64)
    ref_groups = group[:n_ref]
    has_ref = ref_groups >= 0
    # Earliest reference of each group: write positions in reverse so the smallest one wins.
    first_ref[ref_groups[has_ref][::-1]] = np.flatnonzero(has_ref)[::-1]
    has_cand = np.zeros(n_uniq, dtype=bool)
    has_cand[group[n_ref:][group[n_ref:] >= 0]] = True
    lengths = np.fromiter((s.count(" ") + 1 for s in token_strs), dtype=np.int64, count=n_uniq)
    lap("tokenize_s")

    # 2-3. Signatures, then candidate pairs of distinct texts from equal band keys.
    sig = _signatures(token_strs, num_perm, seed, ray_on)
    lap("signatures_s")
    bands, rows = lsh_params(num_perm, lsh_threshold)
    cand = candidate_pairs(sig, bands, rows, bucket_cap=bucket_cap)
    lap("lsh_s")
    pairs = cand.pairs
    # Reference-reference pairs never matter; then the exact length bound:
    # F = 2 LCS / (la + lb) <= 2 min / (la + lb). The 1e-9 margin keeps pairs whose bound is
    # within float rounding of the threshold, so they get the exact float F like rouge_score.
    la, lb = lengths[pairs[:, 0]], lengths[pairs[:, 1]]
    useful = (has_cand[pairs[:, 0]] | has_cand[pairs[:, 1]]) & (2 * np.minimum(la, lb) / (la + lb) > threshold - 1e-9)
    pairs = pairs[useful]
    lap("length_filter_s")

    # 4. Exact ROUGE-L of what is left; only edges above the threshold come back.
    edges, scores = _verify(pairs, token_strs, threshold, ray_on)
    lap("verify_s")

    # 5. Greedy pass over the sparse graph (CSR adjacency, both directions).
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    sc = np.concatenate([scores, scores])
    order = np.argsort(src, kind="stable")
    dst, sc = dst[order].tolist(), sc[order].tolist()
    starts = np.searchsorted(src[order], np.arange(n_uniq + 1)).tolist()
    first_ref_l = first_ref.tolist()
    kept_pos = [-1] * n_uniq
    keep, dropped_by, match_scores = [], [], []
    for i, g in enumerate(group[n_ref:].tolist()):
        best = [-1.0, 1 << 62]
        if g >= 0:
            # Its own group: an identical reference or an identical kept candidate (F = 1).
            for p in (first_ref_l[g], kept_pos[g]):
                if p >= 0:
                    _consider(best, 1.0, p, threshold)
            for k in range(starts[g], starts[g + 1]):
                v, s = dst[k], sc[k]
                for p in (first_ref_l[v], kept_pos[v]):
                    if p >= 0:
                        _consider(best, s, p, threshold)
        if best[0] < 0:
            keep.append(True), dropped_by.append(None), match_scores.append(None)
            if g >= 0:
                kept_pos[g] = n_ref + i
        else:
            keep.append(False), dropped_by.append(_decode(best[1], n_ref)), match_scores.append(best[0])
    lap("greedy_s")
    timings["total_s"] = time.perf_counter() - t0
    stats = {
        "threshold": threshold,
        "num_perm": num_perm,
        "bands": bands,
        "rows": rows,
        "lsh_threshold": lsh_threshold,
        "min_jaccard_bound": min_jaccard_for_rouge(threshold),
        "recall_at_bound": lsh_recall(min_jaccard_for_rouge(threshold), bands, rows),
        "texts": len(texts),
        "distinct_texts": n_uniq,
        "length_pruned_pairs": int(len(cand.pairs) - len(pairs)),
        "dup_edges": int(len(edges)),
        "max_bucket": cand.max_bucket,
        "large_buckets": cand.large_buckets,
        "ray": ray_on,
    }
    return NearDupResult(keep, dropped_by, match_scores, int(len(pairs)), int(len(cand.pairs)), timings, stats)


def near_dup_filter_table(table, column: str, reference_texts: Sequence[str], cfg) -> tuple[Any, Any, dict[str, Any]]:
    """Pipeline form: filter the rows of an Arrow ``table`` by the texts in ``column``.

    reference_texts: seeds and already accepted instructions. cfg: a ``FilterConfig``
    (near_dup_threshold, minhash_num_perm, lsh_threshold). Returns ``(kept, dropped, report)``:
    ``kept`` has the table's columns, in order; ``dropped`` adds ``drop_reason``
    ("near_duplicate"), ``near_dup_of`` (the matching text) and ``rouge_l`` (its F);
    ``report`` counts rows and pairs and carries the timings and index statistics.
    """
    import pyarrow as pa

    texts = [t or "" for t in table.column(column).to_pylist()]
    reference = list(reference_texts)
    res = near_dup_filter(
        texts,
        reference,
        threshold=cfg.near_dup_threshold,
        num_perm=cfg.minhash_num_perm,
        lsh_threshold=cfg.lsh_threshold,
    )
    keep = pa.array(res.keep, pa.bool_())
    kept = table.filter(keep)
    gone = [i for i, k in enumerate(res.keep) if not k]
    match = [texts[d] if d >= 0 else reference[-1 - d] for d in (res.dropped_by[i] for i in gone)]
    dropped = table.filter(pa.array([not k for k in res.keep], pa.bool_()))
    for name, values, typ in (
        ("drop_reason", ["near_duplicate"] * len(gone), pa.string()),
        ("near_dup_of", match, pa.string()),
        ("rouge_l", [res.rouge_l[i] for i in gone], pa.float64()),
    ):
        idx = dropped.schema.get_field_index(name)
        col = pa.array(values, typ)
        dropped = dropped.set_column(idx, name, col) if idx >= 0 else dropped.append_column(name, col)
    report = {
        "input_rows": table.num_rows,
        "reference_texts": len(reference),
        "kept": kept.num_rows,
        "dropped": dropped.num_rows,
        "pairs_compared": res.pairs_compared,
        "candidate_pairs": res.candidate_pairs,
        **{k: v for k, v in res.stats.items() if k != "large_buckets"},
        "large_buckets": len(res.stats.get("large_buckets", [])),
        "timings": res.timings,
    }
    return kept, dropped, report
