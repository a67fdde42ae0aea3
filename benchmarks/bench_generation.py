"""Instruction generation: constrained vs unconstrained decoding, parse rate and accepted instructions per request.

Two teachers, the same real prompts (Figure 6 of the paper, three self-instruct seeds each):

  (1) the embedded SmolLM2-135M-Instruct (GGUF, CPU) through `lamini.engines.hf_local.batched_generate`,
      three ways on the same prompts and sampling settings:
        free        unconstrained (the paper's prompt alone)
        xgrammar    the library's path: HFEngine.constraint_for(schema), xgrammar's own transformers
                    LogitsProcessor (what lamini ships)
        llguidance  the same JSON schema through llguidance's matcher, in a small processor below
                    (llguidance ships bitmask helpers, no transformers processor)
      each greedy and sampled (temperature 0.7, top_p 0.9): parse rate, instructions and accepted instructions
      (after the real filters and near-duplicate check against the seeds) per request, and
      milliseconds per generated token (the constraint's overhead is the difference to `free`).
  (2) the fake OpenAI server (lamini.testing.fake_openai) through `OpenAIEngine`: unconstrained, with
      a share of answers in tagless prose (`free_text_rate`, what weak teachers do), against the same
      requests with `response_format` (the server honours the schema as a real structured-output
      endpoint does), and against a server that refuses `response_format` (the engine falls back).

Parse rate: the share of answered requests that gave at least one instruction. Prints a table and
writes benchmarks/results/bench_generation.json. Targets are reported, never asserted: parse rate
>= 95% with the constraint.

    python benchmarks/bench_generation.py            # 8 prompts x 5 instructions, 192 tokens (~5 min on 2 cores)
    python benchmarks/bench_generation.py --quick    # 2 prompts, 96 tokens
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from benchmarks.machine import offline_env  # noqa: E402

offline_env(ROOT)

import pyarrow as pa  # noqa: E402

from lamini.config import CorpusSpec, GenerationParams  # noqa: E402
from lamini.generate.config import FilterConfig, GenerationSourceSpec  # noqa: E402

SEEDS = ROOT.parent / "shared" / "data" / "self_instruct_seed_tasks.jsonl"
OUT = ROOT / "benchmarks" / "results" / "bench_generation.json"


def _prompts(n_prompts: int, per_call: int):
    """Real example-guided prompts (Figure 6) from the self-instruct seeds, and the seed texts."""
    from lamini.corpus import RejectLog, read_corpus
    from lamini.generate.instructions import _seed_texts
    from lamini.generate.prompts import build_prompts

    spec = GenerationSourceSpec(name="self_instruct_without_topic", mode="example", per_call=per_call, target=1,
                                seeds=CorpusSpec(format="self_instruct", path=str(SEEDS)))  # fmt: skip
    seeds = read_corpus(spec.seeds, rejects=RejectLog())
    return build_prompts(spec, seeds, n_prompts, seed=0, round=0), _seed_texts({spec.name: seeds})


def score(texts: list[str | None], finishes: list[str | None], seed_texts: list[str]) -> dict[str, Any]:
    """Parse every answer as the pipeline does, then the real filters: counts per request."""
    from lamini.generate.dedup.neardup import near_dup_filter_table
    from lamini.generate.filters import apply_filters, normalize
    from lamini.generate.parse import parse_instructions

    reasons: dict[str, int] = {}
    cands: list[str] = []
    unparsed: list[str] = []
    parsed_ok = 0
    for text, finish in zip(texts, finishes):
        p = parse_instructions(text, finish)
        reasons[p.reason] = reasons.get(p.reason, 0) + 1
        parsed_ok += bool(p.instructions)
        cands.extend(p.instructions)
        if not p.instructions and len(unparsed) < 3:
            unparsed.append((text or "")[:400])
    filters = FilterConfig()
    table = pa.table({"instruction": pa.array(cands, pa.string())})
    kept, _, _ = apply_filters(table, "instruction", filters, {normalize(t) for t in seed_texts})
    kept, _, _ = near_dup_filter_table(kept, "instruction", seed_texts, filters)
    n = max(len(texts), 1)
    return {
        "requests": len(texts), "parse_rate": round(parsed_ok / n, 3), "parse_outcomes": reasons,
        "instructions_per_request": round(len(cands) / n, 2), "accepted_per_request": round(kept.num_rows / n, 2),
        "truncated": sum(f == "length" for f in finishes), "unparsed_examples": unparsed,
    }  # fmt: skip


class LLGuidanceProcessor:
    """A transformers logits processor over llguidance matchers (one per row), for the comparison.

    Written here because llguidance has none of its own; the mask is applied with plain torch
    (llguidance.torch's helper is torch.compile'd, which on CPU needs a C++ toolchain)."""

    def __init__(self, tokenizer, grammar: str, batch: int):
        import llguidance
        import torch

        self._ll, self._torch = llguidance, torch
        self.matchers = [llguidance.LLMatcher(tokenizer, grammar) for _ in range(batch)]
        self.mask = torch.full((batch, (tokenizer.vocab_size + 31) // 32), -1, dtype=torch.int32)
        self.shifts = torch.arange(32, dtype=torch.int32)
        self.started = False

    def __call__(self, input_ids, scores):
        from llguidance.torch import fill_next_token_bitmask

        if self.started:
            for i, m in enumerate(self.matchers):
                if not m.is_stopped():
                    m.consume_token(int(input_ids[i, -1]))
        self.started = True
        for i, m in enumerate(self.matchers):
            if not m.is_stopped():
                fill_next_token_bitmask(m, self.mask, i)
        allowed = ((self.mask.unsqueeze(-1) >> self.shifts) & 1).reshape(self.mask.shape[0], -1)[:, : scores.shape[1]]
        if allowed.shape[1] < scores.shape[1]:  # logits past the tokenizer's vocabulary: never allowed
            pad = self._torch.zeros(scores.shape[0], scores.shape[1] - allowed.shape[1], dtype=allowed.dtype)
            allowed = self._torch.cat([allowed, pad], dim=1)
        return scores.masked_fill(allowed == 0, float("-inf"))


# Greedy, and the sampling the shipped offline configs use for the 135M teacher (at T=1 over its
# whole vocabulary a model this small writes noise, constrained or not).
SAMPLING = ((0.0, 1.0), (0.7, 0.9))


MODES = ("free", "xgrammar", "llguidance")


def bench_embedded(n_prompts: int, per_call: int, max_tokens: int, batch: int, on_row=None,
                   modes=MODES, sampling=SAMPLING) -> dict[str, Any]:  # fmt: skip
    import llguidance
    import llguidance.hf

    from lamini.config import HFTeacherConfig
    from lamini.engines.base import build_request
    from lamini.engines.hf_local import HFEngine, batched_generate
    from lamini.generate.structured import instructions_schema, schema_text

    prompts, seed_texts = _prompts(n_prompts, per_call)
    schema = schema_text(instructions_schema(per_call, max_tokens))  # bounded as the pipeline bounds it
    t0 = time.perf_counter()
    engine = HFEngine(HFTeacherConfig(batch_size=batch))
    load_s = time.perf_counter() - t0
    texts = [engine.render(build_request(p, None, GenerationParams()).messages) for p in prompts.column("prompt").to_pylist()]
    vocab = max(int(engine.model.config.get_text_config().vocab_size), len(engine.tokenizer))
    ll_tok = llguidance.hf.from_tokenizer(engine.tokenizer, n_vocab=vocab, eos_token=sorted(engine.eos_ids))
    ll_grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
    t0 = time.perf_counter()
    engine.constraint_for(schema)  # xgrammar: tokenizer info + compile once per engine (cached after)
    xgr_setup_s = time.perf_counter() - t0

    mask_s = [0.0, 0]  # seconds inside the constraint's processor, calls (= decoding steps)

    def timed(proc):
        # The constraint's own cost per step, apart from the model's forward pass: on a shared
        # machine the wall time per token moves with the load, this much less.
        def call(input_ids, scores):
            t0 = time.perf_counter()
            out = proc(input_ids, scores)
            mask_s[0] += time.perf_counter() - t0
            mask_s[1] += 1
            return out

        return call

    def processor(mode: str, rows: int):
        if mode == "xgrammar":
            return [timed(engine.constraint_for(schema))]
        if mode == "llguidance":
            return [timed(LLGuidanceProcessor(ll_tok, ll_grammar, rows))]
        return None

    out: dict[str, Any] = {"model": engine.describe(), "load_s": round(load_s, 2), "xgrammar_setup_s": round(xgr_setup_s, 3),
                           "prompts": n_prompts, "per_call": per_call, "max_tokens": max_tokens, "runs": {}}  # fmt: skip
    for temperature, top_p in sampling:
        for mode in modes:
            answers, wall, tokens = [], 0.0, 0
            mask_s[:] = [0.0, 0]
            for start in range(0, len(texts), batch):
                chunk = texts[start : start + batch]
                t0 = time.perf_counter()
                res = batched_generate(
                    engine.model, engine.tokenizer, chunk, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                    seed=start, eos_ids=engine.eos_ids, max_input_tokens=1024, add_special_tokens=False,
                    logits_processors=processor(mode, len(chunk)),
                )  # fmt: skip
                wall += time.perf_counter() - t0
                answers.extend(res)
                tokens += sum(r.completion_tokens for r in res)
            errors = [r.error for r in answers if r.error]
            row = score([r.text for r in answers], [r.finish_reason for r in answers], seed_texts)
            row.update(wall_s=round(wall, 2), completion_tokens=tokens, ms_per_token=round(1000 * wall / max(tokens, 1), 2),
                       mask_ms_per_step=round(1000 * mask_s[0] / mask_s[1], 3) if mask_s[1] else 0.0,
                       mask_share_of_wall=round(mask_s[0] / wall, 4) if wall else 0.0,
                       errors=errors[:3], example=(answers[0].text or "")[:300])  # fmt: skip
            out["runs"][f"{mode}@T={temperature}"] = row
            print(f"  embedded {mode:>10} T={temperature}: parse {row['parse_rate']:.0%}, "
                  f"{row['instructions_per_request']} instr/req, {row['accepted_per_request']} accepted/req, "
                  f"{row['ms_per_token']} ms/token (mask {row['mask_ms_per_step']} ms/step, "
                  f"{row['mask_share_of_wall']:.1%} of wall), {row['truncated']} truncated", flush=True)  # fmt: skip
            if on_row is not None:
                on_row(out)
    for temperature, _ in sampling:
        free = out["runs"].get(f"free@T={temperature}", {}).get("ms_per_token")
        for mode in ("xgrammar", "llguidance"):
            run = out["runs"].get(f"{mode}@T={temperature}")
            if run is None or free is None:
                continue
            run["overhead_ms_per_token"] = round(run["ms_per_token"] - free, 2)
            run["time_ratio_vs_free"] = round(run["ms_per_token"] / free, 3) if free else None
    engine.close()
    return out


def bench_fake(n_prompts: int, per_call: int, free_text_rate: float) -> dict[str, Any]:
    from lamini.config import OpenAITeacherConfig
    from lamini.engines.base import build_request
    from lamini.engines.openai_http import OpenAIEngine
    from lamini.generate.structured import instructions_schema, schema_text
    from lamini.testing.fake_openai import FakeOpenAIServer

    prompts, seed_texts = _prompts(n_prompts, per_call)
    gen = GenerationParams(max_tokens=1024, temperature=1.0)
    schema = schema_text(instructions_schema(per_call, gen.max_tokens))
    out: dict[str, Any] = {"prompts": n_prompts, "per_call": per_call, "free_text_rate": free_text_rate, "runs": {}}
    with FakeOpenAIServer() as srv:
        srv.configure(free_text_rate=free_text_rate)
        for name, with_schema, supported in (("free", False, True), ("response_format", True, True),
                                             ("refused_fallback", True, False)):  # fmt: skip
            srv.configure(structured_outputs=supported)
            srv.reset_stats()
            engine = OpenAIEngine(OpenAITeacherConfig(model="fake", base_url=srv.url, max_retries=0))
            reqs = [build_request(p, None, gen, schema if with_schema else None) for p in prompts.column("prompt").to_pylist()]
            t0 = time.perf_counter()
            res = engine.generate(reqs)
            wall = time.perf_counter() - t0
            engine.close()
            row = score([r.text for r in res], [r.finish_reason if r.ok else "error" for r in res], seed_texts)
            row.update(wall_s=round(wall, 3), http_requests=srv.stats()["total_requests"])
            out["runs"][name] = row
            print(f"  fake {name:>16}: parse {row['parse_rate']:.0%}, {row['instructions_per_request']} instr/req, "
                  f"{row['accepted_per_request']} accepted/req, {row['http_requests']} HTTP requests", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 prompts, 96 tokens: a smoke run")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--per-call", type=int, default=5, help="instructions asked per prompt on the embedded teacher")
    ap.add_argument("--max-tokens", type=int, default=192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--fake-prompts", type=int, default=200)
    ap.add_argument("--free-text-rate", type=float, default=0.2, help="fake server: share of prose answers unconstrained")
    ap.add_argument("--modes", default=",".join(MODES), help="embedded contenders, comma-separated")
    ap.add_argument("--sampled-only", action="store_true", help="embedded: only T=0.7/top_p 0.9, no greedy")
    ap.add_argument("--skip-fake", action="store_true")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    if a.quick:
        a.prompts, a.max_tokens, a.fake_prompts = 2, 96, 20
    if not SEEDS.exists():
        sys.exit(f"seed data not found: {SEEDS}")
    fake = None
    if not a.skip_fake:
        print("fake OpenAI server (paper's 20 per call):", flush=True)
        fake = bench_fake(a.fake_prompts, 20, a.free_text_rate)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "load_avg_at_start": os.getloadavg(), "target_parse_rate": 0.95, "fake_server": fake}  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def save(embedded: dict) -> None:  # after every run: a long run on a busy machine keeps what it measured
        a.out.write_text(json.dumps({**result, "embedded": embedded, "load_avg_now": os.getloadavg()}, indent=2))

    print(f"embedded SmolLM2-135M ({a.prompts} prompts x {a.per_call} instructions, {a.max_tokens} tokens):", flush=True)
    sampling = SAMPLING[1:] if a.sampled_only else SAMPLING
    save(bench_embedded(a.prompts, a.per_call, a.max_tokens, a.batch, on_row=save,
                        modes=tuple(a.modes.split(",")), sampling=sampling))  # fmt: skip
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
