"""Blinded A-D rating sheets for people (LaMini-LM section 4.2, Table 7): write them, read them back.

`write_sheets(run, items, seed, annotators)` writes, under run/sheets/:

    sheet_<k>.csv   one per annotator: the Table 7 criteria as `#` lines, then one row per
                    response (sheet, item, instruction_id, instruction, response_id, response,
                    rating, notes); `rating` is left empty for the annotator
    sheet_<k>.html  the same sheet as one self-contained page (inline JS, no network; works from
                    file://): the instruction, its responses in shuffled order, an A/B/C/D choice
                    each, and "Save CSV", which downloads the filled sheet in the CSV's format
    key.json        response_id -> (student, instruction_id, sheet): the un-blinding key; not for
                    annotators

Model names never appear on a sheet: each response has a random id, stable for a seed (a hash of
seed, instruction and model, so ids do not link one model's responses across instructions).
Every response to one instruction goes to the same annotator, as in the paper, so an annotator
compares all models on it side by side.

`import_ratings(paths, key)` reads filled sheets (from a spreadsheet or the HTML page), checks each
is complete and consistent with the key, and un-blinds them into grade rows; any problem raises
CorpusError naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import random
from pathlib import Path
from typing import Any, Iterator

from lamini.runs.rundir import RunDir

GRADES = ("A", "B", "C", "D")
# Table 7 of the paper, word for word apart from the parenthesis of A.
CRITERIA = {
    "A": "valid, acceptable and satisfying (subject to the annotator) response",
    "B": "the response is acceptable but has minor errors that can be improved",
    "C": "the response is relevant and responds to the instruction, but it has significant errors in the content",
    "D": "invalid and unacceptable response",
}
COLUMNS = ["sheet", "item", "instruction_id", "instruction", "response_id", "response", "rating", "notes"]
NO_RESPONSE = "[the model gave no response]"
KEY = "sheets/key.json"


def response_id(seed: int, instruction_id: str, student: str) -> str:
    """A blind, stable id of one response: the same seed, instruction and model give the same id."""
    return "R" + hashlib.sha256(f"{seed}\x1f{instruction_id}\x1f{student}".encode()).hexdigest()[:10]


def assign(items: list[dict[str, Any]], seed: int, annotators: int) -> list[dict[str, Any]]:
    """items [{instruction_id, instruction, responses: {student: text | None}}] -> sheet rows.

    Instructions are shuffled (seeded) and dealt round robin to `annotators` sheets; the responses
    of one instruction stay together, shuffled with a per-instruction seed. Each row carries
    `student` (for the key only). Pure.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    rows, per_sheet = [], [0] * annotators
    for pos, i in enumerate(order):
        it = items[i]
        sheet = pos % annotators + 1
        per_sheet[sheet - 1] += 1
        students = sorted(it["responses"])
        random.Random(f"{seed}\x1f{it['instruction_id']}").shuffle(students)
        for s in students:
            text = it["responses"][s]
            rows.append({"sheet": sheet, "item": per_sheet[sheet - 1], "instruction_id": it["instruction_id"],
                         "instruction": it["instruction"], "response_id": response_id(seed, it["instruction_id"], s),
                         "response": NO_RESPONSE if text is None else text, "rating": "", "notes": "", "student": s})  # fmt: skip
    ids = [r["response_id"] for r in rows]
    if len(set(ids)) != len(ids):  # 40 bits of hash: only a duplicate (instruction, model) gets here
        raise ValueError("two responses got the same blind id: are instruction ids or model names repeated?")
    rows.sort(key=lambda r: (r["sheet"], r["item"]))
    return rows


def header_lines(sheet: int, annotators: int, n_items: int, n_responses: int) -> list[str]:
    """The `#` lines on top of a CSV sheet: what to do and the Table 7 criteria."""
    return [
        (f"# LaMini-LM user-oriented evaluation: rating sheet {sheet} of {annotators} "
         f"({n_responses} responses to {n_items} instructions; models hidden behind response ids)."),
        "# Write one grade in the `rating` column of every row: A, B, C or D (Table 7 of the paper).",
        *[f"# {g}: {CRITERIA[g]}." for g in GRADES],
    ]


