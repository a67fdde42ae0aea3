"""`lamini dataset`: the whole of the paper's section 3 in one resumable run.

1. generate instructions per source (example- and topic-guided), filtered and deduplicated;
2. the teacher's responses to the generated instructions and to the original prompts of
   the `originals` corpora (Alpaca, P3, FLAN), with the paper's system message;
3. optionally drop toxic rows with detoxify (set aside in `rejected/toxic_dropped.parquet`);
4. assemble D_ALL in the LaMini-instruction schema (lamini.corpus.schema.LAMINI_COLUMNS:
   `instruction, response, instruction_source`
   + provenance) at `dataset/lamini_instruction.parquet`, with its dataset card `dataset/README.md`;
5. the analysis report (Tables 1-2, Figure 2) in `report/`.

`dataset/` holds D_ALL and its card and nothing else, so it loads as one clean `train` split
(`datasets.load_dataset("parquet", data_dir=run_dir/dataset)`) or can be pushed to the Hub as it
is. Rows that are not part of D_ALL live elsewhere: failed requests in
`responses/dataset/errors.parquet`, unreadable input rows in `rejects.jsonl`, toxic rows in
`rejected/`.

Each step keeps its state in its own sub-directory (instructions/, responses/), so a re-run
skips finished work and resumes the unfinished step.
"""

from __future__ import annotations

import logging
import posixpath
import time
from dataclasses import dataclass

import pyarrow as pa

from lamini.corpus.schema import INSTRUCTION, INSTRUCTION_SOURCE
from lamini.generate.config import DatasetConfig
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

D_ALL = "dataset/lamini_instruction.parquet"
TOXIC_DROPPED = "rejected/toxic_dropped.parquet"  # outside dataset/: not part of D_ALL's split
TRUNCATED = "rejected/truncated.parquet"  # responses cut off by max_tokens (keep_truncated: false)
# Where runs written before rejected/ existed kept the dropped rows (removed when such a run is re-run).
_OLD_TOXIC_DROPPED = "dataset/toxic_dropped.parquet"


