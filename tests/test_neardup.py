"""Near-duplicate filter: exact ROUGE-L, MinHash/LSH soundness, equality with Alpaca's all-pairs greedy.

Real data (../shared/data, skipped where absent): the 175 self-instruct seeds as reference, Alpaca
instructions and paraphrase-like variants of both as candidates. ``rouge_score`` (the package
Alpaca uses) is the reference for tokenization and ROUGE-L where installed.
"""

from __future__ import annotations

import importlib.util
import math
import random
import time

import numpy as np
import pyarrow as pa
import pytest
from conftest import ROOT, shared_data

from lamini.config import CorpusSpec
from lamini.corpus import RejectLog, read_corpus
from lamini.generate.dedup import lsh, neardup
from lamini.generate.config import FilterConfig
from lamini.generate.dedup.neardup import (
    brute_force_filter,
    near_dup_filter,
    near_dup_filter_table,
    pair_recall,
)
from lamini.generate.dedup.rouge import (
    lcs_length,
    rouge_l_f,
    rouge_l_f_text,
    tokenize,
    verify_pairs,
)


def _bench():
    """benchmarks/bench_dedup.py, for its deterministic paraphrase generator."""
    spec = importlib.util.spec_from_file_location("bench_dedup", ROOT / "benchmarks" / "bench_dedup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def real():
    """(seed instructions via read_corpus, Alpaca instructions via read_corpus)."""
    rejects = RejectLog()
    seed_spec = CorpusSpec(format="self_instruct", path=str(shared_data("self_instruct_seed_tasks.jsonl")))
    seeds = read_corpus(seed_spec, rejects=rejects)
    alpaca = read_corpus(CorpusSpec(format="alpaca", path=str(shared_data("alpaca_5000.json"))), rejects=rejects)
    return seeds.column("instruction").to_pylist(), alpaca.column("instruction").to_pylist()


def _variants(texts: list[str], n: int, seed: int = 1) -> list[str]:
    rng, bench = random.Random(seed), _bench()
    return [bench.paraphrase(rng.choice(texts), rng, rng.choice((1, 1, 2, 3))) for _ in range(n)]


def _lcs_dp(a, b) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


# ---------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------


def test_tokenize_matches_rouge_score(real):
    rs_tok = pytest.importorskip("rouge_score.tokenizers").DefaultTokenizer(use_stemmer=False)
    seeds, alpaca = real
    odd = ["", "  ", "!!!", "naïve café — déjà vu", "\u212a is a Kelvin sign", "İstanbul", "x_y-z 3.14 don't"]
    odd += ["ÀÉÎ ÕÜ\nnew\tline", "ﬁnance ½ ²"]
    for text in seeds + alpaca[:1000] + odd:
        assert tokenize(text) == rs_tok.tokenize(text), text


def test_rouge_l_f_equals_rouge_score_on_real_pairs(real):
    scorer = pytest.importorskip("rouge_score.rouge_scorer").RougeScorer(["rougeL"], use_stemmer=False)
    seeds, alpaca = real
    pairs = [(s, a) for s in seeds for a in alpaca[:2]]  # 350 seed x Alpaca pairs
    rng, bench = random.Random(0), _bench()
    pairs += [(s, bench.paraphrase(s, rng, rng.choice((1, 2, 3)))) for s in seeds]  # and some that score high
    worst, above = 0.0, 0
    for a, b in pairs:
        ref = scorer.score(a, b)["rougeL"].fmeasure
        ours = rouge_l_f(tokenize(a), tokenize(b))
        worst = max(worst, abs(ref - ours))
        above += ref > 0.7
        assert ours == pytest.approx(ref, abs=1e-9)
        assert (ours > 0.7) == (ref > 0.7)
    print(f"{len(pairs)} pairs, max |diff| = {worst:.3g}, {above} above 0.7")
    assert above > 20


def test_bit_parallel_lcs_equals_dp():
    rng = random.Random(0)
    for _ in range(400):
        vocab = [f"w{i}" for i in range(rng.choice((2, 5, 30)))]
        a = [rng.choice(vocab) for _ in range(rng.randrange(0, 90))]  # > 64 tokens: multi-word ints
        b = [rng.choice(vocab) for _ in range(rng.randrange(0, 90))]
        assert lcs_length(a, b) == _lcs_dp(a, b)
    assert rouge_l_f([], ["a"]) == 0.0 and rouge_l_f(["a"], ["a"]) == 1.0


def test_verify_pairs_returns_only_pairs_above_threshold():
    texts = ["give three tips for staying healthy", "give 3 tips for staying healthy", "what is the capital of france"]
    edges, scores = verify_pairs(np.array([[0, 1], [0, 2], [1, 2]]), texts, 0.7)
    assert edges.tolist() == [[0, 1]] and scores[0] == rouge_l_f(texts[0].split(), texts[1].split())


# ---------------------------------------------------------------------------------------------
# MinHash / LSH
# ---------------------------------------------------------------------------------------------


def test_signatures_equal_datasketch(real):
    datasketch = pytest.importorskip("datasketch")
    seeds, _ = real
    perms = lsh.permutations(128, seed=7)
    token_strs = [" ".join(tokenize(t)) for t in seeds[:40]]
    sig = lsh.signatures_from_token_strs(token_strs, perms)
    for row, text in zip(sig, token_strs):
        m = datasketch.MinHash(num_perm=128, hashfunc=lambda x: x, permutations=perms, scheme="legacy")
        for sh in lsh.shingles(text.split()):
            m.update(sh)
        assert np.array_equal(row, m.hashvalues.astype(np.uint32))


def test_lsh_parameters_and_jaccard_bound(real):
    assert lsh.lsh_params(128, 0.3) == (42, 3)
    bound = lsh.min_jaccard_for_rouge(0.7)
    assert bound == pytest.approx(0.7 / 1.3)
    assert lsh.lsh_recall(bound, 42, 3) > 0.999
    assert lsh.lsh_recall(bound, 32, 4) < 0.95  # why r=4 is not used at 0.3
    assert lsh.min_sketch_matches(128, bound, miss=1e-6) == 42
    # The two-stage sketch test: >= 19 of the first 64 bytes, >= 47 of 128; a pair at the bound
    # fails either with probability <= SKETCH_MISS in all (union bound, exact binomial tails).
    head, total = lsh.sketch_thresholds(128, bound)
    assert (head, total) == (19, 47)

    def below(n, k):
        return sum(math.comb(n, i) * bound**i * (1 - bound) ** (n - i) for i in range(k))

    assert below(64, head) + below(128, total) <= lsh.SKETCH_MISS
    assert below(64, head + 1) + below(128, total + 1) > lsh.SKETCH_MISS / 2  # and no looser than needed
    # Set Jaccard would not be a bound: repeated tokens.
    a, b = "the the the the x".split(), "the the the the y".split()
    assert rouge_l_f(a, b) > 0.7 and len(set(a) & set(b)) / len(set(a) | set(b)) < 0.34
    # On every real pair above 0.7: the multiset Jaccard bound holds and the prefixes meet.
    seeds, alpaca = real
    texts = seeds + alpaca[:300] + _variants(seeds + alpaca[:300], 600)
    toks = [tokenize(t) for t in texts]
    flat, lens = lsh.shingle_arrays([" ".join(t) for t in toks])
    sets = lsh.ShingleSets.build(flat, lens)
    pflat, poff = lsh.prefix_index(sets, 0.7)
    prefixes = [set(pflat[poff[i] : poff[i + 1]].tolist()) for i in range(len(toks))]
    shingled = [set(lsh.shingles(t)) for t in toks]
    above, near = [], []
    for i in range(len(toks)):
        for j in range(i + 1, len(toks)):
            if toks[i] and toks[j] and abs(len(toks[i]) - len(toks[j])) < 0.5 * len(toks[i]):
                near.append((i, j))
                if rouge_l_f(toks[i], toks[j]) > 0.7:
                    jac = len(shingled[i] & shingled[j]) / len(shingled[i] | shingled[j])
                    assert jac > bound and prefixes[i] & prefixes[j], (texts[i], texts[j])
                    above.append((i, j))
    assert len(above) > 100
    # The vectorised overlaps are the exact multiset overlaps, and the overlap bound keeps
    # every pair above 0.7 while it drops most of the others.
    pairs = np.array(near, dtype=np.int64)
    assert sets.overlaps(pairs[:, 0], pairs[:, 1]).tolist() == [len(shingled[i] & shingled[j]) for i, j in near]
    lengths = np.array([len(t) for t in toks])
    assert lsh.overlap_pass(np.array(above), sets, lengths, 0.7).all()
    assert lsh.overlap_pass(pairs, sets, lengths, 0.7).mean() < 0.05


# ---------------------------------------------------------------------------------------------
# The filter against brute force
# ---------------------------------------------------------------------------------------------


def test_equals_brute_force_on_real_instructions(real):
    """175 seeds as reference; 3,000 Alpaca + 400 variants (shuffled) as candidates."""
    seeds, alpaca = real
    rng = random.Random(3)
    cands = alpaca[:3000] + _variants(seeds + alpaca[:3000], 400, seed=2)
    rng.shuffle(cands)
    t = time.perf_counter()
    ours = near_dup_filter(cands, seeds, use_ray=False)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    bf = brute_force_filter(cands, seeds)
    bf_s = time.perf_counter() - t
    found, total = pair_recall(bf, ours)
    print(
        f"\nN={len(cands)} kept {ours.kept} (brute force {bf.kept}); pairs > 0.7: {total}, found {found} "
        f"(recall {found / total:.4f}); compared {ours.pairs_compared} vs {bf.pairs_compared}; "
        f"candidates {ours.candidate_pairs}; {ours_s:.1f} s vs {bf_s:.1f} s"
    )
    assert ours.keep == bf.keep
    assert ours.dropped_by == bf.dropped_by and ours.rouge_l == bf.rouge_l
    assert total > 100 and found / total >= 0.99
    assert ours.pairs_compared < bf.pairs_compared / 20
    assert ours.kept < len(cands) - 100  # the variants really were near duplicates
    # Splitting every bucket above 4 texts by prefix shingles must not change a thing.
    split = near_dup_filter(cands, seeds, use_ray=False, bucket_cap=4)
    assert split.stats["large_bucket_prefix_pairs"] < split.stats["large_bucket_pairs"] / 3
    assert (split.keep, split.dropped_by, split.rouge_l) == (bf.keep, bf.dropped_by, bf.rouge_l)


def test_greedy_semantics_chain():
    """B is a near-dup of A and is dropped; C is close to B only, so C is kept (B is not kept)."""
    a = "one two three four five six seven eight nine ten"
    b = "one two three four five six seven eight eleven twelve"
    c = "one two three four five six thirteen fourteen eleven twelve"
    assert rouge_l_f_text(a, b) > 0.7 and rouge_l_f_text(b, c) > 0.7 and rouge_l_f_text(a, c) <= 0.7
    res = near_dup_filter([a, b, c], use_ray=False)
    assert res.keep == [True, False, True] and res.dropped_by == [None, 0, None]
    assert res.keep == brute_force_filter([a, b, c]).keep
    # Against a reference: index -1 - ref_index.
    res = near_dup_filter([b, c], [a], use_ray=False)
    assert res.keep == [False, True] and res.dropped_by == [-1, None]


def test_ray_path_equals_local(real, ray_local, monkeypatch):
    seeds, alpaca = real
    cands = alpaca[:500] + _variants(seeds + alpaca[:500], 150, seed=5)
    local = near_dup_filter(cands, seeds[:50], use_ray=False)
    monkeypatch.setattr(neardup, "SIG_SHARD", 100)  # several tasks per step even at this size
    monkeypatch.setattr(neardup, "VERIFY_SHARD", 50)
    remote = near_dup_filter(cands, seeds[:50], use_ray=True)
    split = near_dup_filter(cands, seeds[:50], use_ray=True, bucket_cap=4)  # prefix split inside the tasks
    assert split.stats["large_buckets"] and split.keep == local.keep
    assert remote.stats["ray"] and not local.stats["ray"]
    assert remote.keep == local.keep and remote.dropped_by == local.dropped_by and remote.rouge_l == local.rouge_l
    assert (remote.pairs_compared, remote.candidate_pairs) == (local.pairs_compared, local.candidate_pairs)
    assert local.kept < len(cands)


# ---------------------------------------------------------------------------------------------
# Edge cases
# ---------------------------------------------------------------------------------------------


def _same_as_brute(cands, ref=(), **kw):
    ours, bf = near_dup_filter(cands, ref, use_ray=False, **kw), brute_force_filter(cands, ref)
    assert (ours.keep, ours.dropped_by, ours.rouge_l) == (bf.keep, bf.dropped_by, bf.rouge_l)
    return ours


def test_empty_and_tokenless_texts_are_always_kept():
    res = _same_as_brute(["", "", "!!!", "   ", "Write a poem.", "write a POEM!!", ""], ["", "?"])
    assert res.keep == [True, True, True, True, True, False, True]
    assert res.dropped_by[5] == 4 and res.rouge_l[5] == 1.0
    assert near_dup_filter([], ["a b c"]).keep == [] and near_dup_filter(["a b c"]).keep == [True]


def test_identical_strings_and_references():
    ref = ["Give three tips for staying healthy."]
    cands = ["give three tips for staying healthy", "Tell me a joke.", "Tell me a joke!", "tell me a joke"]
    res = _same_as_brute(cands, ref)
    assert res.keep == [False, True, False, False]
    assert res.dropped_by == [-1, None, 1, 1]
    # Threshold 1.0: F never exceeds it, so even identical texts stay.
    assert near_dup_filter(["a b", "a b"], threshold=1.0).keep == [True, True]


def test_very_long_texts():
    rng = random.Random(0)
    words = [f"word{rng.randrange(3000)}" for _ in range(3000)]
    long_a = " ".join(words)
    long_b = " ".join(w if i % 50 else "changed" for i, w in enumerate(words))  # 2% of words changed
    long_c = " ".join(reversed(words))
    res = _same_as_brute([long_a, long_b, long_c, "short text here"])
    assert res.keep == [True, False, True, True] and res.rouge_l[1] > 0.95
    assert rouge_l_f(long_a.split(), long_b.split()) == pytest.approx(
        2 * _lcs_dp(long_a.split()[:400], long_b.split()[:400]) / 800, abs=0.05
    )


def test_bucket_of_1000_identical_instructions():
    cands = ["Write a short poem about the sea."] * 1000 + ["Explain how a rainbow forms."]
    t = time.perf_counter()
    res = near_dup_filter(cands, use_ray=False)
    assert time.perf_counter() - t < 5
    assert res.keep == [True] + [False] * 999 + [True]
    assert set(res.dropped_by[1:1000]) == {0} and res.pairs_compared == 0  # folded, never compared
    assert res.stats["distinct_texts"] == 2


def test_huge_buckets_are_split_by_prefix_shingles_and_reported():
    """500 distinct near-identical instructions put ~500 texts in one bucket per band."""
    cands = [f"Write a short poem about the sea number {i}" for i in range(500)]
    cands += [f"Describe the history of {w} in a few words" for w in ("Rome", "Paris", "tea", "jazz", "chess")]
    ours = _same_as_brute(cands, bucket_cap=50)
    assert ours.stats["large_buckets"] and max(ours.stats["large_buckets"]) > 50
    assert ours.keep[0] and sum(ours.keep) < 20


def test_filter_table_for_the_pipeline():
    texts = ["Tell me a joke.", "tell me a joke", "Name three colors.", None]
    table = pa.table({"instruction": texts, "round": [1, 1, 2, 2]})
    kept, dropped, report = near_dup_filter_table(table, "instruction", ["Please name three colors."], FilterConfig())
    assert kept.column_names == table.column_names
    assert kept.column("instruction").to_pylist() == ["Tell me a joke.", None]
    assert dropped.column("drop_reason").to_pylist() == ["near_duplicate", "near_duplicate"]
    assert dropped.column("near_dup_of").to_pylist() == ["Tell me a joke.", "Please name three colors."]
    assert dropped.column("rouge_l").to_pylist()[0] == 1.0
    assert report["kept"] == 2 and report["dropped"] == 2 and report["input_rows"] == 4
