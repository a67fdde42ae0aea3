"""`lamini herd`: seed corpora -> dataset -> trained students -> evaluations -> one report.

    dataset      `lamini dataset` inside the herd (or an existing LaMini Parquet)
    data         D_ALL -> training split + held-out slice + ablation samples (lamini.herd.data)
    bases        students built from an architecture get their tokenizer and weights (scratch)
    train        every student with `lamini train`, side by side as the cluster's CPUs/GPUs allow
    evaluate     fidelity, lm-eval, the probes: every trained student and its untrained base at once
    cards        each exported student's model card, now with its evaluation results
    report       report/report.md + PNGs + report.json (lamini.herd.report)

Each step records what it finished and with which inputs (lamini.herd.state); re-running the same
command skips finished steps and resumes the rest where their stages stopped (teacher shards, Ray
Train checkpoints, stored student outputs). A student whose training fails is reported and left
out of the evaluations; the others go on.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from lamini.herd.config import HerdConfig
from lamini.herd.plan import (
    EVALUATIONS,
    Layout,
    StudentPlan,
    base_name,
    check_plan,
    eval_config,
    plan_students,
    student_spec,
)
from lamini.herd.state import file_digest, finished, folder_digest, mark, was_recorded
from lamini.runs.fingerprint import digest
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class HerdSummary:
    run_dir: str
    rows: int
    students: dict[str, str]  # name -> "trained" | "failed: reason"
    evaluations: dict[str, str]  # stage -> "done" | "failed: reason"
    report: str
    wall_s: float
    fidelity: dict[str, Any] = field(default_factory=dict)
    missing: int = 0  # students that failed to train, plus evaluation stages that failed

    def line(self) -> str:
        ok = sum(v == "trained" for v in self.students.values())
        fid = ", ".join(
            f"{s} loglik/token {v['before']['loglik_per_token']:.3f}->{v['after']['loglik_per_token']:.3f}"
            for s, v in self.fidelity.items() if v.get("before") and v.get("after")
        )  # fmt: skip
        return (
            f"herd: {self.rows} rows, {ok}/{len(self.students)} students trained, "
            f"{sum(v == 'done' for v in self.evaluations.values())}/{len(self.evaluations)} evaluations"
            f"{'; ' + fid if fid else ''}; {self.wall_s:.0f} s -> {self.report}"
        )


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------


def build_dataset(cfg: HerdConfig, lay: Layout) -> dict[str, Any]:
    """-> {"d_all": uri, "teacher": label, "summary": ...}: the herd's D_ALL, built or given."""
    if cfg.dataset.parquet is not None:
        return {"d_all": cfg.dataset.parquet, "teacher": None, "summary": None, "report": None}
    from lamini.engines.actors import teacher_label
    from lamini.generate.dataset import D_ALL, run_dataset

    dcfg = cfg.dataset.build.model_copy(update={"run_dir": lay.dataset_run, "ray": cfg.ray})
    # The dataset stage resumes by itself (teacher shards, instruction rounds); a changed dataset
    # config runs it again in the same folder, where its own resume rules apply.
    # How fast or persistently the teacher is asked (and where Ray runs) does not change the data.
    from lamini.evaluate.probes.judging import TRANSPORT_FIELDS

    parts = {"dataset": dcfg.model_dump(mode="json", exclude={"ray": True, "pipeline": True,
                                                                "teacher": set(TRANSPORT_FIELDS)})}  # fmt: skip
    rec = finished(lay.run, "dataset", parts)
    if rec is None:
        summary = run_dataset(dcfg)
        rec = mark(lay.run, "dataset", parts, {"summary": asdict(summary)})
    ds_run = RunDir(lay.dataset_run)
    report = ds_run.uri_of("report", "report.md") if ds_run.exists("report", "report.md") else None
    return {"d_all": ds_run.uri_of(D_ALL), "teacher": teacher_label(dcfg.teacher), "summary": rec["result"]["summary"],
            "report": report, "generation": dcfg.response_generation.model_dump(), "system_prompt": dcfg.system_prompt}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# bases and training
