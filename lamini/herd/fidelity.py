"""Distillation fidelity: a cheap sign that a student learned its teacher, on rows it never trained on.

    D_ALL -> split_holdout -> (train rows, held-out rows): no student trains on the holdout
    for each student, before training (its base model) and after (its trained model folder):
      (a) loglik_rows: the log-likelihood of the teacher's responses, teacher-forced, with the
          prompt formatted exactly as training formats it (lamini.train.data's encoders): the
          training objective itself, measured on held-out rows -> mean log-prob per token
      (b) greedy answers (lamini.evaluate.inference.generate_for_students, all models side by
          side) scored with ROUGE-L F against the teacher's response (lamini.generate.dedup.rouge)
    -> run/fidelity/fidelity.json, fidelity.md, fidelity.png: before, after and their difference.

Distillation that worked raises both numbers; (a) moves first and smoothly (it sees every token),
(b) is what a reader of the answers would notice. Every model's answers and log-likelihoods are
stored under run/fidelity/ with a fingerprint (model, its files, the held-out rows, settings): a
re-run reuses finished models and redoes one whose model or holdout changed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from lamini.config import GenerationParams, StrictModel
from lamini.evaluate.config import StudentSpec
from lamini.runs.fingerprint import digest, reusable, store, table_digest
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

ANSWERS = "fidelity/answers"  # <model>.parquet: greedy answers (generate_for_students)
LOGLIK = "fidelity/loglik"  # <model>.parquet: row_index, loglik (sum over the response), tokens
PHASES = ("before", "after")
DEFAULT_MAX_LENGTH = 1024
# Part of the stored log-likelihoods' fingerprint: bump it when loglik_rows changes what it
# computes, so results of the older computation are redone rather than compared with new ones.
LOGLIK_VERSION = 1


class FidelityConfig(StrictModel):
    """How the fidelity check is drawn and measured (a block for the command that runs it)."""

    fraction: float = Field(0.01, ge=0, le=1, description="Share of D_ALL's rows held out from every student.")
    max_rows: int | None = Field(200, ge=1, description="At most this many held-out rows (None: no cap).")
    seed: int = Field(0, description="Seed of the held-out draw (the same seed holds out the same rows).")
    max_length: int = Field(
        DEFAULT_MAX_LENGTH, ge=8, description="Most tokens per scored sequence (prompt + response; the prompt's "
        "start is cut first). Encoder-decoder: the limit of source and target each."
    )  # fmt: skip
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=256, temperature=0.0, top_p=1.0, seed=0),
        description="Sampling of the students' answers (always greedy: temperature is set to 0).",
    )


class FidelityModel(StrictModel):
    """One model to measure: a student before or after training."""

    student: str = Field(description="The student's name: one row of the report.")
    phase: Literal["before", "after"] = Field(description="before: its base model; after: its trained model.")
    spec: StudentSpec = Field(description="The model and how it is served; its `name` is replaced by `name` below.")

    @field_validator("student")
    @classmethod
    def _file_safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"student name {v!r} names files: use letters, digits, '.', '_' and '-'")
        return v

    @property
    def name(self) -> str:
        """`<student>.<phase>`: the model's file names under run/fidelity/."""
        return f"{self.student}.{self.phase}"


# --------------------------------------------------------------------------------------
# The held-out slice
# --------------------------------------------------------------------------------------


def allocate(sizes: dict[Any, int], total: int) -> dict[Any, int]:
    """Rows to draw per stratum for a draw of `total` (capped at the rows there are): one per
    stratum first (the largest strata when there are fewer rows than strata), then one row at a
    time to the stratum furthest below its proportional share total x size / rows (integers, no
    rounding). Ties go to the larger stratum, then to the name: the result is deterministic."""
    import heapq

    keys = sorted(sizes, key=lambda k: (-sizes[k], k is None, str(k)))
    n = sum(sizes.values())
    total = min(total, n)
    alloc = {k: int(i < total and sizes[k] > 0) for i, k in enumerate(keys)}
    # (minus the deficit x n, rank, key): the rank breaks ties, so keys are never compared
    heap = [(alloc[k] * n - total * sizes[k], r, k) for r, k in enumerate(keys) if alloc[k] < sizes[k]]
    heapq.heapify(heap)
    for _ in range(total - sum(alloc.values())):
        d, r, k = heapq.heappop(heap)
        alloc[k] += 1
        if alloc[k] < sizes[k]:
            heapq.heappush(heap, (d + n, r, k))
    return alloc