def split_truncated(responses: pa.Table) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(complete rows, rows the teacher was cut off in (finish_reason "length"), cut-off count per
    instruction_source). A cut-off response is a half answer: trained on, it teaches a student
    to stop mid-sentence."""
    import pyarrow.compute as pc

    if not responses.num_rows:
        return responses, responses, {}
    cut = pc.fill_null(pc.equal(responses.column("finish_reason"), "length"), False)
    truncated = responses.filter(cut)
    by_source: dict[str, int] = {}
    for src in truncated.column(INSTRUCTION_SOURCE).to_pylist():
        by_source[src] = by_source.get(src, 0) + 1
    return responses.filter(pc.invert(cut)), truncated, by_source


def _generated_rows(instructions: pa.Table) -> pa.Table:
    """Accepted generated instructions -> request rows (the corpus columns the responses core reads)."""
    from lamini.corpus import row_id

    n = instructions.num_rows
    insts = instructions.column(INSTRUCTION).to_pylist()
    srcs = instructions.column(INSTRUCTION_SOURCE).to_pylist()
    subs = instructions.column("subset").to_pylist()
    return pa.table(
        {
            "id": [row_id(s, b, i, "") for s, b, i in zip(srcs, subs, insts)],
            "instruction": insts,
            "input": [""] * n,
            "prompt": insts,
            "reference_response": pa.array([None] * n, pa.string()),
            "source": srcs,
            "subset": subs,
            "origin": [f"generated:round{r}:{p}" for r, p in zip(instructions.column("round").to_pylist(),
                                                                instructions.column("prompt_id").to_pylist())],
        }
    )  # fmt: skip


@dataclass
class DatasetSummary:
    run_dir: str
    generated: dict[str, int]
    originals: int
    rows: int
    by_source: dict[str, int]
    response_errors: int
    toxic_dropped: int
    report: str | None
    wall_s: float
    missing: int = 0
    truncated: dict[str, int] | None = None  # cut-off responses per source (kept or set aside)
    truncated_kept: bool = False
    truncated_generation_answers: dict[str, int] | None = None  # instruction-generation answers cut off, per source

    def line(self) -> str:
        per = ", ".join(f"{k}: {v}" for k, v in sorted(self.by_source.items()))
        rep = f" | report: {self.report}" if self.report else ""
        cut = sum((self.truncated or {}).values())
        return (
            f"dataset: {self.rows} rows in D_ALL ({per}) | {self.response_errors} response errors | "
            f"{cut} truncated {'kept' if self.truncated_kept else 'set aside'} | "
            f"{self.toxic_dropped} toxic dropped | {self.wall_s:.1f} s -> {self.run_dir}/{D_ALL}{rep}"
        )


def run_dataset(cfg: DatasetConfig) -> DatasetSummary:
    """Run or resume the whole dataset build."""
    from lamini.generate.card import count_by_source, write_dataset_card
    from lamini.generate.instructions import generate_instructions
    from lamini.generate.responses import read_inputs
    from lamini.runs import manifest as mf
    from lamini.runs.answer import answer_table

    t0 = time.time()
    run = RunDir(cfg.run_dir)
    parts = []
    generated: dict[str, int] = {}
    gen_state = None
    if cfg.generate:
        gen_state = generate_instructions(cfg.instructions_config())
        generated = {s.name: gen_state.count(s.name) for s in cfg.generate}
        parts.append(_generated_rows(gen_state.table()))
    originals = None
    if cfg.originals:
        originals, _ = read_inputs(cfg.originals, run, on_error=cfg.on_error)
        parts.append(originals)
    if not parts:
        raise ValueError("dataset config has neither `generate` sources nor `originals` corpora")
    requests = pa.concat_tables(parts, promote_options="permissive")
    responses_run = RunDir(run.uri_of("responses"))
    done = answer_table(
        requests, responses_run, teacher=cfg.teacher, generation=cfg.response_generation,
        system_prompt=cfg.system_prompt, pipeline=cfg.pipeline, ray_cfg=cfg.ray,
    )  # fmt: skip
    d_all = responses_run.read_table("dataset/responses.parquet")
    run.makedirs("dataset")
    kept, truncated, truncated_by_source = split_truncated(d_all)
    if cfg.keep_truncated:
        if run.exists(TRUNCATED):  # an earlier attempt's set-aside rows are back in D_ALL now
            run.delete(run.path(TRUNCATED))
    else:
        d_all = kept
        run.makedirs(posixpath.dirname(TRUNCATED))
        run.write_table(TRUNCATED, truncated)

    toxic_dropped = 0
    if cfg.toxicity is not None:
        from lamini.generate.toxicity import filter_table

        d_all, dropped, _ = filter_table(d_all, cfg.toxicity)
        toxic_dropped = dropped.num_rows
        run.makedirs(posixpath.dirname(TOXIC_DROPPED))
        run.write_table(TOXIC_DROPPED, dropped)

    run.write_table(D_ALL, d_all)
    write_dataset_card(run, cfg, D_ALL, toxic_dropped if cfg.toxicity is not None else None)
    # Dropped rows of an earlier attempt that no longer describe D_ALL: the old layout's file inside
    # dataset/ (it would join the train split), and any when the filter is now off.
    for stale in [_OLD_TOXIC_DROPPED] + ([TOXIC_DROPPED] if cfg.toxicity is None else []):
        if run.exists(stale):
            run.delete(run.path(stale))
    by_source = count_by_source(d_all)

    report_path = None
    if cfg.analyze:
        from lamini.analysis.config import AnalyzeConfig
        from lamini.analysis.report import run_analyze

        rep = run_analyze(AnalyzeConfig(input=run.uri, seed=cfg.seed, ray=cfg.ray))
        report_path = rep.report_path

    summary = DatasetSummary(
        run_dir=run.uri, generated=generated, originals=originals.num_rows if originals is not None else 0,
        rows=d_all.num_rows, by_source=by_source, response_errors=done.counts.errors,
        toxic_dropped=toxic_dropped, report=report_path, wall_s=round(time.time() - t0, 3),
        truncated=truncated_by_source, truncated_kept=cfg.keep_truncated,
        truncated_generation_answers=gen_state.truncated() if gen_state else {},
    )  # fmt: skip
    c = done.counts
    mf.write(run, "dataset", cfg, seed=cfg.seed, summary=summary.__dict__,
             instruction_rounds=gen_state.rounds if gen_state else [],
             responses={"ok": c.ok, "errors": c.errors, "errors_by_kind": c.errors_by_kind, "requests": c.requests,
                        "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens},
             estimated_cost_usd=mf.estimate_cost(cfg.teacher, c.prompt_tokens, c.completion_tokens))  # fmt: skip
    return summary
