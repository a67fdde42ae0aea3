"""`lamini instructions`: new instructions from seed corpora, in rounds, until targets are met.

Paper section 3.1. Each round, for every source still short of its target, prompts are built
(example-guided, Figure 6, or topic-guided, Figure 7), answered by the teacher through the
same resumable Ray Data core as responses, parsed, filtered (exact dedup, length, blacklist,
language/garbage, then near-duplicates at ROUGE-L > 0.7 against the seeds and every accepted
instruction), and the accepted ones are recorded. Generation stops when every source has its
target or the budget (rounds, requests, tokens) runs out.

Run directory layout (under `instructions/` of the run):
    round_000/shards, round_000/dataset/responses.parquet   raw teacher outputs (kept for audit)
    round_000/accepted.parquet                            written last: the round is done
    round_000/dropped.parquet                             rejected candidates with the reason
    round_000/report.json                                 parse outcomes and per-filter counts
A killed run resumes: finished rounds are loaded, the unfinished one re-sends only prompts
with no output (prompts are rebuilt identically from the recorded seed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field

import pyarrow as pa

from lamini.corpus.schema import INSTRUCTION, INSTRUCTION_SOURCE, LAMINI_SCHEMA
from lamini.generate.config import (
    BudgetConfig,
    FilterConfig,
    GenerationSourceSpec,
    InstructionsConfig,
)
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

# An accepted instruction: its LaMini columns (no response yet), then where it was generated.
CANDIDATE_SCHEMA = pa.schema(
    [
        LAMINI_SCHEMA.field(INSTRUCTION),
        LAMINI_SCHEMA.field(INSTRUCTION_SOURCE),
        ("subset", pa.string()),
        ("round", pa.int64()),
        ("prompt_id", pa.string()),
        ("position", pa.int64()),
    ]
)


# Drop reasons of the filters that run after apply_filters has added a candidate to `seen`.
AFTER_EXACT_DEDUP = frozenset({"near_duplicate", "over_target"})


@dataclass
class GenerationState:
    """Where instruction generation stands: accepted rows per source, spend, per-round reports."""

    accepted: dict[str, list[dict]] = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    stop_reason: str = ""

    def count(self, name: str) -> int:
        return len(self.accepted.get(name, []))

    def truncated(self) -> dict[str, int]:
        """Answers cut off by max_tokens over all rounds, per source (their cut item was dropped)."""
        out: dict[str, int] = {}
        for r in self.rounds:
            for name, n in r.get("truncated_by_source", {}).items():
                out[name] = out.get(name, 0) + n
        return out

    def table(self) -> pa.Table:
        rows = [r for name in sorted(self.accepted) for r in self.accepted[name]]
        return pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)


def _load_seeds(specs: list[GenerationSourceSpec], on_error: str, run: RunDir) -> dict[str, pa.Table]:
    from lamini.corpus import RejectLog, read_corpus

    rejects = RejectLog()
    seeds = {s.name: read_corpus(s.seeds, on_error=on_error, rejects=rejects) for s in specs}
    rejects.write(run.uri_of("seed_rejects.jsonl"))
    return seeds


def _seed_texts(seeds: dict[str, pa.Table]) -> list[str]:
    """Every seed as the teacher may have seen it and as it may copy it: the joined prompt
    ("instruction:input") and the bare instruction (what self-instruct/Alpaca-format examples show).
    With the prompt alone, a word-for-word copy of a seed instruction whose input is long scores
    ROUGE-L <= 0.7 against it and would pass both the exact and the near-duplicate filter."""
    texts: list[str] = []
    for t in seeds.values():
        for instruction, prompt in zip(t.column("instruction").to_pylist(), t.column("prompt").to_pylist()):
            texts.extend(x for x in (prompt, instruction) if x and x.strip())
    return list(dict.fromkeys(texts))


def _parse_round(outputs: pa.Table, round_no: int) -> tuple[list[dict], dict[str, int]]:
    """Raw teacher outputs -> candidate rows, in prompt order; counts of parse outcomes."""
    from lamini.generate.parse import parse_instructions

    outcomes: dict[str, int] = {}
    cands: list[dict] = []
    rows = sorted(outputs.to_pylist(), key=lambda r: r["id"])
    for r in rows:
        parsed = parse_instructions(r.get("response"), r.get("finish_reason"))
        outcomes[parsed.reason] = outcomes.get(parsed.reason, 0) + 1
        if parsed.truncated_dropped:
            outcomes["truncated_last_dropped"] = outcomes.get("truncated_last_dropped", 0) + 1
        for i, text in enumerate(parsed.instructions):
            cands.append(
                {
                    "instruction": text,
                    "instruction_source": r["instruction_source"],
                    "subset": r.get("subset") or "",
                    "round": round_no,
                    "prompt_id": r["id"],
                    "position": i,
                }
            )
    return cands, outcomes


def _truncated_by_source(outputs: pa.Table) -> dict[str, int]:
    """Answers the teacher was cut off in (finish_reason "length"), per source: their complete
    instructions are kept, the one being written is dropped (lamini.generate.parse)."""
    counts: dict[str, int] = {}
    if not outputs.num_rows:
        return counts
    for src, finish in zip(outputs.column("instruction_source").to_pylist(), outputs.column("finish_reason").to_pylist()):
        if finish == "length":
            counts[src] = counts.get(src, 0) + 1
    return counts


def _with_schema(prompts: pa.Table, structured_output: str, max_tokens: int | None) -> pa.Table:
    """The round's prompts, each carrying the JSON schema of its own per_call when output is
    constrained, its strings bounded so that a first item fits in max_tokens."""
    from lamini.generate.structured import (
        RESPONSE_SCHEMA,
        instructions_schema,
        schema_text,
    )

    if structured_output == "off":
        return prompts
    texts = {n: schema_text(instructions_schema(n, max_tokens)) for n in set(prompts.column("per_call").to_pylist())}
    return prompts.append_column(RESPONSE_SCHEMA, pa.array([texts[n] for n in prompts.column("per_call").to_pylist()], pa.string()))


def _filter_round(
    cands: pa.Table,
    state: GenerationState,
    seed_texts: list[str],
    seen: set[str],
    specs: list[GenerationSourceSpec],
    filters: FilterConfig,
):
    """Apply every filter in order; trim each source to its target. Returns kept, dropped, counts."""
    from lamini.generate.dedup.neardup import near_dup_filter_table
    from lamini.generate.filters import apply_filters

    kept, dropped, counts = apply_filters(cands, "instruction", filters, seen)
    reference = seed_texts + [r["instruction"] for rows in state.accepted.values() for r in rows]
    kept, near, near_report = near_dup_filter_table(kept, "instruction", reference, filters)
    counts["near_duplicate"] = near.num_rows
    parts = [dropped, near]
    # Over target: keep the first `missing` of each source, in generation order.
    keep_rows, over_rows = [], []
    taken: dict[str, int] = {}
    targets = {s.name: s.target for s in specs}
    for r in kept.to_pylist():
        name = r["instruction_source"]
        room = targets[name] - state.count(name) - taken.get(name, 0)
        if room > 0:
            keep_rows.append(r)
            taken[name] = taken.get(name, 0) + 1
        else:
            over_rows.append({**r, "drop_reason": "over_target"})
    counts["over_target"] = len(over_rows)
    if over_rows:
        parts.append(pa.Table.from_pylist(over_rows))
    kept = pa.Table.from_pylist(keep_rows, schema=kept.schema) if keep_rows else kept.slice(0, 0)
    nonempty = [p for p in parts if p.num_rows]
    dropped_all = pa.concat_tables(nonempty, promote_options="permissive") if nonempty else dropped
    return kept, dropped_all, counts, near_report


def _prompt_tokens_bound(tables: dict[str, pa.Table], state: GenerationState) -> float:
    """Prompt tokens one request of this round is taken to cost: the most per request that an
    earlier round measured, else (round 0) the longest prompt's characters / 3 (English BPE
    averages about 4 characters a token, so this errs high)."""
    # usage comes with answered requests only: per answer, not per attempt (retries carry none)
    measured = [r["prompt_tokens"] / r["outputs_ok"] for r in state.rounds if r.get("outputs_ok") and "prompt_tokens" in r]
    if measured:
        return max(measured)
    longest = max((len(p) for t in tables.values() for p in t.column("prompt").to_pylist()), default=0)
    return longest / 3


def size_round(
    wanted: dict[str, int], budget: BudgetConfig, state: GenerationState, prompt_tokens: float, max_tokens: int
) -> tuple[dict[str, int], str | None]:
    """How many prompts each short source sends this round, within what is left of the budget:
    ({source: prompts}, None), or ({}, stop reason) when not one more request fits.

    The whole round is sized before it is sent, for every source together (sizing each source
    against the same remainder let k short sources spend k times it). A request is charged its
    prompt estimate plus `max_tokens` (the most the teacher may write), so the token budget is
    not overrun unless prompts are longer than estimated. Each prompt is charged one request;
    the spent count adds the round's attempts afterwards, so retries can take it past the cap
    by their number. When the budget is short, prompts are dealt one per source in turn, so
    every short source keeps progressing.
    """
    cap: float = math.inf
    if budget.max_requests is not None:
        cap = budget.max_requests - state.requests
        if cap <= 0:
            return {}, "request budget spent"
    if budget.max_tokens is not None:
        per_request = math.ceil(prompt_tokens) + max_tokens
        by_tokens = (budget.max_tokens - state.tokens) // per_request
        if by_tokens <= 0:
            return {}, "token budget spent"
        cap = min(cap, by_tokens)
    if sum(wanted.values()) <= cap:
        return dict(wanted), None
    sizes = dict.fromkeys(wanted, 0)
    left = int(cap)
    while left:
        for name, n in wanted.items():
            if left and sizes[name] < n:
                sizes[name] += 1
                left -= 1
    return sizes, None


def generate_instructions(cfg: InstructionsConfig) -> GenerationState:
    """Run (or resume) generation rounds under cfg.run_dir/instructions until targets or budget;
    returns the state. (`lamini dataset` passes ``DatasetConfig.instructions_config()``, whose
    run_dir is the dataset's.)"""
    from lamini.generate.filters import normalize
    from lamini.generate.prompts import build_prompts
    from lamini.generate.topics import load_topics
    from lamini.runs.answer import answer_table

    run = RunDir(RunDir(cfg.run_dir).uri_of("instructions"))
    sources, budget = cfg.sources, cfg.budget
    seeds = _load_seeds(sources, cfg.on_error, run)
    topics = {s.name: load_topics(s.topics) for s in sources if s.mode == "topic"}
    seed_texts = _seed_texts(seeds)
    seen = {normalize(t) for t in seed_texts}
    state = GenerationState(accepted={s.name: [] for s in sources})

    for round_no in range(budget.max_rounds):
        rdir = f"round_{round_no:03d}"
        if run.exists(rdir, "accepted.parquet"):  # a finished round: load it, do not redo it
            acc = run.read_table(f"{rdir}/accepted.parquet")
            report = json.loads(run.read_text(f"{rdir}/report.json"))
            for r in acc.to_pylist():
                state.accepted.setdefault(r["instruction_source"], []).append(
                    {k: r[k] for k in CANDIDATE_SCHEMA.names}
                )
                seen.add(normalize(r["instruction"]))
            # Candidates that passed the exact-dedup pass but were dropped after it (near duplicate,
            # over target) are in `seen` in an unbroken run too: a resumed run must hold them alike.
            if run.exists(rdir, "dropped.parquet"):
                for r in run.read_table(f"{rdir}/dropped.parquet").select(["instruction", "drop_reason"]).to_pylist():
                    if r["drop_reason"] in AFTER_EXACT_DEDUP:
                        seen.add(normalize(r["instruction"]))
            state.rounds.append(report)
            state.requests += report["requests"]
            state.tokens += report["tokens"]
            continue
        short = [s for s in sources if state.count(s.name) < s.target]
        if not short:
            state.stop_reason = "targets reached"
            break
        wanted = {s.name: max(1, math.ceil((s.target - state.count(s.name)) * cfg.overgenerate / s.per_call)) for s in short}
        tables = {
            s.name: build_prompts(s, seeds[s.name], wanted[s.name], seed=cfg.seed, round=round_no, topics=topics.get(s.name))
            for s in short
        }  # fmt: skip
        sizes, stop = size_round(wanted, budget, state, _prompt_tokens_bound(tables, state), cfg.generation.max_tokens)
        if stop:
            state.stop_reason = stop
            break
        prompts = pa.concat_tables([tables[name].slice(0, n) for name, n in sizes.items() if n])
        prompts = _with_schema(prompts, cfg.structured_output, cfg.generation.max_tokens)
        log.info("round %d: %d prompts for %s", round_no, prompts.num_rows, [s.name for s in short])
        round_run = RunDir(run.uri_of(rdir))
        done = answer_table(
            prompts, round_run, teacher=cfg.teacher, generation=cfg.generation, system_prompt=None,
            pipeline=cfg.pipeline, ray_cfg=cfg.ray,
        )  # fmt: skip
        # finalize always writes responses.parquet (empty when every request failed)
        outputs = round_run.read_table("dataset/responses.parquet")
        cand_rows, outcomes = _parse_round(outputs, round_no)
        cands = pa.Table.from_pylist(cand_rows, schema=CANDIDATE_SCHEMA)
        kept, dropped, counts, near_report = _filter_round(cands, state, seed_texts, seen, sources, cfg.filters)
        accepted_by_source = {s.name: 0 for s in sources}
        for r in kept.to_pylist():
            state.accepted[r["instruction_source"]].append({k: r[k] for k in CANDIDATE_SCHEMA.names})
            accepted_by_source[r["instruction_source"]] += 1
        spent_tokens = done.counts.prompt_tokens + done.counts.completion_tokens
        report = {
            "round": round_no,
            "prompts": prompts.num_rows,
            "outputs_ok": done.counts.ok,
            "output_errors": done.counts.errors,
            "parse_outcomes": outcomes,
            "truncated_by_source": _truncated_by_source(outputs),
            "candidates": cands.num_rows,
            "dropped_by_filter": counts,
            "accepted": kept.num_rows,
            "accepted_by_source": accepted_by_source,
            "near_dup": {k: v for k, v in near_report.items() if isinstance(v, (int, float, str))},
            "requests": done.counts.requests,
            "tokens": spent_tokens,
            "prompt_tokens": done.counts.prompt_tokens,
        }
        state.requests += done.counts.requests
        state.tokens += spent_tokens
        state.rounds.append(report)
        if dropped.num_rows:
            run.write_table(f"{rdir}/dropped.parquet", dropped)
        run.write_text(f"{rdir}/report.json", json.dumps(report, indent=2))
        # written last and atomically: accepted.parquet appearing is what marks the round done
        run.write_table(f"{rdir}/accepted.parquet", kept.select(CANDIDATE_SCHEMA.names).cast(CANDIDATE_SCHEMA))
        log.info("round %d: %d candidates, %d accepted, dropped %s", round_no, cands.num_rows, kept.num_rows, counts)
    else:  # every round ran without a break: each break above sets its own reason
        done_all = all(state.count(s.name) >= s.target for s in sources)
        state.stop_reason = "targets reached" if done_all else "round budget spent"
    return state


@dataclass
class InstructionsSummary:
    run_dir: str
    targets: dict[str, int]
    accepted: dict[str, int]
    rounds: int
    requests: int
    tokens: int
    stop_reason: str
    wall_s: float
    missing: int = 0  # instructions are not input rows: nothing can be "missing" here
    truncated: dict[str, int] | None = None  # answers cut off by max_tokens, per source

    def line(self) -> str:
        per = ", ".join(f"{k}: {self.accepted[k]}/{self.targets[k]}" for k in self.targets)
        return (
            f"instructions: {per} | {self.rounds} rounds | {self.requests} requests | {self.tokens} tokens | "
            f"{sum((self.truncated or {}).values())} answers truncated | "
            f"stopped: {self.stop_reason} | {self.wall_s:.1f} s -> {self.run_dir}/dataset/instructions.parquet"
        )


def run_instructions(cfg: InstructionsConfig) -> InstructionsSummary:
    """`lamini instructions`: run or resume generation for an InstructionsConfig."""
    from lamini.runs import manifest as mf

    t0 = time.time()
    run = RunDir(cfg.run_dir)
    state = generate_instructions(cfg)
    run.makedirs("dataset")
    run.write_table("dataset/instructions.parquet", state.table())
    summary = InstructionsSummary(
        run_dir=run.uri,
        targets={s.name: s.target for s in cfg.sources},
        accepted={s.name: state.count(s.name) for s in cfg.sources},
        rounds=len(state.rounds),
        requests=state.requests,
        tokens=state.tokens,
        stop_reason=state.stop_reason,
        wall_s=round(time.time() - t0, 3),
        truncated=state.truncated(),
    )
    mf.write(run, "instructions", cfg, seed=cfg.seed, summary=summary.__dict__, rounds=state.rounds)
    return summary
