"""Near-duplicate removal at ROUGE-L > t with Alpaca's greedy semantics, without comparing all pairs.

    from lamini.generate.dedup.neardup import near_dup_filter
    res = near_dup_filter(generated, reference=seed_instructions, threshold=0.7)
    accepted = [t for t, k in zip(generated, res.keep) if k]

Semantics (Alpaca / self-instruct, sequential greedy): go through the candidates in order;
candidate i is kept iff ROUGE-L F(i, x) <= t for every reference x and every *kept*
candidate j < i. Alpaca computes every pair (O(N^2)); here:

1. tokenize (rouge_score's tokenizer) and fold exact duplicates (same tokens: F = 1);
2. MinHash signatures of each distinct text, vectorised in numpy (:mod:`.lsh`);
3. LSH banding -> candidate pairs (buckets above ``bucket_cap`` split by prefix-filter
   shingles, exactly), then per band in numpy: the exact length bound and a two-stage
   signature-agreement test (miss chance <= 1e-4 at the Jaccard bound); the survivors of all
   bands deduplicated;
4. the exact multiset-overlap bound (vectorised: LCS <= overlap), then the exact ROUGE-L
   (bit-parallel LCS, :mod:`.rouge`) of the pairs left; only pairs above t come back, as
   edges of a sparse graph;
5. the greedy pass on the driver: i is dropped iff a neighbour is a reference or a kept j < i.
   The match reported is the neighbour with the highest ROUGE-L (ties: the earliest,
   references first), the same rule as :func:`brute_force_filter`.

With Ray (``use_ray``), steps 2, 3 and 4 run as Ray tasks (text shards, one task per band,
pair shards) so a cluster spreads them; step 1, the overlap bound (numpy) and the greedy pass
stay on the driver (a dict over the texts and a loop over the sparse graph): each is linear in
the rows and cheaper than shipping its inputs to tasks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from lamini.generate.config import FilterConfig
from lamini.generate.dedup import lsh
from lamini.generate.dedup.rouge import (
    f_from_lcs,
    lcs_length_masks,
    match_masks,
    tokenize,
    verify_pairs,
)

# Auto mode uses Ray above this many texts, when a Ray is initialised: below it the local
# path beats shipping shards to tasks (bench_dedup in benchmarks/README.md).
AUTO_RAY_MIN_TEXTS = 20_000
SIG_SHARD = 20_000  # texts per signature task
VERIFY_SHARD = 100_000  # candidate pairs per verification task: enough LCS work to dwarf a task's overhead
_NO_MATCH = (-1.0, 1 << 62)


@dataclass
class NearDupResult:
    """Outcome of a near-duplicate filter, one entry per candidate in ``keep``/``dropped_by``/``rouge_l``.

    keep: True for candidates that survive. dropped_by: None when kept, else the index of
    the kept candidate that caused the drop, or ``-1 - ref_index`` for a reference.
    rouge_l: the ROUGE-L F with that match (None when kept). pairs_compared: exact ROUGE-L
    computations. candidate_pairs: band collisions of distinct texts the LSH proposed, a
    pair once per band it collides in (in buckets above ``bucket_cap``, those sharing a
    prefix shingle; brute force: every pair compared). timings: seconds per step. stats:
    parameters and counts. text_group / edges (LSH path): distinct-text id per position
    (references first, then candidates; -1 = no tokens) and the verified pairs of ids above
    the threshold.
    above (brute force): every compared (candidate position, other position) above it.
    """

    keep: list[bool]
    dropped_by: list[int | None]
    rouge_l: list[float | None]
    pairs_compared: int
    candidate_pairs: int
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    text_group: np.ndarray | None = field(default=None, repr=False)
    edges: np.ndarray | None = field(default=None, repr=False)
    above: list[tuple[int, int]] | None = field(default=None, repr=False)

    @property
    def kept(self) -> int:
        return sum(self.keep)


class _Greedy:
    """Accumulates keep / dropped_by / rouge_l while candidates are decided in order."""

    def __init__(self, n_ref: int, threshold: float):
        self.n_ref, self.threshold = n_ref, threshold
        self.keep: list[bool] = []
        self.dropped_by: list[int | None] = []
        self.rouge_l: list[float | None] = []

    def better(self, best: tuple[float, int], score: float, pos: int) -> tuple[float, int]:
        """The best match so far: highest score, then earliest global position."""
        if score > self.threshold and (score > best[0] or (score == best[0] and pos < best[1])):
            return score, pos
        return best

    def decide(self, best: tuple[float, int]) -> bool:
        kept = best[0] < 0
        self.keep.append(kept)
        self.dropped_by.append(None if kept else best[1] - self.n_ref if best[1] >= self.n_ref else -1 - best[1])
        self.rouge_l.append(None if kept else best[0])
        return kept


def brute_force_filter(
    candidates: Sequence[str], reference: Sequence[str] = (), threshold: float = 0.7
) -> NearDupResult:
    """The O(N^2) reference: Alpaca's loop, each candidate against every reference and kept one.

    Same exact ROUGE-L and tie rule as :func:`near_dup_filter`, so the two must agree.
    ``above`` lists every compared pair above the threshold (for recall measurements).
    """
    t0 = time.perf_counter()
    n_ref = len(reference)
    others = [(p, t) for p, t in enumerate(tokenize(x) for x in reference) if t]  # refs, then kept ones
    out, above, compared = _Greedy(n_ref, threshold), [], 0
    for i, text in enumerate(candidates):
        toks, best = tokenize(text), _NO_MATCH
        if toks:
            masks, n = match_masks(toks), len(toks)
            compared += len(others)
            for pos, other in others:
                f = f_from_lcs(lcs_length_masks(masks, n, other), n, len(other))
                if f > threshold:
                    above.append((n_ref + i, pos))
                    best = out.better(best, f, pos)
        if out.decide(best) and toks:
            others.append((n_ref + i, toks))
    res = NearDupResult(out.keep, out.dropped_by, out.rouge_l, compared, compared, {"total_s": time.perf_counter() - t0})
    res.above = above
    return res


def pair_recall(truth: NearDupResult, found: NearDupResult) -> tuple[int, int]:
    """(pairs found, pairs in truth): of brute force's above-threshold pairs, how many the LSH path verified.

    A pair of identical token lists counts as found (step 1 folds them exactly).
    """
    g = found.text_group
    edges = {(int(a), int(b)) for a, b in found.edges} if found.edges is not None else set()
    hits = 0
    for p, q in truth.above or ():
        u, v = int(g[p]), int(g[q])
        hits += u == v or (min(u, v), max(u, v)) in edges
    return hits, len(truth.above or ())


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
        # Starting a Ray here would take every core of the machine: that is the caller's call.
        raise RuntimeError("near_dup_filter(use_ray=True) needs ray.init() (or a cluster) first")
    return bool(use_ray) or (n > AUTO_RAY_MIN_TEXTS and ray.is_initialized())


def _sig_task(token_strs: list[str], num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signatures of a shard of texts, and its shingles (for the prefix index)."""
    flat, lens = lsh.shingle_arrays(token_strs)
    return lsh.signatures(flat, lens, lsh.permutations(num_perm, seed)), flat, lens


