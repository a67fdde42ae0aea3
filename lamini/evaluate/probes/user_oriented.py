"""`lamini probe user-oriented`: the paper's human evaluation (section 4.2, Appendix C, Table 7,
Figure 5) plus LLM judges with the same rubric.

Plan of a run (resumable: responses and LLM grades a finished step wrote are reused):

    ../shared/data/user_oriented_instructions.jsonl (252 instructions, 71 apps)
      -> select_instructions: at most 2 per app (seeded draw), minus those the downstream tasks
         cover (NLI, sentiment, summarization; DOWNSTREAM_PATTERNS): ~114 rows, run/selection.json
         records the seed, the rows kept and every row dropped with its reason
      -> every student responds (lamini.evaluate.inference; the instruction and its input joined
         as "$instruction:$input"): run/responses/<student>.parquet
      -> blinded rating sheets for people, CSV + HTML (lamini.evaluate.probes.sheets): run/sheets/
      -> every LLM judge grades every response A-D with the Table 7 rubric, `judge_votes` times,
         keeping the majority and the reasons: run/grades/<judge>.parquet
      -> filled sheets listed in `ratings` are checked and un-blinded as the judge `human`
      -> run/figure5.md, figure5.json, figure5_<judge>.png: the share of A/B/C/D per model
         and judge (Figure 5), and agreement between judges (Cohen's kappa).

A response a judge could not grade (no response, unparseable reply, failed request, a sheet not
yet imported) is counted as `unjudged`, never guessed.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lamini.config import RayInitConfig
from lamini.evaluate.config import UserJudgeConfig, UserOrientedConfig
from lamini.evaluate.inference import ROW_INDEX
from lamini.evaluate.probes import judging
from lamini.evaluate.probes.judging import (
    ask_judge,
    judge_name,
    judge_settings,
    request_id,
    settings_tag,
    slug,
)
from lamini.evaluate.probes.sheets import CRITERIA, GRADES
from lamini.runs import manifest as mf
from lamini.runs.fingerprint import reusable, store, table_digest
from lamini.runs.rundir import RunDir

# Instructions the paper's downstream tasks (Table 8: NLI, sentiment, summarization) already
# cover. The paper gives no list, so this is our reading: case-insensitive regexes on the
# instruction text (not the app: "Twitter" or "IMDB" alone says nothing about the task).
DOWNSTREAM_PATTERNS: dict[str, list[str]] = {
    "natural_language_inference": [r"entail", r"contradict", r"natural language inference", r"\bnli\b"],
    "sentiment_analysis": [r"sentiment", r"positive(,| or) negative", r"negative or positive"],
    "summarization": [r"summari[sz]", r"\bsummary of\b", r"\b(brief|short|concise) summary\b", r"\btl;? ?dr\b"],
}
JOIN = ":"  # instruction and input are joined as "$instruction:$input" (the paper's format)
GRADE_SCHEMA = pa.schema(
    [
        ("student", pa.string()),
        ("instruction_id", pa.string()),
        ("grade", pa.string()),  # A | B | C | D | null (unjudged)
        ("reason", pa.string()),
        ("votes", pa.string()),  # the grades of every vote, e.g. "A,A,B" ("" for people)
        ("judge", pa.string()),
        ("error_kind", pa.string()),
    ]
)
_GRADE = re.compile(r"grade\W*([ABCD])\b", re.I)
_REASON = re.compile(r"reason\W*(.+)", re.I | re.S)


def read_instructions(path: str) -> list[dict[str, Any]]:
    """The user-oriented JSONL (local or URI) -> [{id, app, instruction, input}] in file order (the
    first instance's input; "" when none). A bad line raises CorpusError naming the file and line."""
    from lamini.corpus import CorpusError
    from lamini.corpus.sources import jsonl_objects

    out, ids = [], set()
    for file, n, obj in jsonl_objects(path):
        if obj.get("id") is None or not str(obj.get("instruction") or "").strip():
            raise CorpusError(file, n, "expected an object with `id`, `motivation_app` and a non-empty `instruction`")
        if str(obj["id"]) in ids:
            raise CorpusError(file, n, f"id {obj['id']!r} repeats an earlier line")
        ids.add(str(obj["id"]))
        inst = obj.get("instances") or [{}]
        out.append({"id": str(obj["id"]), "app": str(obj.get("motivation_app") or ""),
                    "instruction": str(obj["instruction"]).strip(), "input": str(inst[0].get("input") or "").strip()})  # fmt: skip
    return out


def prompt_text(instruction: str, input_text: str) -> str:
    """What a student is asked: the instruction, with its input after a colon when there is one."""
    return f"{instruction}{JOIN}{input_text}" if input_text else instruction


def downstream_match(instruction: str, patterns: dict[str, list[str]]) -> tuple[str, str] | None:
    """(category, pattern) of the first downstream pattern the instruction matches, else None."""
    for category, pats in patterns.items():
        for p in pats:
            if re.search(p, instruction, re.I):
                return category, p
    return None


def select_instructions(
    rows: list[dict[str, Any]], seed: int, max_per_app: int, patterns: dict[str, list[str]], limit: int | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The paper's test set: per app (sorted by name) draw at most `max_per_app` rows with
    random.Random(seed), then drop the drawn rows a downstream pattern matches; `limit` keeps the
    first N. -> (table id, app, instruction (the joined prompt), raw_instruction, input, in file
    order; a record {seed, total, apps, drawn, dropped [{id, app, category, pattern, instruction}],
    selected, ids}). Pure: the same seed gives the same rows."""
    rng = random.Random(seed)
    by_app: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_app.setdefault(r["app"], []).append(i)
    drawn = sorted(i for app in sorted(by_app) for i in rng.sample(by_app[app], min(max_per_app, len(by_app[app]))))
    kept, dropped = [], []
    for i in drawn:
        hit = downstream_match(rows[i]["instruction"], patterns)
        if hit:
            dropped.append({"id": rows[i]["id"], "app": rows[i]["app"], "category": hit[0], "pattern": hit[1],
                            "instruction": rows[i]["instruction"]})  # fmt: skip
        else:
            kept.append(rows[i])
    kept = kept[:limit] if limit else kept
    table = pa.table({
        "id": [r["id"] for r in kept], "app": [r["app"] for r in kept],
        "instruction": [prompt_text(r["instruction"], r["input"]) for r in kept],
        "raw_instruction": [r["instruction"] for r in kept], "input": [r["input"] for r in kept],
    })  # fmt: skip
    record = {"seed": seed, "max_per_app": max_per_app, "total": len(rows), "apps": len(by_app), "drawn": len(drawn),
              "dropped": dropped, "selected": len(kept), "limit": limit, "ids": [r["id"] for r in kept]}  # fmt: skip
    return table, record


# ------------------------------------------------------------------------------------------
# The LLM judge
# ------------------------------------------------------------------------------------------


def load_rubric(path: str | None) -> str:
    return judging.load_rubric(path, "user_oriented_judge.txt")


def parse_grade(text: str | None) -> tuple[str | None, str]:
    """A judge's reply -> (A | B | C | D | None, reason). Pure. The first `GRADE: X` wins; the
    reason is the `REASON:` text after it, else the whole reply; None when no grade is named."""
    if not text:
        return None, "empty judge reply"
    m = _GRADE.search(text)
    r = _REASON.search(text[m.end() :] if m else text)
    return (m.group(1).upper() if m else None), (r.group(1) if r else text).strip()


def majority(votes: list[str]) -> str | None:
    """The most frequent grade of the votes; a tie goes to the worse grade (a judge that cannot
    make up its mind about a response should not lift it). None for no votes."""
    if not votes:
        return None
    counts = Counter(votes)
    top = max(counts.values())
    return max(g for g, n in counts.items() if n == top)  # "D" > "A": the worst of the tied


def run_judge(
    judge: UserJudgeConfig, responses: pa.Table, votes: int, run: RunDir, ray_cfg: RayInitConfig
) -> pa.Table:
    """Every response (student, id, raw prompt in `instruction`, response, error) -> GRADE_SCHEMA
    rows in the same order. Each response is sent `votes` times through
    lamini.evaluate.probes.judging.ask_judge (resumable, stored under run/judges/<judge>/); failed or
    unparseable votes are left out of the majority, and a response with no vote left is unjudged."""
    name, rubric = judge_name(judge), load_rubric(judge.rubric)
    tag = settings_tag(judge_settings(judge, rubric))
    rows = responses.to_pylist()
    asked: dict[int, list[str]] = {}  # row -> its request ids, one per vote
    requests = []
    for i, r in enumerate(rows):
        if r["error"] is not None:
            continue
        prompt = rubric.format(instruction=r["instruction"], response=(r["response"] or "").strip())
        asked[i] = [request_id(r["student"], r["id"], v, tag, prompt=prompt) for v in range(votes)]
        requests += [{"id": rid, "prompt": prompt} for rid in asked[i]]
    replies = ask_judge(judge, requests, run, f"judges/{slug(name)}", ray_cfg)
    out = []
    for i, r in enumerate(rows):
        base = {"student": r["student"], "instruction_id": r["id"], "judge": name}
        if r["error"] is not None:
            out.append({**base, "grade": None, "reason": f"the student gave no response: {r['error']}", "votes": "",
                        "error_kind": "no_response"})  # fmt: skip
            continue
        vs = []
        for rid in asked[i]:
            reply = replies[rid]
            if reply["error"] is not None:
                vs.append((None, f"judge request failed: {reply['error']}", reply["error_kind"] or "judge_error"))
                continue
            grade, reason = parse_grade(reply["response"])
            vs.append((grade, reason, None) if grade else (None, f"no GRADE in the judge's reply: {reply['response']!r}", "judge_unparseable"))
        ok = [v for v in vs if v[0]]
        grade = majority([v[0] for v in ok])
        reason = next(v[1] for v in ok if v[0] == grade) if grade else vs[0][1]
        out.append({**base, "grade": grade, "reason": reason, "votes": ",".join(v[0] or "-" for v in vs),
                    "error_kind": None if grade else vs[0][2]})  # fmt: skip
    return pa.Table.from_pylist(out, schema=GRADE_SCHEMA)


def agreement(a: pa.Table, b: pa.Table) -> dict[str, Any]:
    """Two judges' grades over the responses both graded -> {n, agree (fraction), cohen_kappa}."""
    from lamini.reporting import agreement as judge_agreement

    return judge_agreement(a, b, ("student", "instruction_id"), "grade")


# ------------------------------------------------------------------------------------------
# Report and the stage
# ------------------------------------------------------------------------------------------


def count_grades(grades: pa.Table, students: list[str]) -> dict[str, dict[str, int]]:
    """One judge's grades -> {student: {A, B, C, D, rated, unjudged}}."""
    out = {s: {**{g: 0 for g in GRADES}, "rated": 0, "unjudged": 0} for s in students}
    for r in grades.to_pylist():
        cell = out.get(r["student"])
        if cell is not None:
            if r["grade"]:
                cell[r["grade"]] += 1
                cell["rated"] += 1
            else:
                cell["unjudged"] += 1
    return out


def render_markdown(counts: dict[str, dict[str, dict[str, int]]], n: int, agree: dict[str, Any]) -> str:
    """{judge: {student: counts}} -> Markdown: one Figure 5 table per judge, then judge agreement."""
    from lamini.reporting import md_table

    parts = ["# User-oriented evaluation (Figure 5)", "",
             f"{n} user-oriented instructions, each response graded A-D (Table 7). % of the graded responses.", "",
             *[f"- **{g}**: {CRITERIA[g]}." for g in GRADES]]  # fmt: skip
    headers = ["Model", *[f"{g}" for g in GRADES], *[f"{g} %" for g in GRADES], "Graded", "Unjudged"]
    for judge, by in counts.items():
        rows = [[s, *[c[g] for g in GRADES], *[100 * c[g] / c["rated"] if c["rated"] else None for g in GRADES],
                 c["rated"], c["unjudged"]] for s, c in by.items()]  # fmt: skip
        parts += ["", f"## Judge: {judge}", "", md_table(headers, rows)]
    if agree:
        rows = [[p, a["n"], None if a["agree"] is None else 100 * a["agree"],
                 None if a["cohen_kappa"] is None else f"{a['cohen_kappa']:.3f}"] for p, a in agree.items()]  # fmt: skip
        parts += ["", "## Judge agreement", "", md_table(["Judges", "Both graded", "Agree %", "Cohen's kappa"], rows)]
    return "\n".join(parts) + "\n"


LEGEND = {"A": "acceptable", "B": "minor errors", "C": "significant errors", "D": "invalid"}  # Table 7, short


def plot_figure5(run: RunDir, judge: str, by: dict[str, dict[str, int]]) -> str:
    from lamini.reporting import stacked_bars

    shares = {f"{g}: {LEGEND[g]}": [100 * c[g] / c["rated"] if c["rated"] else 0 for c in by.values()] for g in GRADES}
    colors = ["#2e7d32", "#9ccc65", "#ffb74d", "#e53935"]
    return stacked_bars(run, f"figure5_{slug(judge)}.png", list(by), shares, colors, "% of graded responses",
                        f"User-oriented evaluation, judge {judge}")  # fmt: skip


@dataclass
class UserOrientedSummary:
    run_dir: str
    students: list[str]
    instructions: int
    selected: int  # before `limit`
    dropped: int
    judges: list[str]
    grades: dict[str, dict[str, dict[str, int]]]  # judge -> student -> {A, B, C, D, rated, unjudged}
    response_errors: int
    wall_s: float
    missing: int = 0
    outputs: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        per = "; ".join(f"{j}: " + ", ".join(f"{s} A{c['A']}/B{c['B']}/C{c['C']}/D{c['D']}" for s, c in by.items())
                        for j, by in self.grades.items()) or "no judge yet (rate the sheets, list them as `ratings`)"  # fmt: skip
        return (f"probe user-oriented: {len(self.students)} students x {self.instructions} instructions "
                f"(of {self.selected} selected; {self.dropped} dropped as downstream) | {per} | "
                f"{self.response_errors} failed responses | {self.wall_s:.1f} s -> {self.outputs.get('figure5') or self.outputs.get('sheets')}")  # fmt: skip


GRADED_COLUMNS = ["student", "id", "instruction", "response", "error"]  # what run_judge reads


def grade_parts(judge: UserJudgeConfig, responses: pa.Table, votes: int) -> dict[str, Any]:
    """What a stored grades file must match to be reused: the graded responses, the judge's
    settings and the number of votes."""
    return {"responses": table_digest(responses.select(GRADED_COLUMNS)),
            "judge": judge_settings(judge, load_rubric(judge.rubric)), "votes": votes}  # fmt: skip


def _llm_grades(cfg: UserOrientedConfig, run: RunDir, responses: pa.Table) -> dict[str, pa.Table]:
    """Every LLM judge's grades, reusing run/grades/<judge>.parquet when it graded the same
    responses with the same judge settings and votes (resume; its stamp says so)."""
    out: dict[str, pa.Table] = {}
    for judge in cfg.judges:
        name = judge_name(judge)
        rel = f"grades/{slug(name)}.parquet"
        parts = grade_parts(judge, responses, cfg.judge_votes)
        old = reusable(run, rel, parts, "grading")
        out[name] = old if old is not None else store(run, rel, run_judge(judge, responses, cfg.judge_votes, run, cfg.ray), parts)
    return out


def _human_grades(paths: list[str], run: RunDir, responses: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    """Filled sheets -> (the judge `human`'s grades in GRADE_SCHEMA, responses in order; what was
    imported). Responses whose sheet was not given are unjudged (`unrated`)."""
    from lamini.evaluate.probes.sheets import import_ratings

    rated, info = import_ratings(paths, json.loads(run.read_text("sheets/key.json")))
    got = {(r["student"], r["instruction_id"]): r for r in rated}
    rows = []
    for r in responses.select(["student", "id"]).to_pylist():
        g = got.get((r["student"], r["id"]))
        rows.append({"student": r["student"], "instruction_id": r["id"], "judge": "human", "votes": "",
                     "grade": g["grade"] if g else None, "reason": g["notes"] if g else "its sheet was not imported",
                     "error_kind": None if g else "unrated"})  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=GRADE_SCHEMA)
    run.makedirs("grades")
    run.write_table("grades/human.parquet", table)
    return table, info


def run_user_oriented(cfg: UserOrientedConfig) -> UserOrientedSummary:
    """Selection, responses, rating sheets, LLM grades, imported human grades, Figure 5. See the module doc."""
    from lamini.evaluate.inference import generate_for_students
    from lamini.evaluate.probes.sheets import write_sheets

    t0 = time.time()
    run = RunDir(cfg.run_dir)
    patterns = DOWNSTREAM_PATTERNS if cfg.exclude is None else cfg.exclude
    rows, record = select_instructions(read_instructions(cfg.instructions), cfg.seed, cfg.max_per_app, patterns, cfg.limit)
    run.write_text("selection.json", json.dumps({**record, "patterns": patterns}, indent=1))
    runs = generate_for_students(cfg.students, rows, cfg.generation, run, "responses", cfg.ray)
    students = [s.name for s in cfg.students]
    responses = pa.concat_tables([runs[s].table for s in students], promote_options="default")

    by_id = {r["id"]: r for r in rows.to_pylist()}
    items = [{"instruction_id": i, "instruction": by_id[i]["instruction"], "responses": {}} for i in by_id]
    for r in responses.to_pylist():
        items[r[ROW_INDEX]]["responses"][r["student"]] = (r["response"] or "").strip() if r["error"] is None else None
    sheets = write_sheets(run, items, cfg.seed, cfg.annotators)

    grades = _llm_grades(cfg, run, responses)
    human = None
    if cfg.ratings:
        grades["human"], human = _human_grades(cfg.ratings, run, responses)

    counts = {j: count_grades(t, students) for j, t in grades.items()}
    names = list(grades)
    agree = {f"{a} vs {b}": agreement(grades[a], grades[b]) for i, a in enumerate(names) for b in names[i + 1 :]}
    outputs: dict[str, Any] = {"selection": run.uri_of("selection.json"), "responses": run.uri_of("responses"),
                               "sheets": run.uri_of("sheets"), "sheet_files": sheets}  # fmt: skip
    if counts:
        run.write_text("figure5.md", render_markdown(counts, rows.num_rows, agree))
        run.write_text("figure5.json", json.dumps({"instructions": rows.num_rows, "judges": counts, "agreement": agree,
                                                  "human_sheets": human}, indent=2))  # fmt: skip
        outputs.update(figure5=run.uri_of("figure5.md"), figure5_json=run.uri_of("figure5.json"),
                       plots={j: plot_figure5(run, j, by) for j, by in counts.items()})  # fmt: skip
    summary = UserOrientedSummary(
        run_dir=run.uri, students=students, instructions=rows.num_rows, selected=record["drawn"] - len(record["dropped"]),
        dropped=len(record["dropped"]), judges=names,
        grades=counts, response_errors=sum(runs[s].errors for s in students), wall_s=round(time.time() - t0, 2),
        outputs=outputs,
    )  # fmt: skip
    mf.write(run, "probe-user-oriented", cfg, serving=[runs[s].serving.describe() for s in students],
             selection=record, summary=summary.__dict__)  # fmt: skip
    return summary