def split_holdout(table: pa.Table, fraction: float, max_rows: int | None, seed: int) -> tuple[pa.Table, pa.Table]:
    """D_ALL -> (train, holdout): every row in exactly one of them, each in the table's order.

    The holdout has round(fraction x rows) rows (at most max_rows, at most the rows it may take),
    drawn at random with numpy's Generator(seed) (the same seed, table and sizes draw the same
    rows) from the rows whose `response` is neither null nor blank: a row without a teacher
    response has nothing to measure and stays in train. When `instruction_source` is a column the draw is stratified by it:
    every source gets at least one row while the holdout has room for one per source, the rest
    in proportion to each source's rows (`allocate`).
    """
    import numpy as np

    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction {fraction} is not in [0, 1]")
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows {max_rows} is negative")
    if "response" not in table.column_names:
        raise ValueError(f"the table has no `response` column (columns: {table.column_names})")
    n = table.num_rows
    responses = table.column("response").to_pylist()
    eligible = [i for i, r in enumerate(responses) if r is not None and r.strip()]
    target = math.floor(fraction * n + 0.5)
    if max_rows is not None:
        target = min(target, max_rows)
    has_source = "instruction_source" in table.column_names
    sources = table.column("instruction_source").to_pylist() if has_source else [None] * n
    # One seeded order over the eligible rows; each stratum takes its first rows in that order.
    order = [eligible[j] for j in np.random.default_rng(seed).permutation(len(eligible))]
    strata: dict[Any, list[int]] = {}
    for i in order:
        strata.setdefault(sources[i], []).append(i)
    alloc = allocate({k: len(v) for k, v in strata.items()}, target)
    held = np.zeros(n, dtype=bool)
    for k, rows in strata.items():
        held[rows[: alloc[k]]] = True
    return table.filter(pa.array(~held)), table.filter(pa.array(held))


# --------------------------------------------------------------------------------------
# Log-likelihood of the teacher's responses
# --------------------------------------------------------------------------------------


def loglik_rows(
    model: Any,
    tokenizer: Any,
    family: str,
    prompts: list[str],
    responses: list[str],
    batch_size: int,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> list[tuple[float, int]]:
    """(sum of the log-probs of the response tokens, their count) per row, teacher-forced.

    prompts are instructions, formatted as training formats them (lamini.train.data): a decoder
    student sees alpaca_prompt(instruction) + response + EOS and the response and EOS are
    scored; an encoder-decoder student gets the raw instruction as source and response + EOS as
    target, all of it scored. Over max_length the start of the prompt is cut (left truncation
    keeps the response); a row left with no response token gives (0.0, 0). Rows go through the
    model in batches of batch_size, shortest together, right-padded (the attention mask hides
    the padding, and a causal model's later padding cannot reach earlier positions).
    """
    import torch
    import torch.nn.functional as F

    from lamini.train.data import (
        IGNORE_INDEX,
        collate,
        encode_decoder,
        encode_seq2seq,
        pad_token_id,
    )

    if family not in ("decoder", "encoder-decoder"):
        raise ValueError(f"family {family!r} is neither decoder nor encoder-decoder")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if family == "decoder":
        examples = [encode_decoder(p, r, tokenizer, max_length, "left") for p, r in zip(prompts, responses)]
    else:
        examples = [encode_seq2seq(p, r, tokenizer, max_length, max_length, "left") for p, r in zip(prompts, responses)]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    todo = sorted((i for i, e in enumerate(examples) if e is not None),
                  key=lambda i: len(examples[i].input_ids) + len(examples[i].labels))  # fmt: skip
    pad = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(todo), max(1, batch_size)):
            idx = todo[start : start + batch_size]
            batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad).items()}
            labels = batch["labels"]
            if family == "decoder":  # position t predicts token t + 1
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
                labels = labels[:, 1:]
            else:  # the model shifts the labels right into its decoder inputs, as in training
                logits = model(**batch).logits
            nll = F.cross_entropy(
                logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            ).view(labels.shape)
            counts = (labels != IGNORE_INDEX).sum(-1)
            for i, s, c in zip(idx, (-nll.sum(-1)).tolist(), counts.tolist()):
                out[i] = (float(s), int(c))
    return out


