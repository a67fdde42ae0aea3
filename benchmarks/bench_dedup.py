"""Near-duplicate filtering at ROUGE-L > 0.7: our MinHash-LSH + exact ROUGE-L vs Alpaca's all pairs.

For each N (default 5k, 20k, 100k) the candidates are real Alpaca instructions
(../shared/data/alpaca_5000.json, up to 80% of N) plus deterministic paraphrase-like variants
of Alpaca and self-instruct seed instructions (word drops, swaps, synonyms, fillers, case and
punctuation changes) up to N, shuffled; the reference is the 175 self-instruct seeds. Each N
is filtered with

  (a) ``near_dup_filter(use_ray=False)``: one process, one core;
  (b) ``near_dup_filter(use_ray=True)`` on a local Ray of 2 CPUs started here (``--no-ray``: skip);
  (c) ``brute_force_filter``: Alpaca's O(N^2) greedy loop with the same fast exact ROUGE-L,
      only where its projected time (measured seconds per pair x the pairs it would compare,
      known from the kept set) is under ``--bf-cap-s`` (default 180 s).

Prints a table and writes bench_results/bench_dedup.json: time (wall and CPU), candidate pairs,
pairs compared, kept, agreement with brute force (identical kept set, pair recall: of the
pairs brute force found above 0.7, the share our index verified), and growth (time ratio per
N ratio). Targets (reported, not asserted): 100k in under 10 min on 2 cores, growth close to
linear.

    python benchmarks/bench_dedup.py                 # 5k, 20k, 100k
    python benchmarks/bench_dedup.py --quick         # 2k, 5k
    python benchmarks/bench_dedup.py --sizes 5000,20000
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from lamini.generate.neardup import NearDupResult, brute_force_filter, near_dup_filter, pair_recall  # noqa: E402
from lamini.generate.rouge import tokenize  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RAY_TMP = "/tmp/lamini-neardup-ray"

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


def load_real() -> tuple[list[str], list[str]]:
    """(175 self-instruct seed instructions, 5,000 Alpaca instructions)."""
    seeds = [json.loads(line)["instruction"] for line in (DATA / "self_instruct_seed_tasks.jsonl").open()]
    alpaca = [r["instruction"] for r in json.loads((DATA / "alpaca_5000.json").read_text())]
    return seeds, alpaca


def make_candidates(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(reference = seeds, n candidates: real Alpaca (up to 80%) + variants of Alpaca and seeds, shuffled)."""
    seeds, alpaca = load_real()
    rng = random.Random(seed)
    out = alpaca[: int(0.8 * n)]
    bases = alpaca + seeds
    while len(out) < n:
        out.append(paraphrase(rng.choice(bases), rng, rng.choice((1, 1, 2, 2, 3, 4))))
    rng.shuffle(out)
    return seeds, out


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
    ref, cands = make_candidates(n)
    t, c = time.perf_counter(), time.process_time()
    ours = near_dup_filter(cands, ref, use_ray=False)
    ours_s, ours_cpu = time.perf_counter() - t, time.process_time() - c
    st = dict(ours.stats)
    large = st.pop("large_buckets")
    row: dict[str, Any] = {
        "n": n, "ours_s": ours_s, "ours_cpu_s": ours_cpu, "kept": ours.kept,
        "candidate_pairs": ours.candidate_pairs, "pairs_compared": ours.pairs_compared,
        "timings": ours.timings, "stats": {**st, "large_buckets": len(large)},
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
    ap.add_argument("--bf-cap-s", type=float, default=180.0, help="run brute force only if projected under this")
    ap.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray (2 CPUs) runs of ours")
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
        "note": "ours_s: one process (use_ray=False); ray_s: use_ray=True on a local Ray of 2 CPUs; "
        "growth: (time ratio) / (N ratio) between consecutive sizes",
        "rows": rows,
        "targets": targets,
    }  # fmt: skip
    Path(out).write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
