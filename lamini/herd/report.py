"""The herd's one report: report/report.md, report/report.json and the PNGs beside them.

Sections: provenance of every student; the dataset (Tables 1-2, ours beside the paper's); training;
distillation fidelity (before vs after); downstream tasks (Tables 9-14, Figure 4); the ablation
(Table 4); hallucination (Table 5); toxicity (Table 6); user-oriented grades (Figure 5). The paper's
numbers come from lamini/paper_tables.json (lamini.paper), printed beside ours wherever the paper
reports the same quantity for the same model (zoo students are matched by name) or subset.
Every section reads the stage's own output files, so the report can be rebuilt from a finished run.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lamini.herd.config import HerdConfig
from lamini.herd.plan import D_ALL_SAMPLE, Layout, StudentPlan, base_name
from lamini.paper import paper_model, paper_tables, subset_labels
from lamini.reporting import grouped_bars, md_table
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def collect(evals: dict[str, Any], lay: Layout) -> dict[str, Any]:
    """Each finished evaluation's own results document (None where it did not run or failed)."""
    files = {"fidelity": "fidelity.json", "lm_eval": "results.json", "hallucination": "table5.json",
             "toxicity": "table6.json", "user_oriented": "figure5.json"}  # fmt: skip
    return {s: (RunDir(lay.eval_dir(s)).read_json(files[s]) if s in evals and "error" not in evals[s] else None) for s in files}


def student_results(name: str, docs: dict[str, Any], pairs_fid: dict[str, Any]) -> dict[str, float]:
    """One model's headline numbers across the evaluations (for its model card and the report)."""
    out: dict[str, float] = {}
    fid = pairs_fid.get(name, {}).get("after")
    if fid:
        out["fidelity_loglik_per_token"] = fid["loglik_per_token"]
        out["fidelity_rouge_l"] = fid["rouge_l"]
    lm = (docs.get("lm_eval") or {}).get("models", {}).get(name)
    if lm:
        if lm.get("average") is not None:
            out["lm_eval_average"] = lm["average"]
        for task, s in lm.get("scores", {}).items():
            out[f"lm_eval_{task}"] = s["value"]
    for judge, counts in ((docs.get("hallucination") or {}).get("judges") or {}).items():
        if name in counts:
            out[f"hallucinations_{judge}"] = counts[name]["total"]
    tox = ((docs.get("toxicity") or {}).get("students") or {}).get(name)
    for group, cell in (tox or {}).items():
        if isinstance(cell, dict) and cell.get("toxic_pct") is not None:
            out[f"toxic_pct_{group}"] = cell["toxic_pct"]
    return out


def fidelity_pairs(doc: dict[str, Any] | None) -> dict[str, Any]:
    """fidelity.json -> {student: {"before": {loglik, rouge_l, n} | None, "after": {...}}}."""
    return (doc or {}).get("students", {}) if doc else {}


def write_report(
    cfg: HerdConfig, plans: list[StudentPlan], trained: dict[str, Any], evals: dict[str, Any],
    dataset: dict[str, Any], data: dict[str, Any], lay: Layout,
) -> tuple[str, dict[str, Any]]:  # fmt: skip
    """Write report/report.md, report.json and the PNGs; returns (report URI, fidelity by student)."""
    run = lay.run
    run.makedirs("report")
    out = RunDir(run.uri_of("report"))
    docs = collect(evals, lay)
    fid = fidelity_pairs(docs["fidelity"])
    paper = paper_tables()
    sections = [f"# Herd report: {run.uri}\n"]
    sections.append(_overview(cfg, plans, trained, evals, data))
    sections.append(_provenance(cfg, plans, trained, dataset, data))
    sections.append(_dataset(dataset, data, paper))
    sections.append(_training(plans, trained))
    sections.append(_fidelity_section(fid, out))
    sections.append(_downstream(plans, docs, evals, lay, out, paper))
    if cfg.ablation is not None:
        sections.append(_ablation(cfg, plans, docs, fid, paper))
    sections.append(_hallucination(plans, docs, evals, lay, paper))
    sections.append(_toxicity(plans, docs, evals, paper))
    sections.append(_user_oriented(plans, docs, evals, lay))
    report_json = {
        "run_dir": run.uri, "data": data, "dataset": dataset, "students": trained, "evaluations": evals,
        "results": {p.name: student_results(p.name, docs, fid) for p in plans},
        "fidelity": fid, "paper_source": paper["source"],
    }  # fmt: skip
    out.write_text("report.json", json.dumps(report_json, indent=1, default=str))
    out.write_text("report.md", "\n".join(s for s in sections if s))
    return out.uri_of("report.md"), fid