def _loglik_task(spec: Any, family: str, device: str, dtype: str, prompts: list[str], responses: list[str],
                 max_length: int) -> list[tuple[float, int]]:  # fmt: skip
    """One model's log-likelihoods, in a Ray task: load it, score every row."""
    import torch

    from lamini.models.loading import load_student, load_tokenizer

    if device == "cpu":  # the task holds one CPU: more threads only contend with the other tasks
        torch.set_num_threads(1)
    model = load_student(spec, family, dtype).to(device)
    return loglik_rows(model, load_tokenizer(spec), family, prompts, responses, spec.batch_size, max_length)


def _files_digest(path: Path) -> str:
    """Digest of the name, size and modification time of every file at `path` (a file or a folder)."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return digest([(str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in files])  # fmt: skip


def model_identity(spec: Any) -> dict[str, Any]:
    """What names the weights a StudentSpec loads: its model fields and, for a local folder or file
    (a trained model, a .gguf), the name, size and time of every file in it, so a folder trained
    again in place is measured again. (Not its bytes: hashing weights costs seconds per GB.)"""
    from lamini.evaluate.inference import student_model_fields

    ident: dict[str, Any] = {"model": student_model_fields(spec)}
    for key in ("base", "tokenizer"):
        value = getattr(spec, key)
        if value and os.path.exists(value):
            ident[f"{key}_files"] = _files_digest(Path(value))
    return ident


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class FidelityReport:
    """What run_fidelity measured. students: {student: {before, after, delta}} (as fidelity.json);
    models: {<student>.<phase>: its numbers}; reused: {<student>.<phase>: {answers, loglik}}."""

    run_dir: str
    rows: int
    students: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]
    reused: dict[str, dict[str, bool]]
    missing: int  # answers with neither a response nor an error, over all models
    wall_s: float
    files: list[str] = field(default_factory=list)

    def line(self) -> str:
        def num(x: float | None, fmt: str) -> str:
            return "–" if x is None else format(x, fmt)

        per = []
        for s, d in self.students.items():
            b, a, dl = d.get("before") or {}, d.get("after") or {}, d["delta"]
            per.append(
                f"{s}: loglik/token {num(b.get('loglik_per_token'), '.3f')} -> {num(a.get('loglik_per_token'), '.3f')} "
                f"({num(dl['loglik_per_token'], '+.3f')}), ROUGE-L {num(b.get('rouge_l'), '.3f')} -> "
                f"{num(a.get('rouge_l'), '.3f')} ({num(dl['rouge_l'], '+.3f')})"
            )
        reused = sum(all(r.values()) for r in self.reused.values())
        return (
            f"fidelity: {len(self.students)} students on {self.rows} held-out rows | " + " | ".join(per)
            + f" | {self.missing} missing | {reused}/{len(self.reused)} models reused | {self.wall_s:.1f} s "
            f"-> {self.run_dir}/fidelity/fidelity.md"
        )  # fmt: skip


def _check(models: list[FidelityModel], holdout: pa.Table) -> None:
    names = [m.name for m in models]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"each student is measured once per phase; repeated: {dup}")
    missing = {"instruction", "response"} - set(holdout.column_names)
    if missing:
        raise ValueError(f"the holdout lacks columns {sorted(missing)} (columns: {holdout.column_names})")
    blank = sum(r is None or not r.strip() for r in holdout.column("response").to_pylist())
    if blank:
        raise ValueError(f"{blank} held-out rows have no teacher response (split_holdout leaves them in train)")


def _answers_identity(run: RunDir, models: list[FidelityModel], idents: dict[str, str]) -> None:
    """Drop stored answers of a model whose files changed since they were written: generate_for_students
    keys them on the spec's fields, which a folder trained again in place keeps."""
    for m in models:
        rel, side = f"{ANSWERS}/{m.name}.parquet", f"{ANSWERS}/{m.name}.identity.json"
        if run.exists(rel) and run.read_json(side, {}).get("identity") != idents[m.name]:
            log.warning("%s was written by other model files: generating again", run.uri_of(rel))
            run.delete(run.path(rel))