# ---------------------------------------------------------------------------------------------


def build_bases(plans: list[StudentPlan], lay: Layout) -> None:
    """Students with `scratch` get their base built once, its tokenizer trained on the training split."""
    todo = {p.entry.name: p for p in plans if p.scratch is not None}
    if not todo:
        return
    from lamini.herd.data import read_lamini
    from lamini.models.scratch import build_scratch

    train = read_lamini(lay.train_data)
    texts = train.column("instruction").to_pylist() + train.column("response").to_pylist()
    for name, p in todo.items():
        build_scratch(p.scratch, texts, lay.base_dir(name))


def _need(p: StudentPlan) -> tuple[float, float]:
    sc = p.train.scaling
    return sc.num_workers * sc.cpus_per_worker, sc.num_workers * (1.0 if sc.use_gpu else 0.0)


def _train_parts(p: StudentPlan, lay: Layout, data: dict[str, Any]) -> dict[str, Any]:
    # The training split's hash was taken when it was written (prepare_data); a sample's is taken here.
    data_hash = data["train_sha256"] if p.sample is None else file_digest(lay.sample_data(p.sample))
    return {"train": p.train.model_dump(mode="json", exclude={"ray"}), "data": data_hash,
            "scratch": p.scratch.model_dump() if p.scratch else None}  # fmt: skip


def _train_one(p: StudentPlan, lay: Layout, parts: dict[str, Any]) -> dict[str, Any]:
    from lamini.train.trainer import run_train

    if was_recorded(lay.run, f"train-{p.name}"):  # trained before with other inputs: start afresh
        _clear(RunDir(p.train.run_dir), p.name)
    t0 = time.time()
    summary = run_train(p.train)
    if summary.model_dir is None:
        raise RuntimeError(f"training ended without an exported model (step {summary.steps}/{summary.total_steps})")
    result = {**asdict(summary), "started_at": t0, "finished_at": time.time(),
              "model_sha256": folder_digest(p.model_dir), "config_sha256": digest(parts["train"]),
              "data_sha256": parts["data"]}  # fmt: skip
    mark(lay.run, f"train-{p.name}", parts, result)
    return result


