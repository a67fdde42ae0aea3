"""`lamini probe hallucination`: the paper's 40 false-premise questions (section 6, Table 5).

Plan of a run (every step resumable: a re-run reuses the files a step finished):

    questions (JSONL id, question, category)
      -> every student answers (lamini.evaluate.inference, one actor pool per student)
           run/answers/<student>.parquet
      -> every LLM judge grades every answer with the written rubric (any engine, on
         the teacher actor pool), keeping its reason: run/verdicts/<judge>.parquet, reused by a
         re-run only for the same answers and judge settings (verdict_parts)
      -> run/ratings_sheet.csv: the rating sheet for people (answers + the LLM's verdict)
      -> filled sheets listed in `ratings` are imported as human judges (lamini.evaluate.probes.ratings)
      -> run/table5.md, table5.json, table5.png: hallucinated answers per student and judge,
         in total and per category (lower is better), and how often the judges agree.

An answer a judge could not grade (the student failed, the judge's reply has no verdict, the
request failed) is kept with its reason and counted as `unjudged`, never guessed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import pyarrow as pa

from lamini.config import RayInitConfig
from lamini.evaluate.config import HallucinationConfig, JudgeConfig
from lamini.evaluate.probes import judging
from lamini.evaluate.probes.judging import (
    ask_judge,
    judge_name,
    judge_settings,
    request_id,
    settings_tag,
    slug,
)
from lamini.evaluate.probes.ratings import VERDICT_SCHEMA
from lamini.runs import manifest as mf
from lamini.runs.fingerprint import reusable, store, table_digest
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

CATEGORIES = ("did_not_happen", "far_future", "nonsense", "obscure")
CATEGORY_TITLES = {"did_not_happen": "Did not happen", "far_future": "Far future", "nonsense": "Nonsense", "obscure": "Obscure"}
VERDICTS = ("rejected", "hallucinated")
_VERDICT = re.compile(r"verdict\W*(rejected|hallucinated)", re.I)
_REASON = re.compile(r"reason\W*(.+)", re.I | re.S)


def packaged_questions() -> str:
    """Path of the paper's 40 questions packaged with lamini (the same file as ../shared/data's)."""
    return str(resources.files("lamini.evaluate").joinpath("data", "hallucination_questions.jsonl"))


def read_questions(path: str | None) -> pa.Table:
    """The questions file (JSONL id, question, category; local or URI) -> table `id`, `instruction`,
    `category`. None reads packaged_questions(). A bad line raises CorpusError naming the file and line.
    """
    from lamini.corpus import CorpusError
    from lamini.corpus.sources import jsonl_objects

    ids, questions, cats = [], [], []
    for file, n, obj in jsonl_objects(path or packaged_questions()):
        if not str(obj.get("question") or "").strip() or obj.get("id") is None:
            raise CorpusError(file, n, "expected an object with `id` and a non-empty `question`")
        cat = obj.get("category")
        if cat not in CATEGORIES:
            raise CorpusError(file, n, f"category {cat!r} is not one of {list(CATEGORIES)}")
        if str(obj["id"]) in ids:
            raise CorpusError(file, n, f"id {obj['id']!r} repeats an earlier line")
        ids.append(str(obj["id"]))
        questions.append(str(obj["question"]).strip())
        cats.append(cat)
    return pa.table({"id": ids, "instruction": questions, "category": cats})


def load_rubric(path: str | None) -> str:
    return judging.load_rubric(path, "hallucination_judge.txt")


def judge_prompt(rubric: str, question: str, answer: str) -> str:
    """The rubric filled for one answer (only the template's own braces are placeholders)."""
    return rubric.format(question=question, answer=answer)


def parse_verdict(text: str | None) -> tuple[str | None, str]:
    """A judge's reply -> (rejected | hallucinated | None, reason). Pure.

    The first `VERDICT: X` wins; the reason is the `REASON:` line, else the whole reply.
    None when the reply names no verdict (the caller records it as unjudged).
    """
    if not text:
        return None, "empty judge reply"
    m = _VERDICT.search(text)
    r = _REASON.search(text[m.end() :] if m else text)
    reason = (r.group(1) if r else text).strip()
    return (m.group(1).lower() if m else None), reason


JUDGED_COLUMNS = ["student", "id", "instruction", "category", "response", "error"]  # what run_judge reads


def verdict_parts(judge: JudgeConfig, answers: pa.Table) -> dict[str, Any]:
    """What a stored verdicts file must match to be reused: the judged answers and the judge's settings."""
    return {"answers": table_digest(answers.select(JUDGED_COLUMNS)), "judge": judge_settings(judge, load_rubric(judge.rubric))}


def run_judge(judge: JudgeConfig, answers: pa.Table, run: RunDir, ray_cfg: RayInitConfig) -> pa.Table:
    """Every answer (student, id, instruction, category, response, error) -> VERDICT_SCHEMA rows,
    in order. The requests go through lamini.evaluate.probes.judging.ask_judge (resumable, stored under
    run/judges/<judge>/)."""
    name = judge_name(judge)
    settings = judge_settings(judge, load_rubric(judge.rubric))
    rows = answers.to_pylist()
    prompts = {
        i: judge_prompt(settings["rubric"], r["instruction"], (r["response"] or "").strip())
        for i, r in enumerate(rows)
        if r["error"] is None
    }
    tag = settings_tag(settings)
    ids = {i: request_id(rows[i]["student"], rows[i]["id"], tag, prompt=p) for i, p in prompts.items()}
    replies = ask_judge(judge, [{"id": ids[i], "prompt": p} for i, p in prompts.items()], run, f"judges/{slug(name)}", ray_cfg)
    out = []
    for i, r in enumerate(rows):
        if r["error"] is not None:
            out.append(_verdict_row(r, None, f"the student gave no answer: {r['error']}", name, "no_answer"))
            continue
        reply = replies[ids[i]]
        if reply["error"] is not None:
            out.append(_verdict_row(r, None, f"judge request failed: {reply['error']}", name, reply["error_kind"] or "judge_error"))
            continue
        verdict, reason = parse_verdict(reply["response"])
        if verdict is None:
            reason = f"no VERDICT in the judge's reply: {reply['response']!r}"
        out.append(_verdict_row(r, verdict, reason, name, None if verdict else "judge_unparseable"))
    return pa.Table.from_pylist(out, schema=VERDICT_SCHEMA)


def _verdict_row(r: dict, verdict: str | None, reason: str, judge: str, kind: str | None) -> dict[str, Any]:
    return {"student": r["student"], "question_id": r["id"], "category": r["category"], "verdict": verdict,
            "reason": reason, "judge": judge, "error_kind": kind}  # fmt: skip


def count_table5(verdicts: pa.Table, students: list[str]) -> dict[str, dict[str, Any]]:
    """One judge's verdicts -> {student: {total, by_category, rated, unjudged}} (hallucinated counts)."""
    out: dict[str, dict[str, Any]] = {
        s: {"total": 0, "by_category": {c: 0 for c in CATEGORIES}, "rated": 0, "unjudged": 0} for s in students
    }
    for r in verdicts.to_pylist():
        cell = out.get(r["student"])
        if cell is None:
            continue
        if r["verdict"] is None:
            cell["unjudged"] += 1
            continue
        cell["rated"] += 1
        if r["verdict"] == "hallucinated":
            cell["total"] += 1
            cell["by_category"][r["category"]] += 1
    return out


def agreement(a: pa.Table, b: pa.Table) -> dict[str, Any]:
    """Two judges over the answers both graded -> {n, agree (fraction), cohen_kappa}."""
    from lamini.reporting import agreement as judge_agreement

    return judge_agreement(a, b, ("student", "question_id"), "verdict")


def render_table5(counts: dict[str, dict[str, dict[str, Any]]], n_questions: dict[str, int], agree: dict) -> str:
    """{judge: {student: cell}} -> Markdown: one Table 5 per judge, then judge agreement."""
    from lamini.reporting import md_table

    parts = ["# Hallucination probe (Table 5)", "",
             "Answers that accept the false premise (hallucinated), out of "
             + ", ".join(f"{n} {CATEGORY_TITLES[c].lower()}" for c, n in n_questions.items())
             + " questions. Lower is better."]  # fmt: skip
    headers = ["Model", f"Total (/{sum(n_questions.values())})", *[CATEGORY_TITLES[c] for c in CATEGORIES], "Judged", "Unjudged"]
    for judge, by_student in counts.items():
        rows = [
            [s, c["total"], *[c["by_category"][k] for k in CATEGORIES], c["rated"], c["unjudged"]]
            for s, c in by_student.items()
        ]
        parts += ["", f"## Judge: {judge}", "", md_table(headers, rows)]
    if agree:
        rows = [
            [pair, a["n"], None if a["agree"] is None else 100 * a["agree"],
             None if a["cohen_kappa"] is None else f"{a['cohen_kappa']:.3f}"]
            for pair, a in agree.items()
        ]  # fmt: skip
        parts += ["", "## Judge agreement", "", md_table(["Judges", "Both judged", "Agree %", "Cohen's kappa"], rows)]
    return "\n".join(parts) + "\n"


def plot_table5(run: RunDir, counts: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Grouped bars: hallucinated answers per student, one bar per judge."""
    from lamini.reporting import grouped_bars

    students = list(next(iter(counts.values())))
    series = {judge: [by[s]["total"] for s in students] for judge, by in counts.items()}
    return grouped_bars(run, "table5.png", students, series, "hallucinated answers (lower is better)", "Hallucination probe")


@dataclass
class HallucinationSummary:
    run_dir: str
    students: list[str]
    questions: int
    judges: list[str]
    hallucinated: dict[str, dict[str, int]]  # judge -> student -> count
    unjudged: dict[str, int]  # judge -> answers it could not grade
    answer_errors: int
    wall_s: float
    missing: int = 0  # answers with neither text nor error (an engine lost them silently)
    outputs: dict[str, str] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # run-dir files an earlier run finished for the same settings

    def line(self) -> str:
        per = "; ".join(
            f"{j}: " + ", ".join(f"{s} {n}/{self.questions}" for s, n in by.items()) for j, by in self.hallucinated.items()
        ) or "no judge (answers and rating sheet only)"
        return (
            f"probe hallucination: {len(self.students)} students x {self.questions} questions | hallucinated {per} | "
            f"{self.answer_errors} failed answers | {self.wall_s:.1f} s -> "
            + (self.outputs.get("table5") or f"{self.outputs.get('ratings_sheet')} (rate it, then pass it as `ratings`)")
        )


def run_hallucination(cfg: HallucinationConfig) -> HallucinationSummary:
    """Answers, LLM verdicts, the rating sheet, imported human verdicts, Table 5. See the module doc."""
    from lamini.evaluate.inference import generate_for_students
    from lamini.evaluate.probes.ratings import export_sheet, import_sheet

    t0 = time.time()
    run = RunDir(cfg.run_dir)
    questions = read_questions(cfg.questions)
    runs = generate_for_students(cfg.students, questions, cfg.generation, run, "answers", cfg.ray)
    students = [s.name for s in cfg.students]
    answers = pa.concat_tables([runs[s].table for s in students], promote_options="default")

    reused = [f"answers/{s}.parquet" for s in students if runs[s].reused]
    verdicts: dict[str, pa.Table] = {}
    for judge in cfg.judges:
        name = judge_name(judge)
        rel = f"verdicts/{slug(name)}.parquet"
        parts = verdict_parts(judge, answers)
        old = reusable(run, rel, parts, "judging")
        if old is not None:
            verdicts[name] = old
            reused.append(rel)
            continue
        verdicts[name] = store(run, rel, run_judge(judge, answers, run, cfg.ray), parts)
    sheet = export_sheet(run, answers, verdicts)
    for path in cfg.ratings:
        name, table = import_sheet(path, answers)
        verdicts[name] = table

    counts = {j: count_table5(t, students) for j, t in verdicts.items()}
    names = list(verdicts)
    agree = {f"{a} vs {b}": agreement(verdicts[a], verdicts[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    n_questions = {c: questions.column("category").to_pylist().count(c) for c in CATEGORIES}
    outputs = {"answers": run.uri_of("answers"), "ratings_sheet": sheet}
    if counts:
        run.write_text("table5.md", render_table5(counts, n_questions, agree))
        run.write_text("table5.json", json.dumps({"questions": n_questions, "judges": counts, "agreement": agree}, indent=2))
        outputs.update(table5=run.uri_of("table5.md"), table5_json=run.uri_of("table5.json"), plot=plot_table5(run, counts))
    summary = HallucinationSummary(
        run_dir=run.uri,
        students=students,
        questions=questions.num_rows,
        judges=names,
        hallucinated={j: {s: c["total"] for s, c in by.items()} for j, by in counts.items()},
        unjudged={j: sum(c["unjudged"] for c in by.values()) for j, by in counts.items()},
        answer_errors=sum(runs[s].errors for s in students),
        wall_s=round(time.time() - t0, 2),
        missing=sum(runs[s].missing for s in students),
        outputs=outputs,
        reused=reused,
    )
    mf.write(run, "probe-hallucination", cfg, serving=[runs[s].serving.describe() for s in students],
             summary=summary.__dict__)  # fmt: skip
    log.info(summary.line())
    return summary
