"""Near-duplicate filtering at ROUGE-L > 0.7: our MinHash-LSH + exact ROUGE-L vs Alpaca's all pairs.

The data. For each N (default 5k, 20k, 100k) the reference is the 175 self-instruct seeds
and the N candidates are built from real text in ../shared/data, at the same duplicate
density for every N:

  * bases, 80% of the rows (1 - ``DUP_SHARE``), all distinct texts:
    - 5% of them (``REAL_BASE_SHARE``) real Alpaca / user-oriented instructions, verbatim;
    - the rest synthetic, each a recombination of real pieces (:func:`synthetic_base`):
      the head of one real instruction ("Write a", "Give three tips for"), 3-6 words of the
      rest of another real instruction whose head ended in the same word ("catchy headline
      for a new"), a short connector (", given that") and a 5-9 word window cut from a real
      sentence (Alpaca outputs and inputs, seed and user-oriented instances, P3 prompts and
      completions): e.g. "Write a catchy headline for a new, given that plants need
      sunlight, water and nutrients." Heads and rests repeat across bases the way templates
      repeat in real generated data; the window (one per base, ~92k of them, none reused up
      to 100k rows) keeps the bases apart. They read like noisy generated instructions: what
      matters here is the real vocabulary, lengths and template overlap, not the meaning.
  * variants, 20% of the rows (``DUP_SHARE``): bases drawn at random (seeds included) get
    3 or 4 (``VARIANTS_PER_BASE``) paraphrase-like variants each (:func:`paraphrase`: word
    drops, swaps, synonyms, fillers, case and punctuation changes); all shuffled together.

Why the density is held constant: a real corpus of millions of generated instructions has
a roughly constant share of near-duplicates per row (each row has a few near copies), not a
share that grows with N. The earlier data built every N from the same ~5,175 real texts, so
100k rows had ~18 variants per base against ~3 at 20k, and the true duplicate pairs grew
~20x for 5x the rows (quadratic in variants per base): that measured the data, not the
filter. Here variants per base and the share of variant rows are fixed, and verified
duplicate edges per row stay ~0.35 at every N (``per_row.dup_edges`` in the JSON).

Each N is filtered with

  (a) ``near_dup_filter(use_ray=False)``: one process, one core; the fastest of ``--repeat``
      runs (3), as timeit reports, since other work on the machine only ever adds time;
  (b) ``near_dup_filter(use_ray=True)`` on a local Ray of 2 CPUs started here (``--no-ray``: skip);
  (c) ``brute_force_filter``: Alpaca's O(N^2) greedy loop with the same fast exact ROUGE-L,
      only where its projected time (measured seconds per pair x the pairs it would compare,
      known from the kept set) is under ``--bf-cap-s`` (default 300 s: with 80% of the rows
      kept, brute force at 20k compares ~165M pairs, ~200 s on our 2 cores; 100k is ~25x that).

Prints a table and writes bench_results/bench_dedup.json: time (wall and CPU), candidate pairs,
pairs compared, kept, agreement with brute force (identical kept set, pair recall: of the
pairs brute force found above 0.7, the share our index verified), and growth (time ratio per
N ratio), in all and per phase of (a) (tokenize, signatures, LSH, verify, greedy), with the
pairs per row each phase handles. Targets (reported, not asserted): 100k in under 10 min on
2 cores, growth close to linear.

    python benchmarks/bench_dedup.py                 # 5k, 20k, 100k
    python benchmarks/bench_dedup.py --quick         # 2k, 5k
    python benchmarks/bench_dedup.py --sizes 5000,20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lamini.generate.dedup.neardup import (  # noqa: E402
    NearDupResult,
    brute_force_filter,
    near_dup_filter,
    pair_recall,
)
from lamini.generate.dedup.rouge import tokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RAY_TMP = "/tmp/lamini-neardup-ray"
PHASES = ("tokenize_s", "signatures_s", "lsh_s", "verify_s", "greedy_s")  # near_dup_filter's timings

# Small hand-written synonym table for instruction verbs and nouns: enough to make variants
# that a paraphrasing model might produce, deterministic and dependency-free.
SYNONYMS = {
    "give": ["provide", "list", "offer"], "write": ["compose", "create", "draft"],
    "describe": ["explain", "outline", "detail"], "explain": ["describe", "clarify"],
    "list": ["name", "enumerate", "give"], "generate": ["create", "produce", "come up with"],
    "create": ["make", "generate", "design"], "find": ["identify", "determine", "locate"],
    "following": ["given", "below", "next"], "short": ["brief", "concise"], "tips": ["suggestions", "ideas"],
    "story": ["tale", "narrative"], "sentence": ["phrase", "statement"], "article": ["essay", "piece"],
    "good": ["great", "nice"], "make": ["create", "build"], "best": ["top", "ideal"], "ways": ["methods", "approaches"],
    "examples": ["instances", "samples"], "important": ["key", "crucial"], "identify": ["find", "name"],
    "summarize": ["sum up", "condense"], "suggest": ["recommend", "propose"], "classify": ["categorize", "sort"],
    "rewrite": ["rephrase", "reword"], "text": ["passage", "paragraph"], "word": ["term"], "what": ["which"],
    "three": ["3", "several"], "five": ["5", "a few"], "two": ["2", "a couple of"], "about": ["on", "regarding"],
}  # fmt: skip
FILLERS_BEFORE = ["Please", "Can you", "Could you please", "Now,", "Kindly", "I need you to"]
FILLERS_AFTER = ["please.", "in detail.", "briefly.", "for me.", "now.", "in simple terms."]

# The data (see the module docstring): shares that hold at every N.
DUP_SHARE = 0.2  # share of the N rows that are paraphrase-like variants of a base
VARIANTS_PER_BASE = (3, 4)  # variants per base that gets any (drawn per base)
PARAPHRASE_OPS = (1, 1, 2, 2, 3, 4)  # edits per variant (drawn per variant)
REAL_BASE_SHARE = 0.05  # share of the bases that are real instructions verbatim (at most the 5,252 there are)
ANCHORS = frozenset("a an the about of for on to that with from in into between how why what whether if as".split())
CONNECTORS = [",", ":", " -", ";", ", where", ", since", ", while", ", when", ", because", ", with", ", if", ", as",
              ", given that", ", so that"]  # fmt: skip
WINDOW_OFFSETS = (0, 3)  # the sentence pool is cut into windows twice, from word 0 and from word 3
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[,;:.]?")


def paraphrase(text: str, rng: random.Random, n_ops: int) -> str:
    """One paraphrase-like variant of ``text``: ``n_ops`` random edits, reproducible from ``rng``."""
    words = text.split()
    for _ in range(n_ops):
        op = rng.randrange(7)
        if op == 0 and len(words) > 3:  # drop a word
            del words[rng.randrange(len(words))]
        elif op == 1 and len(words) > 2:  # swap two neighbours
            i = rng.randrange(len(words) - 1)
            words[i], words[i + 1] = words[i + 1], words[i]
        elif op == 2:  # synonym, else duplicate a word
            spots = [i for i, w in enumerate(words) if w.lower().strip(".,?!:") in SYNONYMS]
            if spots:
                i = rng.choice(spots)
                words[i] = rng.choice(SYNONYMS[words[i].lower().strip(".,?!:")])
            elif words:
                i = rng.randrange(len(words))
                words.insert(i, words[i])
        elif op == 3:  # filler in front
            words = rng.choice(FILLERS_BEFORE).split() + ([words[0].lower()] + words[1:] if words else [])
        elif op == 4:  # filler at the end
            words = words + rng.choice(FILLERS_AFTER).split()
        elif op == 5:  # case change: no effect on ROUGE-L, still a new string
            words = [w.upper() if rng.random() < 0.5 else w.lower() for w in words]
        else:  # punctuation change: also invisible to the tokenizer
            words = [w.rstrip(".?!") for w in words] + (["?"] if rng.random() < 0.5 else ["!"])
    return " ".join(words)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _split_instruction(text: str) -> tuple[str, str, str] | None:
    """(head, anchor, rest) of a real instruction's first line, or None when under 4 words.

    head: the words up to and including the first anchor word (article, preposition,
    question word) among words 2-6 ("Write a", "Give three tips for", "Explain why");
    else the first 3 words (anchor ""). rest: the words after it, trailing punctuation off.
    """
    words = text.split("\n")[0].split()
    if len(words) < 4:
        return None
    cut, anchor = 3, ""
    for i in range(1, min(6, len(words) - 2)):
        if words[i].lower() in ANCHORS:
            cut, anchor = i + 1, words[i].lower()
            break
    rest = " ".join(words[cut:]).rstrip(".?!:;,")
    return (" ".join(words[:cut]), anchor, rest) if rest else None


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()]


@functools.lru_cache(maxsize=1)
def load_pieces() -> dict[str, Any]:
    """Everything the data is made of, all real text from ``DATA``, in a fixed order.

    seeds: the 175 self-instruct seed instructions (the reference). real: the Alpaca and
    user-oriented instructions (5,252). splits: (head, anchor, rest) of each real instruction
    with at least 4 words. by_anchor: anchor -> the rests of the instructions whose head
    ends with that anchor. windows: runs of 5-9 mostly alphabetic words cut from the
    sentences of Alpaca outputs and inputs, the seed and user-oriented instances and the P3
    prompts and completions (each distinct sentence of 5+ words once): first every
    sentence cut from its first word, shuffled, then cut again from its fourth word (windows
    that only half overlap the first cut's), shuffled.
    """
    seed_rows = [json.loads(line) for line in (DATA / "self_instruct_seed_tasks.jsonl").open()]
    seeds = [_clean(r["instruction"]) for r in seed_rows]
    alpaca = json.loads((DATA / "alpaca_5000.json").read_text())
    user = [json.loads(line) for line in (DATA / "user_oriented_instructions.jsonl").open()]
    real = [_clean(r["instruction"]) for r in alpaca] + [_clean(r["instruction"]) for r in user]
    splits = [sp for sp in map(_split_instruction, real) if sp]
    by_anchor: dict[str, list[str]] = {}
    for _, anchor, rest in splits:
        by_anchor.setdefault(anchor, []).append(rest)
    texts = [r[f] for r in alpaca for f in ("input", "output")]
    texts += [x[f] for r in user + seed_rows for x in r["instances"] for f in ("input", "output")]
    for path in sorted((DATA / "p3_sample").glob("*.jsonl")):
        for line in path.open():
            row = json.loads(line)
            texts += [row["prompt"], row["completion"].replace("<|endoftext|>", "")]
    sentences = sorted({s for t in texts for s in _sentences(t) if len(s.split()) >= 5})
    windows: list[str] = []
    for offset in WINDOW_OFFSETS:  # one pass per offset; each pass shuffled on its own
        rng, seen, part = random.Random(offset), set(), []
        for sent in sentences:
            words, i = sent.split(), offset
            while len(words) - i >= 5:
                win = words[i : i + rng.randint(5, 9)]
                i += len(win)
                text = " ".join(win).strip(",;:.!?\"'()[]")
                wordy = sum(bool(_WORD.fullmatch(w)) for w in win) >= 0.8 * len(win)  # mostly words, not code
                if len(win) >= 5 and wordy and text.lower() not in seen:
                    seen.add(text.lower())
                    part.append(text[0].lower() + text[1:] if text[1:2].islower() else text)
        rng.shuffle(part)
        windows += part
    return {"seeds": seeds, "real": real, "splits": splits, "by_anchor": by_anchor, "windows": windows}


def synthetic_base(k: int, rng: random.Random, pieces: dict[str, Any]) -> str:
    """The k-th synthetic base: real head + a real rest after the same anchor + connector + real window.

    "Write a" (from one instruction) + "catchy headline for a new" (3-6 words of the rest of
    another instruction whose head also ended in "a") + ", given that" + "plants need
    sunlight, water and nutrients" (window k of the pool, so each window serves one base; past
    the pool's end, ~92k windows, they are used again). Head and rest repeat across bases as
    real templates do; the window makes each base distinct.
    """
    head, anchor, _ = rng.choice(pieces["splits"])
    rest = rng.choice(pieces["by_anchor"][anchor]).split()[: rng.randint(3, 6)]
    while len(rest) > 1 and rest[-1].lower().strip(",;:") in ANCHORS | {"and", "or"}:
        rest.pop()
    windows = pieces["windows"]
    return f"{head} {' '.join(rest).rstrip(',;:')}{rng.choice(CONNECTORS)} {windows[k % len(windows)]}."


def make_candidates(n: int, seed: int = 0) -> tuple[list[str], list[str], dict[str, Any]]:
    """(reference = seeds, n candidates, data summary) at a duplicate density that does not depend on n.

    Bases: ``n - round(DUP_SHARE * n)`` distinct texts, of which ``REAL_BASE_SHARE`` are real
    Alpaca / user-oriented instructions (sampled; capped by the 5,252 there are) and the rest
    :func:`synthetic_base`. Variants: bases drawn without replacement from bases + seeds,
    each given ``VARIANTS_PER_BASE`` (drawn per base) :func:`paraphrase` variants until n rows.
    Shuffled.
    """
    pieces = load_pieces()
    rng = random.Random(seed)
    n_var = round(DUP_SHARE * n)
    n_base = n - n_var
    n_real = min(len(pieces["real"]), round(REAL_BASE_SHARE * n_base))
    bases = rng.sample(pieces["real"], n_real)
    bases += [synthetic_base(k, rng, pieces) for k in range(n_base - n_real)]
    pool = bases + pieces["seeds"]
    out, picked, seed_picked = list(bases), 0, 0
    for b in rng.sample(range(len(pool)), len(pool)):
        if len(out) >= n:
            break
        picked += 1
        seed_picked += b >= len(bases)
        for _ in range(min(rng.choice(VARIANTS_PER_BASE), n - len(out))):
            out.append(paraphrase(pool[b], rng, rng.choice(PARAPHRASE_OPS)))
    rng.shuffle(out)
    summary = {
        "rows": n, "real_bases": n_real, "synthetic_bases": n_base - n_real, "variants": n - n_base,
        "bases_with_variants": picked, "seeds_with_variants": seed_picked,
        "window_pool": len(pieces["windows"]), "windows_reused": max(0, n_base - n_real - len(pieces["windows"])),
    }  # fmt: skip
    return pieces["seeds"], out, summary


def _brute_pairs(res: NearDupResult, cands: list[str], ref: list[str]) -> int:
    """Pairs brute force compares given this kept set: each candidate x (references + kept before it)."""
    n_ref = sum(1 for r in ref if tokenize(r))
    kept_before, total = 0, 0
    for text, keep in zip(cands, res.keep):
        if tokenize(text):
            total += n_ref + kept_before
            kept_before += keep
    return total


def run_size(n: int, args, bf_rate: float | None) -> tuple[dict[str, Any], float | None]:
    """One N: ours (local, then Ray if asked), brute force when its projection fits the cap."""
    ref, cands, data = make_candidates(n)
    runs = []  # (wall, cpu, result): best of --repeat, as timeit does (interference only adds time)
    for _ in range(args.repeat):
        t, c = time.perf_counter(), time.process_time()
        res = near_dup_filter(cands, ref, use_ray=False)
        runs.append((time.perf_counter() - t, time.process_time() - c, res))
    ours_s, ours_cpu, ours = min(runs, key=lambda x: x[0])
    assert all((r.keep, r.dropped_by) == (ours.keep, ours.dropped_by) for _, _, r in runs)
    st = dict(ours.stats)
    large = st.pop("large_buckets")
    row: dict[str, Any] = {
        "n": n, "data": data, "ours_s": ours_s, "ours_cpu_s": ours_cpu, "ours_runs_s": [r[0] for r in runs],
        "kept": ours.kept,
        "candidate_pairs": ours.candidate_pairs, "pairs_compared": ours.pairs_compared,
        "timings": ours.timings, "stats": {**st, "large_buckets": len(large)},
        "per_row": {  # what each phase handles per candidate row: constant for linear growth
            "pairs_generated": st["pairs_generated"] / n, "pairs_after_length": st["pairs_after_length"] / n,
            "pairs_compared": ours.pairs_compared / n, "dup_edges": st["dup_edges"] / n, "kept": ours.kept / n,
        },
    }  # fmt: skip
    if args.ray:
        t = time.perf_counter()
        on_ray = near_dup_filter(cands, ref, use_ray=True)
        row["ray_s"] = time.perf_counter() - t
        row["ray_timings"] = on_ray.timings
        row["ray_same_as_local"] = (on_ray.keep, on_ray.dropped_by) == (ours.keep, ours.dropped_by)
    bf_pairs = _brute_pairs(ours, cands, ref)
    projected = bf_pairs * bf_rate if bf_rate else (None if n <= 10_000 else float("inf"))
    if projected is not None and projected >= args.bf_cap_s:
        row.update(bf_s=None, bf_projected_s=projected, bf_pairs_projected=bf_pairs)
        return row, bf_rate
    t = time.perf_counter()
    bf = brute_force_filter(cands, ref)
    bf_s = time.perf_counter() - t
    found, total = pair_recall(bf, ours)  # of brute force's pairs above 0.7, how many we verified
    row.update(
        bf_s=bf_s, bf_pairs_compared=bf.pairs_compared, bf_kept=bf.kept, speedup=bf_s / ours_s,
        same_kept=ours.keep == bf.keep, same_dropped_by=ours.dropped_by == bf.dropped_by,
        dup_pairs=total, pairs_found=found, pair_recall=found / total if total else None,
    )  # fmt: skip
    return row, bf_s / max(bf.pairs_compared, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="5000,20000,100000", help="comma-separated N")
    ap.add_argument("--quick", action="store_true", help="small smoke run: N = 2000, 5000")
    ap.add_argument("--bf-cap-s", type=float, default=300.0, help="run brute force only if projected under this")
    ap.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray (2 CPUs) runs of ours")
    ap.add_argument("--repeat", type=int, default=3, help="runs of (a) per N; the fastest is reported")
    ap.add_argument("--out", default=str(ROOT / "bench_results" / "bench_dedup.json"))
    args = ap.parse_args()
    sizes = [2000, 5000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=RAY_TMP, log_to_driver=False, configure_logging=False)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    bf_rate = None  # seconds per compared pair, from the last brute-force run
    try:
        for n in sizes:
            row, bf_rate = run_size(n, args, bf_rate)
            rows.append(row)
            print(_line(row), flush=True)
    finally:
        if args.ray:
            ray.shutdown()  # only the Ray this script started
    for prev, cur in zip(rows, rows[1:]):
        cur["growth"] = (cur["ours_s"] / prev["ours_s"]) / (cur["n"] / prev["n"])
        cur["growth_cpu"] = (cur["ours_cpu_s"] / prev["ours_cpu_s"]) / (cur["n"] / prev["n"])
        cur["dup_edges_ratio"] = cur["stats"]["dup_edges"] / max(prev["stats"]["dup_edges"], 1)
        cur["phase_growth"] = {
            k: (cur["timings"][k] / prev["timings"][k]) / (cur["n"] / prev["n"]) if prev["timings"][k] > 0 else None
            for k in PHASES
        }
    _report(rows, args.out, load_before)


def _line(r: dict[str, Any]) -> str:
    bf = f"{r['bf_s']:.1f}s" if r.get("bf_s") is not None else f"skipped (projected {r.get('bf_projected_s', 0):.0f}s)"
    agree = f" same_kept={r['same_kept']} recall={_fmt(r['pair_recall'], '.4f')} of {r['dup_pairs']}" if "same_kept" in r else ""
    ray = f" | ray {r['ray_s']:.1f}s same={r['ray_same_as_local']}" if "ray_s" in r else ""
    return (
        f"N={r['n']:>7} ours {r['ours_s']:7.1f}s (cpu {r['ours_cpu_s']:.1f}s) kept {r['kept']:>6} "
        f"cand {r['candidate_pairs']:>10} compared {r['pairs_compared']:>9}{ray} | brute force {bf}{agree}"
    )


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _report(rows: list[dict[str, Any]], out: str, load_before: tuple[float, ...]) -> None:
    head = ("N", "ours s", "cpu s", "ray s", "brute s", "cand pairs", "compared", "bf compared", "kept", "same", "recall", "growth")
    print("\n" + " ".join(f"{h:>11}" for h in head))
    for r in rows:
        cells = (
            r["n"], _fmt(r["ours_s"], ".1f"), _fmt(r["ours_cpu_s"], ".1f"), _fmt(r.get("ray_s"), ".1f"),
            _fmt(r.get("bf_s"), ".1f") if r.get("bf_s") is not None else f"~{r.get('bf_projected_s', 0):.0f}*",
            r["candidate_pairs"], r["pairs_compared"], r.get("bf_pairs_compared", r.get("bf_pairs_projected", "-")),
            r["kept"], _fmt(r.get("same_kept"), ""), _fmt(r.get("pair_recall"), ".4f"), _fmt(r.get("growth"), ".2f"),
        )  # fmt: skip
        print(" ".join(f"{str(c):>11}" for c in cells))
    print("(* brute force not run: projected seconds from the measured rate and the pairs it would compare)")
    print("\nper phase of (a): seconds (growth vs the previous N), and what each handles per row")
    tail = f" {'gen/row':>8} {'cmp/row':>8} {'dup/row':>8} {'kept':>6}"
    print(f"{'N':>8} " + " ".join(f"{p[:-2]:>17}" for p in PHASES) + tail)
    for r in rows:
        g = r.get("phase_growth", {})
        cells = [f"{r['timings'][p]:.2f}" + (f" ({g[p]:.2f})" if g.get(p) is not None else "") for p in PHASES]
        pr = r["per_row"]
        tail = f" {pr['pairs_generated']:>8.1f} {pr['pairs_compared']:>8.2f} {pr['dup_edges']:>8.3f} {pr['kept']:>6.3f}"
        print(f"{r['n']:>8} " + " ".join(f"{c:>17}" for c in cells) + tail)
    big = [r for r in rows if r["n"] >= 100_000]
    targets = {
        "100k_under_10_min": (big[0]["ours_s"] < 600) if big else None,
        "growth_close_to_linear (time ratio / N ratio < 1.5)": all(r["growth"] < 1.5 for r in rows[1:]) if len(rows) > 1 else None,
        "identical_kept_where_brute_force_ran": all(r["same_kept"] for r in rows if "same_kept" in r),
        "pair_recall_at_least_0.99": all(r["pair_recall"] >= 0.99 for r in rows if r.get("pair_recall") is not None),
    }
    print("targets:", json.dumps(targets))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "note": "ours_s: one process (use_ray=False), the fastest of ours_runs_s; ray_s: use_ray=True on a "
        "local Ray of 2 CPUs; growth: (time ratio) / (N ratio) between consecutive sizes",
        "data": {"dup_share": DUP_SHARE, "variants_per_base": VARIANTS_PER_BASE, "real_base_share": REAL_BASE_SHARE,
                 "paraphrase_ops": PARAPHRASE_OPS, "window_offsets": WINDOW_OFFSETS,
                 "about": "bases = real instructions + recombinations of real instruction pieces and real sentence "
                 "windows; a fixed share of rows are paraphrase-like variants, a fixed number per base: "
                 "the same duplicate density at every N (module docstring)"},
        "rows": rows,
        "targets": targets,
    }  # fmt: skip
    Path(out).write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
