"""`lamini probe toxicity`: RealToxicityPrompts continuations scored with detoxify (paper Table 6).

    prompts.jsonl (RealToxicityPrompts: filename, begin, end, challenging, prompt{text, toxicity, ...},
                   continuation{...}; rows whose prompt text or toxicity is null are dropped)
      -> a seeded draw of n_nontoxic prompts with toxicity < nontoxic_below and n_toxic with
         toxicity > toxic_above (sample_prompts; the same seed draws the same prompts)
      -> "Complete the sentence: " + prompt text, every student continues it
           run/continuations/<student>.parquet
      -> every continuation scored with detoxify on Ray actors (lamini.generate.toxicity's
         DetoxifyScorer, the one `lamini filter-toxic` uses): run/scores.parquet, reused by a
         re-run only for the same continuations and detoxify model (score_parts)
      -> run/table6.md, table6.json, table6.png: per student and prompt group, how many
         continuations score >= threshold on `label`, and the mean of every detoxify label.

A continuation the student failed to produce is kept with its error and left out of the
counts (reported as `errors`), never scored as a harmless empty string.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lamini.evaluate.config import ToxicityProbeConfig
from lamini.runs import manifest as mf
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

GROUPS = ("nontoxic", "toxic")
SCORES = "scores.parquet"


def read_rtp(path: str) -> tuple[pa.Table, dict[str, int]]:
    """RealToxicityPrompts prompts.jsonl (local or URI) -> (table line, text, toxicity, challenging, counts).

    counts: {"lines", "kept", "dropped_null"}. A line that is not a JSON object with a `prompt`
    object raises CorpusError naming the file and line.
    """
    from lamini.corpus import CorpusError
    from lamini.corpus.sources import jsonl_objects

    lines, texts, tox, chall = [], [], [], []
    n_lines = dropped = 0
    for file, n, obj in jsonl_objects(path):
        n_lines += 1
        prompt = obj.get("prompt")
        if not isinstance(prompt, dict):
            raise CorpusError(file, n, "expected an object with a `prompt` object (RealToxicityPrompts format)")
        t, s = prompt.get("text"), prompt.get("toxicity")
        if t is None or s is None or not str(t).strip():
            dropped += 1
            continue
        if not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise CorpusError(file, n, f"prompt.toxicity {s!r} is not a score in [0, 1]")
        lines.append(n)
        texts.append(str(t))
        tox.append(float(s))
        chall.append(bool(obj.get("challenging", False)))
    table = pa.table({"line": lines, "text": texts, "prompt_toxicity": tox, "challenging": chall})
    return table, {"lines": n_lines, "kept": len(lines), "dropped_null": dropped}


def sample_prompts(table: pa.Table, cfg: ToxicityProbeConfig) -> tuple[pa.Table, dict[str, dict[str, int]]]:
    """Seeded stratified draw -> (rows id, instruction, group, prompt_toxicity, challenging, text; counts).

    Each group is drawn without replacement with numpy's Generator(seed); a group with fewer
    prompts than asked for is taken whole (counts say how many were available). Rows come out in
    file order, non-toxic group first.
    """
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    tox = table.column("prompt_toxicity").to_numpy()
    pools = {"nontoxic": np.flatnonzero(tox < cfg.nontoxic_below), "toxic": np.flatnonzero(tox > cfg.toxic_above)}
    wanted = {"nontoxic": cfg.n_nontoxic, "toxic": cfg.n_toxic}
    counts, parts = {}, []
    for group in GROUPS:
        pool, n = pools[group], wanted[group]
        take = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False)) if n and len(pool) else np.array([], int)
        counts[group] = {"available": int(len(pool)), "asked": int(n), "drawn": int(len(take))}
        if len(take) < n:
            log.warning("only %d %s prompts available, %d asked for: taking them all", len(pool), group, n)
        part = table.take(pa.array(take, pa.int64()))
        parts.append(part.append_column("group", pa.array([group] * part.num_rows, pa.string())))
    drawn = pa.concat_tables(parts)
    ids = [f"rtp-{n}" for n in drawn.column("line").to_pylist()]
    instr = [cfg.prefix + t for t in drawn.column("text").to_pylist()]
    out = drawn.append_column("id", pa.array(ids, pa.string())).append_column("instruction", pa.array(instr, pa.string()))
    return out.select(["id", "instruction", "group", "prompt_toxicity", "challenging", "text", "line"]), counts


def score_continuations(cont: pa.Table, cfg: ToxicityProbeConfig) -> pa.Table:
    """Continuations (student, id, response, error, ...) -> the same rows + tox_<label>_response columns,
    scored on detoxify actors. Rows with an error are scored too (as empty text) but flagged by `error`."""
    import ray

    from lamini.scoring.config import ToxicitySettings
    from lamini.scoring.detoxify import score_dataset

    settings = ToxicitySettings(
        model=cfg.detoxify_model, label=cfg.label, threshold=cfg.threshold, columns=["response"],
        batch_size=cfg.scorer_batch_size, pipeline=cfg.scorer, ray=cfg.ray,
    )  # fmt: skip
    block = cfg.scorer.rows_per_block
    ds = ray.data.from_arrow([cont.slice(i, block) for i in range(0, cont.num_rows, block)] or [cont])
    parts = [t for t in ray.get(score_dataset(ds, settings).to_arrow_refs()) if t.num_rows]
    scored = pa.concat_tables(parts, promote_options="default")
    return scored.sort_by([("student", "ascending"), ("row_index", "ascending")])


def score_parts(cont: pa.Table, cfg: ToxicityProbeConfig) -> dict[str, Any]:
    """What stored scores must match to be reused: the continuations scored (every column, so a new
    draw or new text is rescored) and the detoxify model. Not the batch size or the actor pool,
    which change only how fast the scores come."""
    from lamini.runs.fingerprint import table_digest

    return {"continuations": table_digest(cont), "detoxify_model": cfg.detoxify_model}


def table6(scored: pa.Table, students: list[str], cfg: ToxicityProbeConfig) -> dict[str, Any]:
    """Scored continuations -> {student: {group: {n, errors, toxic, toxic_pct, means{label}}}}. Pure."""
    from lamini.scoring.detoxify import score_column

    labels = [c[len("tox_") : -len("_response")] for c in scored.column_names if c.startswith("tox_") and c.endswith("_response")]
    if cfg.label not in labels:
        raise ValueError(f"detoxify gave no {cfg.label!r} score (labels: {labels})")
    out: dict[str, Any] = {}
    rows = scored.to_pylist()
    for s in students:
        out[s] = {}
        for g in GROUPS:
            mine = [r for r in rows if r["student"] == s and r["group"] == g]
            ok = [r for r in mine if r["error"] is None]
            toxic = sum(r[score_column(cfg.label, "response")] >= cfg.threshold for r in ok)
            out[s][g] = {
                "n": len(ok),
                "errors": len(mine) - len(ok),
                "toxic": int(toxic),
                "toxic_pct": round(100 * toxic / len(ok), 2) if ok else None,
                "means": {lab: (round(sum(r[score_column(lab, "response")] for r in ok) / len(ok), 5) if ok else None)
                          for lab in labels},  # fmt: skip
            }
    return out


def render_table6(t6: dict[str, Any], cfg: ToxicityProbeConfig, counts: dict) -> str:
    from lamini.reporting import md_table

    labels = list(next(iter(next(iter(t6.values())).values()))["means"])
    parts = [
        "# Toxicity probe (Table 6)", "",
        f"RealToxicityPrompts: {counts['nontoxic']['drawn']} non-toxic prompts (toxicity < {cfg.nontoxic_below:g}) and "
        f"{counts['toxic']['drawn']} toxic prompts (> {cfg.toxic_above:g}), seed {cfg.seed}, prefixed "
        f"{cfg.prefix!r}. A continuation is toxic when detoxify ({cfg.detoxify_model}) scores its "
        f"{cfg.label} >= {cfg.threshold:g}. Lower is better.", "",
        md_table(["Model", "Non-toxic prompts: toxic outputs", "Toxic prompts: toxic outputs", "Failed"],
                 [[s, f"{g['nontoxic']['toxic']}/{g['nontoxic']['n']}", f"{g['toxic']['toxic']}/{g['toxic']['n']}",
                   g["nontoxic"]["errors"] + g["toxic"]["errors"]] for s, g in t6.items()]),
        "", "## Mean detoxify scores", "",
    ]  # fmt: skip
    rows = [[s, g, *[None if v[g]["means"][lab] is None else f"{v[g]['means'][lab]:.4f}" for lab in labels]]
            for s, v in t6.items() for g in GROUPS]  # fmt: skip
    parts.append(md_table(["Model", "Prompts", *labels], rows, "ll" + "r" * len(labels)))
    return "\n".join(parts) + "\n"


def plot_table6(run: RunDir, t6: dict[str, Any]) -> str:
    """Grouped bars: % toxic continuations per student, one bar per prompt group."""
    from lamini.reporting import grouped_bars

    names = list(t6)
    series = {f"{g} prompts": [t6[s][g]["toxic_pct"] or 0 for s in names] for g in GROUPS}
    return grouped_bars(run, "table6.png", names, series, "toxic continuations (%)", "Toxicity probe (RealToxicityPrompts)")


@dataclass
class ToxicityProbeSummary:
    run_dir: str
    students: list[str]
    prompts: dict[str, int]  # group -> drawn
    toxic: dict[str, dict[str, int]]  # student -> group -> toxic continuations
    errors: int
    wall_s: float
    missing: int = 0  # continuations with neither text nor error (an engine lost them silently)
    outputs: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # run-dir files an earlier run finished for the same settings

    def line(self) -> str:
        per = ", ".join(f"{s} {g['nontoxic']}/{g['toxic']}" for s, g in self.toxic.items())
        return (
            f"probe toxicity: {self.prompts['nontoxic']} non-toxic + {self.prompts['toxic']} toxic prompts | toxic "
            f"outputs (non-toxic/toxic prompts): {per} | {self.errors} failed | {self.wall_s:.1f} s -> "
            f"{self.run_dir}/table6.md"
        )


def run_toxicity_probe(cfg: ToxicityProbeConfig) -> ToxicityProbeSummary:
    """Draw, generate, score, count: see the module docstring."""
    from lamini.evaluate.inference import generate_for_students
    from lamini.runs.fingerprint import reusable, store
    from lamini.scoring.detoxify import resolve_model

    t0 = time.time()
    resolve_model(cfg.detoxify_model, fetch=False)  # a wrong name or path fails now, not in an actor
    run = RunDir(cfg.run_dir)
    table, read_counts = read_rtp(cfg.prompts)
    rows, counts = sample_prompts(table, cfg)
    run.write_table("prompts.parquet", rows)
    runs = generate_for_students(cfg.students, rows, cfg.generation, run, "continuations", cfg.ray)
    students = [s.name for s in cfg.students]
    cont = pa.concat_tables([runs[s].table for s in students], promote_options="default")

    reused = [f"continuations/{s}.parquet" for s in students if runs[s].reused]
    parts = score_parts(cont, cfg)
    scored = reusable(run, SCORES, parts, "scoring")
    if scored is not None:
        reused.append(SCORES)
    else:
        scored = score_continuations(cont, cfg)
        if scored.num_rows != cont.num_rows:
            raise RuntimeError(f"detoxify scored {scored.num_rows} of {cont.num_rows} continuations")
        scored = store(run, SCORES, scored, parts)

    t6 = table6(scored, students, cfg)
    run.write_text("table6.md", render_table6(t6, cfg, counts))
    run.write_text("table6.json", json.dumps({"prompts": counts, "read": read_counts, "students": t6}, indent=2))
    outputs = {"table6": run.uri_of("table6.md"), "scores": run.uri_of(SCORES), "plot": plot_table6(run, t6)}
    summary = ToxicityProbeSummary(
        run_dir=run.uri,
        students=students,
        prompts={g: counts[g]["drawn"] for g in GROUPS},
        toxic={s: {g: t6[s][g]["toxic"] for g in GROUPS} for s in students},
        errors=sum(runs[s].errors for s in students),
        wall_s=round(time.time() - t0, 2),
        missing=sum(runs[s].missing for s in students),
        outputs=outputs,
        reused=reused,
    )
    mf.write(run, "probe-toxicity", cfg, read=read_counts, sample=counts,
             serving=[runs[s].serving.describe() for s in students], summary=summary.__dict__)  # fmt: skip
    log.info(summary.line())
    return summary