def _summary(rows: int, loglik: pa.Table, answers: pa.Table, teacher: list[str]) -> dict[str, Any]:
    """One model's numbers: log-likelihood per token over every row, ROUGE-L over answered rows."""
    from lamini.generate.dedup.rouge import rouge_l_f_text

    total, tokens = sum(loglik.column("loglik").to_pylist()), sum(loglik.column("tokens").to_pylist())
    got, err = answers.column("response").to_pylist(), answers.column("error").to_pylist()
    rouge = [rouge_l_f_text(a, t) for a, e, t in zip(got, err, teacher) if a is not None and e is None]
    return {
        "n": rows,
        "loglik_per_token": round(total / tokens, 6) if tokens else None,
        "tokens": int(tokens),
        "rouge_l": round(sum(rouge) / len(rouge), 6) if rouge else None,
        "answered": len(rouge),
        "errors": sum(e is not None for e in err),
    }


def run_fidelity(
    models: list[FidelityModel],
    holdout: pa.Table,
    run: RunDir,
    gen: GenerationParams,
    ray_cfg: Any,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> FidelityReport:
    """Measure every model on the holdout (columns instruction, response) -> FidelityReport.

    Greedy answers (gen with temperature 0) come from generate_for_students, all models side by
    side; the log-likelihoods from one Ray task per model (1 CPU; on a GPU cluster the GPUs
    plan_serving gives the model). Both are stored per model under run/fidelity/ and reused by a
    re-run while the model, its files and the held-out rows are the same. Writes
    run/fidelity/holdout.parquet, fidelity.json, fidelity.md and fidelity.png.
    """
    import ray

    from lamini.evaluate.inference import (
        cluster_facts,
        generate_for_students,
        plan_serving,
    )
    from lamini.runs.ray_env import init_ray

    t0 = time.time()
    _check(models, holdout)
    holdout = holdout.select(["instruction", "response"]).combine_chunks()
    instructions, teacher = holdout.column("instruction").to_pylist(), holdout.column("response").to_pylist()
    run.makedirs("fidelity")
    run.write_table("fidelity/holdout.parquet", holdout)
    gen = gen.model_copy(update={"temperature": 0.0})  # greedy: the answer the student is most sure of
    specs = {m.name: m.spec.model_copy(update={"name": m.name}) for m in models}
    idents = {name: digest(model_identity(s)) for name, s in specs.items()}

    init_ray(ray_cfg)
    _answers_identity(run, models, idents)
    answers = generate_for_students(list(specs.values()), pa.table({"instruction": instructions}), gen, run, ANSWERS, ray_cfg)
    for name in specs:
        run.write_text(f"{ANSWERS}/{name}.identity.json", json.dumps({"identity": idents[name]}))

    gpus, have_vllm = cluster_facts()
    rows_digest = table_digest(holdout)
    loglik: dict[str, pa.Table] = {}
    pending: dict[Any, tuple[str, dict[str, Any]]] = {}
    task = ray.remote(_loglik_task)
    prompts_ref, teacher_ref = ray.put(instructions), ray.put(teacher)  # one copy for every task
    for name, spec in specs.items():
        serving = plan_serving(spec, gpus, have_vllm)
        parts = {"model": idents[name], "family": serving.family, "dtype": serving.dtype, "rows": rows_digest,
                 "max_length": max_length, "version": LOGLIK_VERSION}  # fmt: skip
        old = reusable(run, f"{LOGLIK}/{name}.parquet", parts, "scoring",
                       check=lambda t: [] if t.num_rows == holdout.num_rows else ["its rows"])  # fmt: skip
        if old is not None:
            loglik[name] = old
            continue
        ref = task.options(num_cpus=1, num_gpus=serving.num_gpus, max_retries=0, name=f"lamini-fidelity:{name}").remote(
            spec, serving.family, serving.device, serving.dtype, prompts_ref, teacher_ref, max_length
        )
        pending[ref] = (name, parts)
    reused = {name: {"answers": answers[name].reused, "loglik": name in loglik} for name in specs}
    while pending:  # stored as each finishes: a crash later keeps the finished ones
        [ref], _ = ray.wait(list(pending), num_returns=1)
        name, parts = pending.pop(ref)
        sums = ray.get(ref)
        table = pa.table({"row_index": pa.array(range(len(sums)), pa.int64()),
                          "loglik": pa.array([s for s, _ in sums], pa.float64()),
                          "tokens": pa.array([c for _, c in sums], pa.int64())})  # fmt: skip
        loglik[name] = store(run, f"{LOGLIK}/{name}.parquet", table, parts)

    per_model = {m.name: {"student": m.student, "phase": m.phase,
                          **_summary(holdout.num_rows, loglik[m.name], answers[m.name].table, teacher)}
                 for m in models}  # fmt: skip
    students = _by_student(models, per_model)
    report = FidelityReport(
        run_dir=run.uri, rows=holdout.num_rows, students=students, models=per_model, reused=reused,
        missing=sum(answers[n].missing for n in specs), wall_s=round(time.time() - t0, 3),
    )  # fmt: skip
    report.files = _write_outputs(run, report)
    print(f"lamini: {report.line()}", flush=True)
    return report


def _by_student(models: list[FidelityModel], per_model: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{student: {before, after, delta}}; a phase not measured is None, and so is its delta."""
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        out.setdefault(m.student, {"before": None, "after": None})[m.phase] = per_model[m.name]
    for d in out.values():
        b, a = d["before"] or {}, d["after"] or {}
        d["delta"] = {
            k: round(a[k] - b[k], 6) if a.get(k) is not None and b.get(k) is not None else None
            for k in ("loglik_per_token", "rouge_l")
        }
    return out


def _write_outputs(run: RunDir, report: FidelityReport) -> list[str]:
    """fidelity.json, fidelity.md (a Markdown table) and fidelity.png (before/after bars) -> their URIs."""
    from lamini.reporting import md_table, new_figure, save_figure

    doc = {"rows": report.rows, "students": report.students, "models": report.models, "missing": report.missing}
    run.write_text("fidelity/fidelity.json", json.dumps(doc, indent=2))

    def f3(x: float | None, signed: bool = False) -> str | None:
        return None if x is None else format(x, "+.3f" if signed else ".3f")

    headers = ["Student", "n", "loglik/token before", "loglik/token after", "Δ loglik/token",
               "ROUGE-L before", "ROUGE-L after", "Δ ROUGE-L"]  # fmt: skip
    rows = []
    for s, d in report.students.items():
        b, a = d["before"] or {}, d["after"] or {}
        n = (d["after"] or d["before"])["n"]
        rows.append([s, n, f3(b.get("loglik_per_token")), f3(a.get("loglik_per_token")),
                     f3(d["delta"]["loglik_per_token"], True), f3(b.get("rouge_l")), f3(a.get("rouge_l")),
                     f3(d["delta"]["rouge_l"], True)])  # fmt: skip
    note = (
        "\n\nloglik/token: mean log-probability per token of the teacher's held-out responses, teacher-forced "
        "(higher is closer to the teacher). ROUGE-L: F-measure of the student's greedy answer against the "
        "teacher's response, mean over answered rows.\n"
    )
    run.write_text("fidelity/fidelity.md", "# Distillation fidelity\n\n" + md_table(headers, rows) + note)

    names = list(report.students)
    fig, axes = new_figure(ncols=2, width=max(4.5, 1.1 * len(names) + 2))
    for ax, key, label in zip(axes, ("loglik_per_token", "rouge_l"), ("log-likelihood per token", "ROUGE-L F")):
        for j, phase in enumerate(PHASES):
            vals = [((report.students[s][phase] or {}).get(key)) for s in names]
            ax.bar([i + (j - 0.5) * 0.4 for i in range(len(names))], [math.nan if v is None else v for v in vals],
                   0.4, label=phase)  # fmt: skip
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_ylabel(label)
        ax.set_title(f"{label} (held-out teacher responses)", fontsize=10)
        ax.legend(fontsize=8)
    axes[1].set_ylim(0, 1)
    png = save_figure(run, "fidelity/fidelity.png", fig)
    return [run.uri_of("fidelity/fidelity.json"), run.uri_of("fidelity/fidelity.md"), png]