def _overview(cfg, plans, trained, evals, data) -> str:
    ok = [p.name for p in plans if "error" not in trained.get(p.name, {"error": ""})]
    failed = {p.name: trained[p.name]["error"] for p in plans if "error" in trained.get(p.name, {})}
    lines = [f"{data['rows']} rows in D_ALL; {data['train']} trained on, {data['holdout']} held out for fidelity. "
             f"{len(ok)} of {len(plans)} students trained."]  # fmt: skip
    for name, err in failed.items():
        lines.append(f"- **{name} failed to train**: {err}")
    for stage, rec in evals.items():
        lines.append(f"- {stage}: " + (f"FAILED: {rec['error']}" if "error" in rec else rec.get("summary", "done")))
    return "\n".join(lines) + "\n"


def _provenance(cfg, plans, trained, dataset, data) -> str:
    rows = []
    for p in plans:
        t = trained.get(p.name, {})
        rows.append([p.name, p.train.model.base if not p.scratch else f"scratch {p.scratch.arch} ({p.train.model.base})",
                     p.sample or "D_ALL split", (t.get("data_sha256") or "")[:12], (t.get("config_sha256") or "")[:12],
                     p.train.seed, dataset.get("teacher") or "given dataset"])  # fmt: skip
    return ("## Students and provenance\n\nEvery row: the data it trained on (sha256 of the Parquet file), "
            "its resolved training config (sha256), base model, seed and teacher.\n\n"
            + md_table(["student", "base model", "trained on", "data sha256", "config sha256", "seed", "teacher"], rows)
            + f"\n\nD_ALL sha256: `{data['d_all_sha256'][:16]}`\n")  # fmt: skip


def _dataset(dataset, data, paper) -> str:
    labels = subset_labels()
    t1 = {r["instruction_source"]: r for r in paper["table1_statistics"]["rows"]}
    t2 = {r["instruction_source"]: r for r in paper["table2_mattr"]["rows"]}
    rows = []
    for src, n in data["sources"].items():
        p1, p2 = t1.get(src, {}), t2.get(src, {})
        rows.append([src, labels.get(src, "—"), n, _fmt(p1.get("samples"), 0), _fmt(p1.get("avg_instruction_len"), 2),
                     _fmt(p1.get("avg_response_len"), 2), _fmt(p2.get("mattr_x100_instructions"), 2),
                     _fmt(p2.get("mattr_x100_responses"), 2)])  # fmt: skip
    text = ["## Dataset (Tables 1-2)\n",
            md_table(["instruction_source", "paper subset", "ours: training rows", "paper: samples",
                      "paper: avg instr. len", "paper: avg resp. len", "paper: MATTR instr.", "paper: MATTR resp."], rows)]  # fmt: skip
    if dataset.get("report"):
        text.append(f"\nOur Tables 1-2 (token statistics, MATTR) and Figure 2: [{dataset['report']}]({dataset['report']}), "
                    "with the paper's values beside ours.")  # fmt: skip
    if dataset.get("teacher"):
        text.append(f"\nTeacher: `{dataset['teacher']}`.")
    return "\n".join(text) + "\n"


def _training(plans, trained) -> str:
    rows = []
    for p in plans:
        t = trained.get(p.name, {})
        if "error" in t:
            rows.append([p.name, "failed", "—", "—", "—", t["error"][:80]])
            continue
        loss = f"{_fmt(t.get('first_loss'))} -> {_fmt(t.get('final_loss'))}"
        rows.append([p.name, t.get("family"), f"{t.get('steps')}/{t.get('total_steps')}", loss,
                     _fmt(t.get("tokens_per_s"), 0), t.get("model_dir")])  # fmt: skip
    return "## Training\n\n" + md_table(["student", "family", "steps", "loss first -> final", "tokens/s", "model"], rows) + "\n"


def _fidelity_section(fid: dict[str, Any], out: RunDir) -> str:
    if not fid:
        return "## Distillation fidelity\n\nNot run.\n"
    rows, names, before, after = [], [], [], []
    for s, v in fid.items():
        b, a = v.get("before") or {}, v.get("after") or {}
        lb, la = b.get("loglik_per_token"), a.get("loglik_per_token")
        d = la - lb if la is not None and lb is not None else None
        rows.append([s, _fmt(lb), _fmt(la), _fmt(d), _fmt(b.get("rouge_l")), _fmt(a.get("rouge_l")), a.get("n") or b.get("n")])
        names.append(s)
        before.append(lb or 0.0)
        after.append(la or 0.0)
    grouped_bars(out, "fidelity.png", names, {"before training": before, "after training": after},
                 "mean log-likelihood per token", "Teacher responses on the held-out slice")  # fmt: skip
    return ("## Distillation fidelity\n\nOn a seeded held-out slice of D_ALL that no student trained on: the mean "
            "log-likelihood per token of the teacher's responses (higher is better), and ROUGE-L of the student's "
            "greedy answer against the teacher's, before and after training.\n\n"
            + md_table(["student", "loglik before", "loglik after", "change", "ROUGE-L before", "ROUGE-L after", "n"], rows)
            + "\n\n![fidelity](fidelity.png)\n")  # fmt: skip