_SUMMED = ("generated", "length_pass", "head_pass", "sketch_pass", "large_bucket_pairs", "large_bucket_prefix_pairs")


def _bands_task(bands: list[int], sig, n_bands, rows, lengths, has_cand, threshold, min_matches, bucket_cap, prefix):
    """Candidate pair keys of several bands (a pair once per band it survives in), and summed stats."""
    index = lsh.BandIndex.build(sig, n_bands, rows)
    keys, total = [], {"max_bucket": 0, "large_buckets": [], **{k: 0 for k in _SUMMED}}
    for band in bands:
        k, st = lsh.band_candidates(index, band, lengths, has_cand, threshold, min_matches, prefix, bucket_cap)
        keys.append(k)
        for name in _SUMMED:
            total[name] += st.get(name, 0)
        total["max_bucket"] = max(total["max_bucket"], st.get("max_bucket", 0))
        total["large_buckets"] += st.get("large_buckets", [])
    return (np.concatenate(keys) if keys else np.zeros(0, np.int64)), total


def _map(fn, args_list: list[tuple], ray_on: bool, shared: tuple = ()) -> list:
    """fn(*args, *shared) for each args: in this process, or as Ray tasks (shared args put once)."""
    if not ray_on or len(args_list) <= 1:
        return [fn(*args, *shared) for args in args_list]
    import ray

    task = ray.remote(num_cpus=1)(fn)
    shared_refs = [ray.put(x) for x in shared]  # one copy in the object store, not one per task
    return ray.get([task.remote(*args, *shared_refs) for args in args_list])