def _csv_text(comments: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    buf.write("".join(c + "\n" for c in comments))
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def write_sheets(run: RunDir, items: list[dict[str, Any]], seed: int, annotators: int) -> dict[str, Any]:
    """Write sheet_<k>.csv / .html and key.json under run/sheets (see the module doc).

    Returns {"csv": [uri...], "html": [uri...], "key": uri, "rows": n}. Sheets left without an
    instruction (more annotators than instructions) are not written.
    """
    rows = assign(items, seed, annotators)
    run.makedirs("sheets")
    out: dict[str, Any] = {"csv": [], "html": [], "rows": len(rows)}
    for k in range(1, annotators + 1):
        mine = [r for r in rows if r["sheet"] == k]
        if not mine:
            continue
        comments = header_lines(k, annotators, len({r["instruction_id"] for r in mine}), len(mine))
        run.write_text(f"sheets/sheet_{k}.csv", _csv_text(comments, mine))
        run.write_text(f"sheets/sheet_{k}.html", render_html(k, annotators, comments, mine))
        out["csv"].append(run.uri_of(f"sheets/sheet_{k}.csv"))
        out["html"].append(run.uri_of(f"sheets/sheet_{k}.html"))
    key = {"seed": seed, "annotators": annotators,
           "responses": {r["response_id"]: {"student": r["student"], "instruction_id": r["instruction_id"],
                                            "sheet": r["sheet"]} for r in rows}}  # fmt: skip
    run.write_text(KEY, json.dumps(key, indent=1))
    out["key"] = run.uri_of(KEY)
    return out


def csv_rows(path: str, need: set[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """A rating sheet as people send it back -> (line the row starts on, row) per row.

    Reads what spreadsheets write: a BOM (Excel), and leading `#` comment lines, which they may
    quote or pad with commas. Line numbers are physical lines (a quoted cell may span several).
    Raises CorpusError(path, line) for a header without the `need` columns.
    """
    from lamini.corpus import CorpusError

    lines = Path(path).read_text(encoding="utf-8-sig").splitlines(keepends=True)
    skip = 0
    while skip < len(lines) and lines[skip].lstrip('"').startswith("#"):
        skip += 1
    reader = csv.DictReader(io.StringIO("".join(lines[skip:])))
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise CorpusError(path, skip + 1, f"the header needs the columns {sorted(need)} (got {reader.fieldnames})")
    start = skip + 2  # physical line of the next row (1-based; the header is skip + 1)
    for r in reader:
        line, start = start, skip + reader.line_num + 1
        yield line, r


def import_ratings(paths: list[str], key: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Filled sheets + the key -> (one row per rated response: {student, instruction_id, grade,
    notes, sheet}, {"sheets": [imported sheet numbers], "rated": n}).

    Each file must hold one sheet, every response of that sheet once, each with a grade A-D
    (lower case and surrounding spaces are accepted). Raises CorpusError(file, line, reason) for a
    missing column, an unknown or moved response, a missing or invalid rating, a response rated
    twice (in one file or across files), or a sheet with responses missing.
    """
    from lamini.corpus import CorpusError

    known = key["responses"]
    seen: dict[str, str] = {}  # response_id -> "file:line" where it was rated
    out, sheets = [], []
    for path in paths:
        sheet: int | None = None
        for line, r in csv_rows(path, {"sheet", "instruction_id", "response_id", "rating"}):
            rid = (r["response_id"] or "").strip()
            where = f"response {rid!r} (instruction {r['instruction_id']!r})"
            k = known.get(rid)
            if k is None:
                raise CorpusError(path, line, f"response_id {rid!r} is not a response of this run's sheets")
            if (r["instruction_id"] or "").strip() != k["instruction_id"]:
                raise CorpusError(path, line, f"{where}: response {rid} answers instruction {k['instruction_id']!r}")
            if str(r["sheet"]).strip() != str(k["sheet"]):
                raise CorpusError(path, line, f"{where}: it belongs to sheet {k['sheet']}, the row says {r['sheet']!r}")
            sheet = k["sheet"] if sheet is None else sheet
            if k["sheet"] != sheet:
                raise CorpusError(path, line, f"{where}: sheet {k['sheet']} row in a file of sheet {sheet}")
            if rid in seen:
                raise CorpusError(path, line, f"{where} is rated twice (first at {seen[rid]})")
            seen[rid] = f"{path}:{line}"
            grade = (r["rating"] or "").strip().upper()
            if not grade:
                raise CorpusError(path, line, f"{where} has no rating (write A, B, C or D)")
            if grade not in GRADES:
                raise CorpusError(path, line, f"{where}: rating {r['rating']!r} is not one of A, B, C, D")
            out.append({"student": k["student"], "instruction_id": k["instruction_id"], "grade": grade,
                        "notes": (r.get("notes") or "").strip(), "sheet": sheet})  # fmt: skip
        if sheet is None:
            raise CorpusError(path, None, "no rated rows")
        lacking = [rid for rid, k in known.items() if k["sheet"] == sheet and rid not in seen]
        if lacking:
            raise CorpusError(path, None, f"sheet {sheet} is incomplete: {len(lacking)} responses missing, e.g. {lacking[:3]}")
        sheets.append(sheet)
    return out, {"sheets": sorted(sheets), "rated": len(out)}


# ------------------------------------------------------------------------------------------
# The HTML page
# ------------------------------------------------------------------------------------------

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;max-width:60rem;margin:1.5rem auto;padding:0 1rem;color:#222}
.criteria dt{font-weight:700;float:left;width:1.5rem}.criteria dd{margin:0 0 .3rem 2rem}
section.item{border-top:2px solid #888;margin-top:1.5rem}
pre{white-space:pre-wrap;background:#f4f4f4;padding:.6rem;border-radius:4px;margin:.4rem 0}
.response{border:1px solid #ccc;border-radius:6px;padding:.5rem .8rem;margin:.8rem 0}
.response.rated{border-color:#3a3}.rid{color:#666;font-size:85%}
fieldset{border:0;padding:0}label{margin-right:1rem;cursor:pointer}input.notes{width:60%}
#bar{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #ccc}
#csv-out{width:100%;height:6rem;display:none}
"""

# Builds the CSV in the importer's format from the embedded rows and the choices, shows it in
# #csv-out (a fallback when downloads are blocked) and downloads it through a Blob link, which
# also works from file://. Choices are kept in localStorage so a closed tab loses nothing.
_SCRIPT = """
(function(){
  var data = JSON.parse(document.getElementById('sheet-data').textContent);
  var store = 'lamini-sheet-' + data.token;
  function q(s){ return '"' + String(s).replace(/"/g, '""') + '"'; }
  function state(){
    var st = {};
    data.rows.forEach(function(r){
      var box = document.querySelector('[data-rid="' + r.response_id + '"]');
      var on = box.querySelector('input[type=radio]:checked');
      st[r.response_id] = {rating: on ? on.value : '', notes: box.querySelector('input.notes').value};
      box.classList.toggle('rated', !!on);
    });
    return st;
  }
  function progress(){
    var st = state(), n = 0;
    for (var k in st) if (st[k].rating) n++;
    document.getElementById('progress').textContent = n + ' / ' + data.rows.length + ' rated';
    try { localStorage.setItem(store, JSON.stringify(st)); } catch (e) {}
    return n;
  }
  function csv(){
    var st = state(), out = data.comments.join('\\n') + '\\n' + data.columns.join(',') + '\\n';
    data.rows.forEach(function(r){
      var row = Object.assign({}, r, st[r.response_id]);
      out += data.columns.map(function(c){ return q(row[c] == null ? '' : row[c]); }).join(',') + '\\n';
    });
    return out;
  }
  try {
    var old = JSON.parse(localStorage.getItem(store) || '{}');
    for (var rid in old) {
      var box = document.querySelector('[data-rid="' + rid + '"]');
      if (!box) continue;
      var r = box.querySelector('input[value="' + old[rid].rating + '"]');
      if (r) r.checked = true;
      box.querySelector('input.notes').value = old[rid].notes || '';
    }
  } catch (e) {}
  document.addEventListener('change', progress);
  document.addEventListener('input', progress);
  document.getElementById('save').addEventListener('click', function(){
    var n = progress(), text = csv();
    var ta = document.getElementById('csv-out');
    ta.value = text; ta.style.display = 'block';
    var a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob(['\\ufeff' + text], {type: 'text/csv;charset=utf-8'}));
    a.download = data.filename;
    document.body.appendChild(a); a.click(); document.body.removeChild(a);
    document.getElementById('status').textContent = n < data.rows.length
      ? 'Saved ' + data.filename + ', but ' + (data.rows.length - n) + ' responses are not rated yet: the import rejects an incomplete sheet.'
      : 'Saved ' + data.filename + ': every response is rated.';
  });
  progress();
})();
"""


def render_html(sheet: int, annotators: int, comments: list[str], rows: list[dict[str, Any]]) -> str:
    """One sheet's rows -> a self-contained HTML page (see the module doc). Pure."""
    e = html.escape
    public = [{c: r[c] for c in COLUMNS} for r in rows]  # never the student
    token = hashlib.sha256(json.dumps(public, sort_keys=True).encode()).hexdigest()[:12]
    data = {"rows": public, "columns": COLUMNS, "comments": comments, "token": token,
            "filename": f"sheet_{sheet}_filled.csv"}  # fmt: skip
    # "</script>" or "<!--" inside a <script> block would end or derail it: escape every "<" (valid JSON).
    blob = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Rating sheet {sheet} of {annotators}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Rating sheet {sheet} of {annotators}</h1>",
        ("<p>Read each instruction and rate every response to it. The models are hidden behind response ids and "
         "shown in random order. When done, press <b>Save CSV</b> and send the downloaded file back.</p>"),
        "<dl class='criteria'>" + "".join(f"<dt>{g}</dt><dd>{e(CRITERIA[g])}.</dd>" for g in GRADES) + "</dl>",
        ("<div id='bar'><button id='save' type='button'>Save CSV</button> <span id='progress'></span> "
         "<span id='status'></span><textarea id='csv-out' readonly></textarea></div>"),
    ]
    item = None
    for r in rows:
        if r["item"] != item:
            if item is not None:
                parts.append("</section>")
            item = r["item"]
            parts.append(f"<section class='item'><h2>Instruction {item}</h2><pre class='instruction'>{e(r['instruction'])}</pre>")
        rid = e(r["response_id"])
        radios = "".join(
            f"<label title='{e(CRITERIA[g])}'><input type='radio' name='rate-{rid}' value='{g}'> {g}</label>" for g in GRADES
        )
        parts.append(
            f"<div class='response' data-rid='{rid}'><div class='rid'>Response {rid}</div><pre>{e(r['response'])}</pre>"
            f"<fieldset>{radios}<input class='notes' type='text' placeholder='notes (optional)'></fieldset></div>"
        )
    parts.append("</section>" if item is not None else "")
    parts.append(f"<script type='application/json' id='sheet-data'>{blob}</script><script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts)
