"""`lamini responses`: the teacher's response to every instruction of whole corpora.

This is the paper's sequence-distillation step (LaMini-LM section 3.2). The plan is

    corpus readers (driver) -> ray.data.from_arrow (blocks of `rows_per_block`)
      -> map_batches over an autoscaling teacher actor pool -> write_parquet(run_dir/shards)

then a finalize step that writes exactly one row per input id to `dataset/`. Re-running
the same command resumes: only ids with no result yet (and, with `retry_errors`, ids whose
last attempt failed) are sent again.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from lamini.config import ResponsesConfig, TeacherConfig
from lamini.runs import manifest as mf
from lamini.runs.answer import answer_table
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

# Columns this stage reads from the corpus table (lamini.corpus.CORPUS_SCHEMA).
READS = ("id", "instruction", "input", "prompt", "response", "source", "subset", "origin")


@dataclass
class ResponsesSummary:
    """What one invocation did, and where the run as a whole stands."""

    run_dir: str
    attempt_id: str
    input_rows: int
    rejects: int
    rejects_by_reason: dict[str, int]
    already_done: int
    sent: int
    ok: int
    errors: int
    errors_by_kind: dict[str, int]
    missing: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    pipeline_s: float
    wall_s: float
    sent_per_s: float = field(default=0.0)
    # Requests sent that never got an answer (in flight when a run was killed or stopped): in
    # `requests`, and in `cost_usd` at their largest possible size (usage unknown).
    unsettled_requests: int = 0
    unsettled_prompt_tokens_max: int = 0
    unsettled_completion_tokens_max: int = 0
    unsent: int = 0  # rows left unsent because a budget cap was reached (not in `missing`)
    budget_exhausted: str | None = None  # which cap: max_requests, max_tokens or max_cost_usd
    unallowed_errors: int = 0  # `errors` unless the config says allow_errors: the CLI exits 1 when not 0

    def line(self) -> str:
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(self.errors_by_kind.items())) or "none"
        cost = f" | ~${self.cost_usd:.4f}" if self.cost_usd is not None else ""
        unsettled = f" ({self.unsettled_requests} unanswered)" if self.unsettled_requests else ""
        unsent = f" | budget {self.budget_exhausted} reached: {self.unsent} rows left unsent" if self.budget_exhausted else ""
        return (
            f"responses: {self.input_rows} input rows | {self.ok} ok | {self.errors} errors ({errs}) | "
            f"{self.rejects} rejects | sent {self.sent} this run ({self.already_done} already done) "
            f"at {self.sent_per_s:.1f} rows/s | {self.requests} requests{unsettled} | "
            f"{self.prompt_tokens} prompt + {self.completion_tokens} completion tokens{cost}{unsent} | "
            f"{self.wall_s:.1f} s -> {self.run_dir}/dataset"
        )


def read_inputs(corpora: list, run: RunDir, *, on_error: str, limit: int | None = None):
    """Read every corpus into one request table (the READS columns, the corpus' own response as
    `reference_response`); rejects go to run_dir/rejects.jsonl. Returns (table, rejects)."""
    from lamini.corpus import RejectLog, read_corpora

    rejects = RejectLog()
    table = read_corpora(corpora, on_error=on_error, rejects=rejects, limit=limit)
    rejects.write(run.uri_of("rejects.jsonl"))
    missing = [c for c in READS if c not in table.column_names]
    if missing:
        raise ValueError(f"corpus table lacks columns {missing}")
    return table.select(list(READS)).rename_columns(
        ["reference_response" if c == "response" else c for c in READS]
    ), rejects


def run_responses(cfg: ResponsesConfig) -> ResponsesSummary:
    """Run (or resume) the responses stage described by `cfg`; returns the summary."""
    t0 = time.time()
    attempt_id = uuid.uuid4().hex[:12]
    run = RunDir(cfg.run_dir)
    table, rejects = read_inputs(cfg.corpora, run, on_error=cfg.on_error, limit=cfg.limit)
    manifest = run.read_json("manifest.json", default={}) or {}
    attempts = manifest.get("attempts", [])

    done = answer_table(
        table,
        run,
        teacher=cfg.teacher,
        generation=cfg.generation,
        system_prompt=cfg.system_prompt,
        pipeline=cfg.pipeline,
        ray_cfg=cfg.ray,
        retry_errors=cfg.retry_errors,
        budget=cfg.budget,
    )
    counts, already_done, pipeline_s = done.counts, done.already_done, done.pipeline_s
    pending_rows = done.sent
    cost = mf.estimate_cost(cfg.teacher, counts.prompt_tokens + counts.unsettled_prompt_tokens_max,
                            counts.completion_tokens + counts.unsettled_completion_tokens_max)
    if cost is not None and cfg.teacher.engine == "openai_batch":  # the Batch API's discount
        cost = round(cost * cfg.teacher.batch_price_factor, 6)
    summary = ResponsesSummary(
        run_dir=run.uri,
        attempt_id=attempt_id,
        input_rows=table.num_rows,
        rejects=rejects.count,
        rejects_by_reason=rejects.by_reason(),
        already_done=already_done,
        sent=pending_rows,
        ok=counts.ok,
        errors=counts.errors,
        errors_by_kind=counts.errors_by_kind,
        missing=counts.missing - done.unsent,
        requests=counts.requests,
        prompt_tokens=counts.prompt_tokens,
        completion_tokens=counts.completion_tokens,
        cost_usd=cost,
        pipeline_s=round(pipeline_s, 3),
        wall_s=round(time.time() - t0, 3),
        sent_per_s=done.sent_per_s,
        unsettled_requests=counts.unsettled_requests,
        unsettled_prompt_tokens_max=counts.unsettled_prompt_tokens_max,
        unsettled_completion_tokens_max=counts.unsettled_completion_tokens_max,
        unsent=done.unsent,
        budget_exhausted=done.budget_exhausted,
        unallowed_errors=0 if cfg.allow_errors else counts.errors,
    )
    attempts.append(
        {
            "attempt_id": attempt_id,
            "started_at": t0,
            "wall_s": summary.wall_s,
            "sent": summary.sent,
            "already_done": already_done,
            "sent_per_s": summary.sent_per_s,
        }
    )
    _write_manifest(run, cfg, summary, attempts)
    return summary


def _teacher_description(teacher_cfg: TeacherConfig) -> dict[str, Any]:
    # The config itself describes the teacher; building the teacher here (loading a model)
    # only for the manifest would cost more than the information is worth.
    d = teacher_cfg.model_dump(mode="json")
    from lamini.engines.actors import teacher_label

    d["label"] = teacher_label(teacher_cfg)
    return d


def _write_manifest(run: RunDir, cfg: ResponsesConfig, s: ResponsesSummary, attempts: list) -> None:
    mf.write(
        run,
        "responses",
        cfg,
        run_dir=run.uri,
        teacher=_teacher_description(cfg.teacher),
        counts={
            "input_rows": s.input_rows,
            "ok": s.ok,
            "errors": s.errors,
            "errors_by_kind": s.errors_by_kind,
            "missing": s.missing,
            "rejects": s.rejects,
            "rejects_by_reason": s.rejects_by_reason,
            "requests": s.requests,
            "unsettled_requests": s.unsettled_requests,
            "unsent": s.unsent,
        },
        budget={**cfg.budget.model_dump(), "exhausted": s.budget_exhausted},
        # Tokens of the answers received; the unanswered requests' at most (the cost counts those too).
        tokens={"prompt": s.prompt_tokens, "completion": s.completion_tokens,
                "unsettled_prompt_max": s.unsettled_prompt_tokens_max,
                "unsettled_completion_max": s.unsettled_completion_tokens_max},
        estimated_cost_usd=s.cost_usd,
        wall_time_s=round(sum(a["wall_s"] for a in attempts), 3),
        attempts=attempts,
        last_summary=asdict(s),
        outputs={
            "responses": run.uri_of("dataset", "responses.parquet"),
            "errors": run.uri_of("dataset", "errors.parquet"),
            "rejects": run.uri_of("rejects.jsonl"),
        },
    )