def near_dup_filter(
    candidates: Sequence[str],
    reference: Sequence[str] = (),
    *,
    threshold: float = 0.7,
    num_perm: int = 128,
    lsh_threshold: float = 0.3,
    use_ray: bool | None = None,
    seed: int = 0,
    bucket_cap: int = lsh.BUCKET_CAP,
) -> NearDupResult:
    """Alpaca's greedy ROUGE-L filter of ``candidates`` against ``reference`` and each other.

    threshold: drop when ROUGE-L F > threshold. num_perm / lsh_threshold: MinHash size and the
    Jaccard the LSH S-curve is centred on (:func:`.lsh.lsh_params`). use_ray: True = Ray
    tasks (needs ray.init), False = this process, None = Ray when more than
    ``AUTO_RAY_MIN_TEXTS`` texts and a Ray is initialised. seed: MinHash permutations.
    bucket_cap: LSH buckets larger than this are split by prefix-filter shingles (exact)
    and listed in stats.
    """
    timings: dict[str, float] = {}
    t0 = tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        now = time.perf_counter()
        timings[name], tick = now - tick, now

    n_ref = len(reference)
    texts = [x or "" for x in reference] + [x or "" for x in candidates]
    ray_on = _resolve_use_ray(use_ray, len(texts))

    # 1. Tokens; exact duplicates folded: group[pos] is the distinct text at global position pos.
    token_strs: list[str] = []
    index: dict[str, int] = {}
    group = np.full(len(texts), -1, dtype=np.int64)
    for pos, text in enumerate(texts):
        key = " ".join(tokenize(text))
        if key:  # no tokens: F = 0 against everything, so never a duplicate, always kept
            g = index.setdefault(key, len(token_strs))
            if g == len(token_strs):
                token_strs.append(key)
            group[pos] = g
    del index
    n_uniq = len(token_strs)
    first_ref = np.full(n_uniq, -1, dtype=np.int64)
    ref_pos = np.flatnonzero(group[:n_ref] >= 0)
    first_ref[group[ref_pos][::-1]] = ref_pos[::-1]  # reversed writes: the earliest reference wins
    has_cand = np.zeros(n_uniq, dtype=bool)
    has_cand[group[n_ref:][group[n_ref:] >= 0]] = True
    lengths = np.fromiter((s.count(" ") + 1 for s in token_strs), dtype=np.int64, count=n_uniq)
    lap("tokenize_s")

    # 2. MinHash signatures of the distinct texts; the prefix index that splits huge buckets.
    shards = [(token_strs[s : s + SIG_SHARD],) for s in range(0, n_uniq, SIG_SHARD)]
    parts = _map(_sig_task, shards, ray_on, (num_perm, seed))
    sig = np.concatenate([p[0] for p in parts]) if parts else np.zeros((0, num_perm), dtype=np.uint32)
    flat = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint64)
    lens = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.int64)
    sets = lsh.ShingleSets.build(flat, lens)
    prefix = lsh.prefix_index(sets, threshold)
    del parts, flat, lens
    lap("signatures_s")

    # 3. LSH candidates, filtered per band (length bound, signature agreement), then deduplicated.
    bands, rows = lsh.lsh_params(num_perm, lsh_threshold)
    j_bound = lsh.min_jaccard_for_rouge(threshold)
    min_matches = lsh.sketch_thresholds(num_perm, j_bound)
    n_tasks = min(bands, 8) if ray_on else 1  # 8 tasks: spread, yet few copies of sig to map in
    band_sets = [(list(range(t, bands, n_tasks)),) for t in range(n_tasks)]
    shared = (sig, bands, rows, lengths, has_cand, threshold, min_matches, bucket_cap, prefix)
    results = _map(_bands_task, band_sets, ray_on, shared) if n_uniq > 1 else []
    pair_keys = lsh.unique_sorted(np.concatenate([k for k, _ in results])) if results else np.zeros(0, np.int64)
    pairs = np.stack([pair_keys >> 32, pair_keys & 0xFFFFFFFF], axis=1)
    st = {k: sum(r[1][k] for r in results) for k in _SUMMED}
    large = [s for r in results for s in r[1]["large_buckets"]]
    lap("lsh_s")

    # 4. The exact overlap bound (vectorised), then the exact ROUGE-L of the pairs left (sorted
    # by first text, so its bit masks are reused).
    n_after_sketch = len(pairs)
    pairs = pairs[lsh.overlap_pass(pairs, sets, lengths, threshold)]
    del sets
    chunks = [(pairs[s : s + VERIFY_SHARD],) for s in range(0, len(pairs), VERIFY_SHARD)]
    verified = _map(verify_pairs, chunks, ray_on, (token_strs, threshold))
    edges = np.concatenate([e for e, _ in verified]) if verified else np.zeros((0, 2), np.int64)
    scores = np.concatenate([s for _, s in verified]) if verified else np.zeros(0)
    lap("verify_s")

    # 5. Greedy pass over the sparse graph (CSR adjacency, both directions).
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    order = np.argsort(src, kind="stable")
    dst = np.concatenate([edges[:, 1], edges[:, 0]])[order].tolist()
    sc = np.concatenate([scores, scores])[order].tolist()
    starts = np.searchsorted(src[order], np.arange(n_uniq + 1)).tolist()
    first_ref_l, kept_pos = first_ref.tolist(), [-1] * n_uniq
    out = _Greedy(n_ref, threshold)
    for i, g in enumerate(group[n_ref:].tolist()):
        best = _NO_MATCH
        if g >= 0:
            # Its own group (an identical reference or kept candidate: F = 1), then its edges.
            for v, s in [(g, 1.0)] + list(zip(dst[starts[g] : starts[g + 1]], sc[starts[g] : starts[g + 1]])):
                if first_ref_l[v] >= 0:
                    best = out.better(best, s, first_ref_l[v])
                if kept_pos[v] >= 0:
                    best = out.better(best, s, kept_pos[v])
        if out.decide(best) and g >= 0:
            kept_pos[g] = n_ref + i
    lap("greedy_s")
    timings["total_s"] = time.perf_counter() - t0
    stats = {
        "threshold": threshold, "num_perm": num_perm, "lsh_threshold": lsh_threshold, "bands": bands, "rows": rows,
        "min_jaccard_bound": j_bound, "recall_at_bound": lsh.lsh_recall(j_bound, bands, rows),
        "min_sketch_matches": list(min_matches), "texts": len(texts), "distinct_texts": n_uniq,
        "pairs_generated": st["generated"], "pairs_after_length": st["length_pass"],
        "pairs_after_sketch_head": st["head_pass"], "pairs_after_sketch": st["sketch_pass"],
        "distinct_after_sketch": n_after_sketch, "pairs_after_overlap": len(pairs),
        "dup_edges": len(edges),
        "large_bucket_pairs": st["large_bucket_pairs"], "large_bucket_prefix_pairs": st["large_bucket_prefix_pairs"],
        "max_bucket": max((r[1].get("max_bucket", 0) for r in results), default=0), "large_buckets": large,
        "ray": ray_on,
    }  # fmt: skip
    res = NearDupResult(out.keep, out.dropped_by, out.rouge_l, len(pairs), st["generated"], timings, stats)
    res.text_group, res.edges = group, edges
    return res


def near_dup_filter_table(
    table, column: str, reference_texts: Sequence[str], cfg: FilterConfig
) -> tuple[Any, Any, dict[str, Any]]:
    """Pipeline form: filter the rows of an Arrow ``table`` by the texts in ``column``.

    reference_texts: seeds and already accepted instructions; cfg gives near_dup_threshold,
    minhash_num_perm and lsh_threshold. Returns ``(kept, dropped, report)``:
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