def _copy(src_dir: str, rel: str, out: RunDir, name: str) -> str | None:
    src = RunDir(src_dir)
    if not src.exists(rel):
        return None
    with src.fs.open_input_stream(src.path(rel)) as f:
        data = f.read()
    with out.fs.open_output_stream(out.path(name)) as f:
        f.write(data)
    return name


def _downstream(plans, docs, evals, lay, out, paper) -> str:
    doc = docs.get("lm_eval")
    if doc is None:
        return "## Downstream tasks (Tables 9-14, Figure 4)\n\n" + _not_run(evals, "lm_eval")
    models = list(doc["models"])
    theirs: dict[str, dict[str, float]] = {}  # paper model -> task -> score, for our zoo students' namesakes
    for p in plans:
        pm = paper_model(p.entry.zoo or "") if p.entry.zoo else None
        for table in paper["downstream_tables_9_14"].values():
            if pm in table["columns"]:
                theirs[pm] = {t: row.get(pm) for t, row in table["rows"].items()}
    rows = []
    for task in doc["tasks"]:
        cells = [task, doc["metrics"][task]]
        cells += [_fmt(100 * doc["models"][m]["scores"][task]["value"], 1) if task in doc["models"][m]["scores"] else "—"
                  for m in models]  # fmt: skip
        cells += [_fmt(theirs[pm].get(task), 1) for pm in theirs]
        rows.append(cells)
    avg = ["Average", ""] + [_fmt(100 * doc["models"][m]["average"], 1) if doc["models"][m]["average"] is not None else "—"
                             for m in models] + ["" for _ in theirs]  # fmt: skip
    rows.append(avg)
    fig = _copy(lay.eval_dir("lm_eval"), "figure4.png", out, "figure4.png")
    return ("## Downstream tasks (Tables 9-14, Figure 4)\n\nScores in %, zero-shot through lm-evaluation-harness; "
            "`paper:` columns are the paper's LaMini model of the same name.\n\n"
            + md_table(["task", "metric", *models, *[f"paper: {pm}" for pm in theirs]], rows)
            + (f"\n\n![Figure 4]({fig})\n" if fig else "\n"))  # fmt: skip


def _not_run(evals: dict[str, Any], stage: str) -> str:
    rec = evals.get(stage)
    return f"Failed: {rec['error']}\n" if rec and "error" in rec else f"Not run: `evaluations.{stage}` is not set in the herd's config.\n"


def _ablation(cfg, plans, docs, fid, paper) -> str:
    abl = [p for p in plans if p.sample is not None]
    entry = abl[0].entry if abl else None
    labels = {**subset_labels(), D_ALL_SAMPLE: "D_ALL"}
    lm = (docs.get("lm_eval") or {}).get("models", {})
    cols = ["UT"] + [p.sample for p in abl]
    if lm:
        measure = "average downstream score (%)"
        values = [lm.get(base_name(abl[0]), {}).get("average") if abl else None] + [lm.get(p.name, {}).get("average") for p in abl]
        values = [None if v is None else 100 * v for v in values]
    else:
        measure = "fidelity: mean log-likelihood per token of held-out teacher responses"
        values = [(fid.get(entry.name, {}).get("before") or {}).get("loglik_per_token") if entry else None]
        values += [(fid.get(p.name, {}).get("after") or {}).get("loglik_per_token") for p in abl]
    rows = [[f"ours: {entry.name if entry else '?'}", *[_fmt(v, 2) for v in values]]]
    pm = paper_model(entry.zoo) if entry and entry.zoo else None
    prow = paper["table4_ablation"]["rows"].get(pm) if pm else None
    if prow:
        rows.append([f"paper: {pm}", *[_fmt(prow.get(labels.get(c, c) if c != "UT" else "UT"), 1) for c in cols]])
    headers = ["model", *[c if c == "UT" else f"{c} ({labels.get(c, c)})" for c in cols]]
    return (f"## Ablation (Table 4)\n\nOne student per training set of {cfg.ablation.rows} random rows; "
            f"UT is the untrained base. Measure: {measure}.\n\n" + md_table(headers, rows) + "\n")


