"""The hallucination probe's rating sheet for people: export a CSV, import it back filled in.

The sheet has one row per (student, question): the question, the student's answer, what the LLM
judge said (if one ran), and empty `verdict`, `rater`, `notes` columns. A rater writes
`rejected` or `hallucinated` (or `r` / `h`) in `verdict`; blank rows count as not yet rated.
Spreadsheet programs keep the columns, so the sheet can go through Excel or Google Sheets and
come back. Importing checks every row against the run's answers and names the file and line of
anything wrong.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pyarrow as pa

from lamini.runs.rundir import RunDir

# One verdict per (student, question, judge): the LLM judges' and the people's alike.
VERDICT_SCHEMA = pa.schema(
    [
        ("student", pa.string()),
        ("question_id", pa.string()),
        ("category", pa.string()),
        ("verdict", pa.string()),  # rejected | hallucinated | null (unjudged)
        ("reason", pa.string()),
        ("judge", pa.string()),
        ("error_kind", pa.string()),
    ]
)

SHEET = "ratings_sheet.csv"
COLUMNS = ["student", "question_id", "category", "question", "answer", "llm_judge", "llm_verdict", "llm_reason",
           "verdict", "rater", "notes"]  # fmt: skip
_ACCEPTED = {"rejected": "rejected", "r": "rejected", "hallucinated": "hallucinated", "h": "hallucinated"}


def export_sheet(run: RunDir, answers: pa.Table, verdicts: dict[str, pa.Table]) -> str:
    """answers (student, id, category, instruction, response, error) + LLM verdicts -> run/ratings_sheet.csv.

    The LLM columns hold the first LLM judge's verdict and reason (a rater may read or hide them).
    Returns the sheet's URI.
    """
    judge, by_key = "", {}
    if verdicts:
        judge, table = next(iter(verdicts.items()))
        by_key = {(r["student"], r["question_id"]): r for r in table.to_pylist()}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in answers.to_pylist():
        v = by_key.get((r["student"], r["id"]), {})
        answer = (r["response"] or "").strip() if r["error"] is None else f"[no answer: {r['error']}]"
        w.writerow(
            {"student": r["student"], "question_id": r["id"], "category": r["category"], "question": r["instruction"],
             "answer": answer, "llm_judge": judge if v else "", "llm_verdict": v.get("verdict") or "",
             "llm_reason": v.get("reason") or "", "verdict": "", "rater": "", "notes": ""}
        )  # fmt: skip
    run.write_text(SHEET, buf.getvalue())
    return run.uri_of(SHEET)


def import_sheet(path: str, answers: pa.Table) -> tuple[str, pa.Table]:
    """A filled sheet -> (judge name, verdicts in VERDICT_SCHEMA).

    The judge is `human:<rater>` when the sheet names one rater, else `human:<file stem>`.
    Raises CorpusError (file:line) for a missing column, an unknown verdict, a row that is not
    one of this run's answers, or a row repeated.
    """
    from lamini.corpus import CorpusError
    from lamini.evaluate.probes.ratings import VERDICT_SCHEMA
    from lamini.evaluate.probes.sheets import csv_rows

    known = {(r["student"], r["id"]): r["category"] for r in answers.select(["student", "id", "category"]).to_pylist()}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    raters: set[str] = set()
    for line, r in csv_rows(path, {"student", "question_id", "verdict"}):
        key = (r["student"] or "", r["question_id"] or "")
        if key not in known:
            raise CorpusError(path, line, f"student {key[0]!r}, question {key[1]!r} is not an answer of this run")
        if key in rows:
            raise CorpusError(path, line, f"student {key[0]!r}, question {key[1]!r} is rated twice")
        raw = (r["verdict"] or "").strip().lower()
        if raw and raw not in _ACCEPTED:
            raise CorpusError(path, line, f"verdict {r['verdict']!r} is not one of rejected, hallucinated (or r, h)")
        if (r.get("rater") or "").strip():
            raters.add(r["rater"].strip())
        rows[key] = {"verdict": _ACCEPTED.get(raw), "reason": (r.get("notes") or "").strip()}
    name = f"human:{next(iter(raters))}" if len(raters) == 1 else f"human:{Path(path).stem}"
    out = []
    for key, category in known.items():
        got = rows.get(key)
        verdict = got["verdict"] if got else None
        reason = got["reason"] if got and verdict else ("not rated" if got else "not in the sheet")
        out.append({"student": key[0], "question_id": key[1], "category": category, "verdict": verdict,
                    "reason": reason, "judge": name, "error_kind": None if verdict else "unrated"})  # fmt: skip
    return name, pa.Table.from_pylist(out, schema=VERDICT_SCHEMA)