def train_students(cfg: HerdConfig, plans: list[StudentPlan], lay: Layout, data: dict[str, Any]) -> dict[str, Any]:
    """Train every student not trained yet with these inputs, as many at once as the cluster's
    free CPUs (less `reserve_cpus_for_data`) and GPUs allow. -> {name: record or {"error": reason}}."""
    import ray

    records: dict[str, Any] = {}
    todo: list[tuple[StudentPlan, dict[str, Any]]] = []
    for p in plans:
        parts = _train_parts(p, lay, data)
        rec = finished(lay.run, f"train-{p.name}", parts)
        if rec is not None:
            records[p.name] = rec["result"]
        else:
            todo.append((p, parts))
    if not todo:
        return records
    res = ray.cluster_resources()
    cpus, gpus = res.get("CPU", 0.0) - cfg.reserve_cpus_for_data, res.get("GPU", 0.0)
    cap = cfg.max_concurrent_students or len(todo)
    used = [0.0, 0.0]
    lock = threading.Lock()
    log.info("herd: training %d students (%.1f CPUs, %.0f GPUs for training)", len(todo), cpus, gpus)
    with cf.ThreadPoolExecutor(max_workers=cap, thread_name_prefix="herd-train") as ex:
        running: dict[cf.Future, tuple[StudentPlan, tuple[float, float]]] = {}
        pending = list(todo)
        while pending or running:
            for item in list(pending):
                need = _need(item[0])
                with lock:
                    fits = used[0] + need[0] <= cpus + 1e-9 and used[1] + need[1] <= gpus + 1e-9
                    # A student bigger than the free share starts alone: an autoscaling cluster grows for it.
                    if len(running) < cap and (fits or not running):
                        used[0] += need[0]
                        used[1] += need[1]
                        running[ex.submit(_train_one, item[0], lay, item[1])] = (item[0], need)
                        pending.remove(item)
            done, _ = cf.wait(list(running), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                p, need = running.pop(fut)
                used[0] -= need[0]
                used[1] -= need[1]
                try:
                    records[p.name] = fut.result()
                except Exception as e:  # noqa: BLE001 - one student's failure does not stop the herd
                    log.error("herd: student %s failed: %s: %s", p.name, type(e).__name__, e)
                    records[p.name] = {"error": f"{type(e).__name__}: {e}"}
    return records


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------


# What the ablation (Table 4) needs of its students; the probes run on the herd's own students.
ABLATION_STAGES = ("fidelity", "lm_eval")


def _models(cfg: HerdConfig, plans: list[StudentPlan], trained: dict[str, Any]):
    """(evaluated StudentSpecs, {spec name: identity}, {student: (before name, after name)})."""
    specs, ident, pairs = {}, {}, {}
    for p in plans:
        if "error" in trained.get(p.name, {"error": "not trained"}):
            continue
        after = student_spec(p, "after")
        specs[after.name] = after
        ident[after.name] = trained[p.name]["model_sha256"]
        before_name = None
        if cfg.evaluations.base_models:
            before = student_spec(p, "before")
            before_name = before.name
            specs.setdefault(before.name, before)
            ident[before.name] = {"base": p.train.model.base, "scratch": p.scratch.model_dump() if p.scratch else None}
        # An ablation student shares its herd student's base: that one's "before" stands for all.
        pairs[p.name] = (before_name if p.sample is None else None, after.name)
    return list(specs.values()), ident, pairs


def evaluate(cfg: HerdConfig, plans: list[StudentPlan], trained: dict[str, Any], lay: Layout) -> dict[str, Any]:
    """Run every configured evaluation over the trained students (and their bases). -> {stage: record}."""
    out: dict[str, Any] = {}
    for stage in _stages(cfg):
        chosen = plans if stage in ABLATION_STAGES else [p for p in plans if p.sample is None]
        specs, ident, pairs = _models(cfg, chosen, trained)
        if not specs:
            out[stage] = {"error": "no student was trained"}
            continue
        parts = {"models": ident, "settings": _stage_settings(cfg, stage)}
        rec = finished(lay.run, f"eval-{stage}", parts)
        if rec is not None:
            out[stage] = rec["result"]
            continue
        if was_recorded(lay.run, f"eval-{stage}"):  # stored results of other models under the same names
            _clear(lay.run, "eval", stage)
        try:
            result = _run_stage(cfg, stage, specs, pairs, lay)
        except Exception as e:  # noqa: BLE001 - one evaluation's failure does not stop the others
            log.error("herd: evaluation %s failed: %s: %s", stage, type(e).__name__, e)
            out[stage] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out[stage] = mark(lay.run, f"eval-{stage}", parts, result)["result"]
    return out


def _stages(cfg: HerdConfig) -> list[str]:
    ev = cfg.evaluations
    return (["fidelity"] if ev.fidelity else []) + [s for s in EVALUATIONS if getattr(ev, s) is not None]


def _stage_settings(cfg: HerdConfig, stage: str) -> Any:
    if stage == "fidelity":
        return {"generation": cfg.evaluations.fidelity_generation.model_dump(), "holdout": cfg.holdout.model_dump()}
    return getattr(cfg.evaluations, stage)


def _run_stage(cfg: HerdConfig, stage: str, specs: list, pairs: dict[str, Any], lay: Layout) -> dict[str, Any]:
    if stage == "fidelity":
        from lamini.herd.fidelity import FidelityModel, run_fidelity

        by_name = {s.name: s for s in specs}
        models = []
        for student, (before, after) in pairs.items():
            if before is not None:
                models.append(FidelityModel(student=student, phase="before", spec=by_name[before]))
            models.append(FidelityModel(student=student, phase="after", spec=by_name[after]))
        holdout = RunDir(lay.uri).read_table("data/holdout.parquet")
        # run_fidelity writes under <run>/fidelity/: the herd's eval/fidelity.
        report = run_fidelity(models, holdout, RunDir(lay.of("eval")), cfg.evaluations.fidelity_generation, cfg.ray)
        return {"summary": report.line(), "missing": report.missing, "dir": lay.eval_dir("fidelity")}
    import importlib

    fn = {"lm_eval": "lamini.evaluate.lm_eval.runner:run_eval",
          "hallucination": "lamini.evaluate.probes.hallucination:run_hallucination",
          "toxicity": "lamini.evaluate.probes.toxicity:run_toxicity_probe",
          "user_oriented": "lamini.evaluate.probes.user_oriented:run_user_oriented"}[stage]  # fmt: skip
    module, name = fn.split(":")
    summary = getattr(importlib.import_module(module), name)(eval_config(cfg, stage, specs))
    return {"summary": summary.line(), "missing": summary.missing, "dir": lay.eval_dir(stage)}


# ---------------------------------------------------------------------------------------------
# the whole herd
# ---------------------------------------------------------------------------------------------


def run_herd(cfg: HerdConfig) -> HerdSummary:
    """Run or resume the whole herd for a HerdConfig; returns its summary."""
    from lamini.herd.cards import write_cards
    from lamini.herd.data import prepare_data
    from lamini.herd.report import write_report
    from lamini.runs import manifest as mf
    from lamini.runs.ray_env import init_ray

    t0 = time.time()
    check_plan(cfg)  # every student's and evaluation's config, before the first teacher call
    lay = Layout(cfg)
    run = lay.run
    init_ray(cfg.ray)
    dataset = build_dataset(cfg, lay)
    data = prepare_data(cfg, dataset["d_all"])
    log.info("herd: D_ALL %d rows -> train %d, holdout %d", data["rows"], data["train"], data["holdout"])
    plans = plan_students(cfg, sorted(data["sources"]))
    build_bases(plans, lay)
    trained = train_students(cfg, plans, lay, data)
    evals = evaluate(cfg, plans, trained, lay)
    write_cards(cfg, plans, trained, evals, dataset, lay)
    report, fidelity = write_report(cfg, plans, trained, evals, dataset, data, lay)
    students = {p.name: ("trained" if "error" not in trained[p.name] else f"failed: {trained[p.name]['error']}")
                for p in plans}  # fmt: skip
    stages = {s: ("done" if "error" not in r else f"failed: {r['error']}") for s, r in evals.items()}
    summary = HerdSummary(
        run_dir=run.uri, rows=data["rows"], students=students, evaluations=stages, report=report,
        wall_s=round(time.time() - t0, 1), fidelity=fidelity,
        missing=sum(v != "trained" for v in students.values()) + sum(v != "done" for v in stages.values()),
    )  # fmt: skip
    mf.write(run, "herd", cfg, summary=asdict(summary), data=data, teacher=dataset["teacher"],
             students={p.name: trained[p.name] for p in plans})  # fmt: skip
    log.info(summary.line())
    return summary


def _clear(run: RunDir, *parts: str) -> None:
    """Delete a stale output folder (a student's run, an evaluation's results) before it is redone."""
    import pyarrow.fs as pafs

    path = run.path(*parts)
    if run.fs.get_file_info(path).type == pafs.FileType.Directory:
        log.warning("herd: removing stale %s", run.uri_of(*parts))
        run.fs.delete_dir(path)


__all__ = ["HerdSummary", "run_herd", "base_name"]