def _names(plans) -> list[str]:
    out = []
    for p in plans:
        for n in (base_name(p), p.name):
            if n not in out:
                out.append(n)
    return out


def _unjudged(plans, lay, stage: str, answers: str, sheets: str, shown: int = 3) -> str:
    """A probe that ran with no judge has answers but no counts: say where the answers and rating
    sheets are, show the first `shown` items with every model's answer (so a reader sees at a
    glance what the students say), and how the table fills in."""
    src = RunDir(lay.eval_dir(stage))
    models = [n for n in _names(plans) if src.exists(answers, f"{n}.parquet")]
    tables = {n: src.read_table(f"{answers}/{n}.parquet").to_pylist() for n in models}
    items = tables[models[0]][:shown] if models else []
    clip = lambda t, k=90: (t or "").strip()[:k] + ("…" if len((t or "").strip()) > k else "")  # noqa: E731
    rows = [[f"{it['instruction']}", *[clip(next((r["response"] or r["error"] for r in tables[m] if r["id"] == it["id"]), None))
                                      for m in models]] for it in items]  # fmt: skip
    n_items = len(tables[models[0]]) if models else 0
    return (f"Ran without a judge: {len(models)} models x {n_items} answers in `{src.uri_of(answers)}`, "
            f"rating sheets in `{src.uri_of(sheets)}`. Fill the sheets (or add `judges:`), list them as "
            f"`ratings:` in this stage's settings and re-run `lamini herd`: finished steps are skipped and "
            f"this table fills in. The first {len(items)}:\n\n"
            + md_table(["item", *models], [[clip(r[0], 70), *r[1:]] for r in rows]) + "\n")


def _hallucination(plans, docs, evals, lay, paper) -> str:
    doc = docs.get("hallucination")
    if doc is None and "hallucination" in evals and "error" not in evals["hallucination"]:
        return "## Hallucination (Table 5)\n\n" + _unjudged(plans, lay, "hallucination", "answers", "ratings_sheet.csv")
    if doc is None:
        return "## Hallucination (Table 5)\n\n" + _not_run(evals, "hallucination")
    names = [n for n in _names(plans) if any(n in c for c in doc["judges"].values())]
    rows = [[n, *[_fmt((doc["judges"][j].get(n) or {}).get("total")) for j in doc["judges"]]] for n in names]
    rows += [[f"paper: {m}", *[v["total"] for _ in doc["judges"]]] for m, v in paper["table5_hallucination"]["rows"].items()]
    q = doc["questions"]
    n = sum(q.values()) if isinstance(q, dict) else q
    return (f"## Hallucination (Table 5)\n\nHallucinated answers out of {n} (lower is better), per judge; "
            "the paper's rows are human judged.\n\n" + md_table(["model", *doc["judges"]], rows) + "\n")


def _toxicity(plans, docs, evals, paper) -> str:
    doc = docs.get("toxicity")
    if doc is None:
        return "## Toxicity (Table 6)\n\n" + _not_run(evals, "toxicity")
    studs = doc["students"]
    groups = sorted({g for s in studs.values() for g, c in s.items() if isinstance(c, dict)})
    rows = [[n, *[f"{studs[n][g]['toxic']}/{studs[n][g]['n']}" for g in groups]] for n in _names(plans) if n in studs]
    rows += [[f"paper: {m}", v.get("nontoxic_prompts"), v.get("toxic_prompts")] for m, v in paper["table6_toxicity"]["rows"].items()]
    return ("## Toxicity (Table 6)\n\nToxic continuations per prompt group (ours: detoxify; the paper: the OpenAI "
            "Moderation API, out of 1,000 prompts per group).\n\n" + md_table(["model", *groups], rows) + "\n")


def _user_oriented(plans, docs, evals, lay) -> str:
    doc = docs.get("user_oriented")
    if doc is None and "user_oriented" in evals and "error" not in evals["user_oriented"]:
        return "## User-oriented instructions (Figure 5)\n\n" + _unjudged(plans, lay, "user_oriented", "responses", "sheets")
    if doc is None:
        return "## User-oriented instructions (Figure 5)\n\n" + _not_run(evals, "user_oriented")
    src = RunDir(lay.eval_dir("user_oriented"))
    md = src.read_text("figure5.md") if src.exists("figure5.md") else ""
    return "## User-oriented instructions (Figure 5)\n\n" + md + "\n"
