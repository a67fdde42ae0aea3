"""`lamini eval`: zero-shot lm-evaluation-harness for every student, one Ray task per (model, task).

`run_eval(cfg)` submits one Ray task per (student, task) pair, so a cluster evaluates the whole zoo
in parallel. Each task loads its student with transformers (hub id, folder or GGUF, as
lamini.models.loading does), hands the model object to lm-eval's HFLM (causal or seq2seq backend from
the student's family), and calls `lm_eval.simple_evaluate` zero-shot. Decoder-only students see every
request's context wrapped in the Alpaca template they were trained with, as LaMini-LM evaluated them
(`wrapper` in each result says which; lm_eval_wrap); encoder-decoder students see the raw context.

Why each pair is its own Ray task: pairs run side by side over the cluster, a failure stays inside
its pair, and lm-eval only ever runs in a worker process, never in the driver. lm-eval's one use of
Ray is its vLLM data-parallel path, which calls `ray.shutdown()` when done; the HF backend used here
never reaches it, and inside the worker `ray.shutdown` is a no-op anyway, so nothing lm-eval does
can shut down or re-initialise the driver's Ray.

A task YAML from `include_path` may name its `data_files` relative to its own folder: they are made
absolute before lm-eval passes them to `datasets` (which would resolve them against the cwd).

Run directory:
    results/<model>/<task>.json        one per finished pair, written as it finishes (resume: a pair
                                       whose file exists for the same student and limit is not re-run)
    results/<model>/<task>.error.json  a pair that failed, with its reason (retried on the next run)
    results.json                       every score (paper metric, stderr, n, wrapper, backend, params),
                                       averages and every failure
    tables.md                          Tables 9-14 layout, Average and Micro-average rows
    figure4.png                        average vs parameters, encoder-decoder vs decoder-only
    manifest.json                      config, environment, summary

Nothing heavy is imported at module level: torch, transformers and lm_eval load inside the Ray task.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import json
import logging
import os
import re
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lamini.evaluate.config import EvalConfig, StudentSpec
from lamini.evaluate.lm_eval.report import figure4, markdown_tables, summarize
from lamini.evaluate.lm_eval.tasks import eval_tasks, metric_for, metric_key
from lamini.evaluate.lm_eval.wrap import resolve_wrapper, wrapped_hflm_class
from lamini.reporting import save_figure
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class EvalSummary:
    run_dir: str
    models: int
    tasks: int
    computed: int  # pairs evaluated in this run
    reused: int  # pairs whose result an earlier run left (resume)
    missing: int  # pairs with no score: failed, or their metric absent
    best: str | None
    best_average: float | None
    wall_s: float

    def line(self) -> str:
        best = f"best average {self.best} {100 * self.best_average:.1f}%" if self.best else "no average"
        return (
            f"eval: {self.models} models x {self.tasks} tasks ({self.computed} evaluated, {self.reused} reused, "
            f"{self.missing} missing), {best}, {self.wall_s:.0f} s -> {self.run_dir}"
        )


# --------------------------------------------------------------------------------------
# One (model, task) pair, inside a Ray worker
# --------------------------------------------------------------------------------------

# TaskManager indexes every task YAML lm-eval ships (seconds of work): once per worker process, which
# Ray reuses across CPU tasks.
_TASK_MANAGERS: dict[str | None, Any] = {}


def _include_dir(candidates: list[str] | None) -> str | None:
    """The include_path on this node: as the driver resolved it, else relative to this worker's
    directory (a `ray job submit --working-dir` job ships the folder to every node)."""
    if not candidates:
        return None
    for c in candidates:
        if os.path.isdir(c):
            return c
    raise FileNotFoundError(f"include_path {candidates[-1]!r} is not a folder on this node (cwd {os.getcwd()})")


def task_manager(include: str | None):
    from lm_eval.tasks import TaskManager

    if include not in _TASK_MANAGERS:
        _TASK_MANAGERS[include] = TaskManager(include_path=include)
    return _TASK_MANAGERS[include]


def _absolute(files: Any, base: Path) -> Any:
    """data_files (str, list or {split: str | list}) with each relative path that exists under `base` made absolute."""
    if isinstance(files, dict):
        return {k: _absolute(v, base) for k, v in files.items()}
    if isinstance(files, list):
        return [_absolute(v, base) for v in files]
    if isinstance(files, str) and "://" not in files and not os.path.isabs(files) and glob.glob(str(base / files)):
        return str(base / files)
    return files


def task_spec(tm: Any, task: str, include: str | None) -> str | dict[str, Any]:
    """What simple_evaluate is given for `task`: its name, or, for a YAML task under the include path
    whose `dataset_kwargs.data_files` are relative, its config with those paths made absolute against
    the YAML's folder (lm-eval hands them to `datasets`, which would resolve them against the cwd)."""
    entry = tm.task_index.get(task)
    path = getattr(entry, "yaml_path", None)
    if not include or path is None or not Path(path).resolve().is_relative_to(Path(include).resolve()):
        return task
    # lm-eval's own loader (private, but the only one that follows `include:` and resolves `!function`).
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(path, resolve_func=True)
    kw = cfg.get("dataset_kwargs") or {}
    if "data_files" not in kw:
        return task
    fixed = _absolute(kw["data_files"], Path(path).resolve().parent)
    return task if fixed == kw["data_files"] else {**cfg, "dataset_kwargs": {**kw, "data_files": fixed}}


@contextmanager
def _ray_shutdown_disabled():
    """ray.shutdown() is a no-op (with a warning) inside: a library calling it in a worker would end
    the worker mid-task. lm-eval calls it only on its vLLM path, which this runner does not use."""
    import ray

    real = ray.shutdown
    ray.shutdown = lambda *a, **k: log.warning("ignored ray.shutdown() called inside a lamini eval task")
    try:
        yield
    finally:
        ray.shutdown = real


def _evaluate(student: StudentSpec, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    import torch
    from lm_eval import simple_evaluate

    from lamini.models.loading import (
        count_params,
        load_student,
        load_tokenizer,
        resolve_family,
    )

    include = _include_dir(settings["include_path"])
    tm = task_manager(include)
    if task not in tm.all_tasks:
        near = difflib.get_close_matches(task, tm.all_tasks, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise KeyError(f"lm-eval has no task {task!r} (include_path: {include}){hint}")
    family = resolve_family(student)
    wrapper = resolve_wrapper(student.wrapper, family)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray hides the GPUs of a task that asked for none
    dtype = student.dtype if student.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    model = load_student(student, family, dtype).to(device).eval()
    tok = load_tokenizer(student)
    backend = "seq2seq" if family == "encoder-decoder" else "causal"
    lm = wrapped_hflm_class()(pretrained=model, tokenizer=tok, backend=backend, batch_size=settings["batch_size"])
    lm.wrapper = wrapper
    limit = settings["limit"]
    out = simple_evaluate(
        model=lm,
        tasks=[task_spec(tm, task, include)],
        task_manager=tm,
        num_fewshot=0,
        limit=int(limit) if limit is not None and limit >= 1 else limit,
        bootstrap_iters=settings["bootstrap_iters"],
        log_samples=False,
    )
    if task not in out["results"]:  # e.g. a group without an aggregate_metric_list
        raise KeyError(f"lm-eval reported no score for {task!r} itself, only for {sorted(out['results'])}")
    res = out["results"][task]
    counts = out.get("n-samples", {})
    members = [task, *out.get("group_subtasks", {}).get(task, [])]  # a group: the sum over its tasks
    n = sum(counts[t]["effective"] for t in members if t in counts)
    return {
        "all_metrics": {k: v for k, v in res.items() if "," in k},
        "n": n,
        "wrapper": wrapper,
        "backend": backend,
        "family": family,
        "model_type": getattr(model.config, "model_type", None),
        "params": int(student.params) if student.params else count_params(model),
        "device": device,
        "dtype": dtype,
        "example_request": list(lm.first_request) if lm.first_request else None,
        "lm_eval_version": out.get("lm_eval_version"),
    }


def evaluate_pair(student: StudentSpec, task: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Body of the Ray task: one student on one lm-eval task -> a result record (never raises).

    settings: include_path (candidates), limit, bootstrap_iters, batch_size, fingerprint.
    The record is `status: ok` with every metric lm-eval reported, `n` (examples scored), wrapper,
    backend, family, model_type, params; or `status: failed` with the error and its traceback.
    """
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    t0 = time.time()
    base = {"model": student.name, "task": task, "fingerprint": settings["fingerprint"]}
    try:
        with _ray_shutdown_disabled():
            rec = {**base, "status": "ok", **_evaluate(student, task, settings)}
    except Exception as e:  # noqa: BLE001 - recorded per pair: one broken model or task must not stop the others
        err, tb = f"{type(e).__name__}: {e}", traceback.format_exc()[-3000:]
        rec = {**base, "status": "failed", "error": err, "traceback": tb}
    rec["seconds"] = round(time.time() - t0, 2)
    return rec


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------


def fingerprint(student: StudentSpec, cfg: EvalConfig) -> dict[str, Any]:
    """What a stored result must match to be reused: the student's model and wrapper, and the limit."""
    from lamini.evaluate.inference import (
        student_model_fields,  # the probes key their outputs on it too
    )

    return {**student_model_fields(student), "limit": cfg.limit}


def task_gpus(student: StudentSpec, cfg: EvalConfig, cluster_gpus: float) -> float:
    """GPUs for one (model, task) Ray task: none on a CPU cluster; else the configured number, else
    sized by the student's parameter count (a whole GPU when it is unknown)."""
    if not cluster_gpus:
        return 0.0
    if cfg.num_gpus_per_task is not None:
        return cfg.num_gpus_per_task
    if student.params:
        from lamini.evaluate.inference import gpus_for

        return gpus_for(student.params)
    return 1.0


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def pair_file(model: str, task: str, failed: bool = False) -> str:
    return f"results/{_safe(model)}/{_safe(task)}{'.error' if failed else ''}.json"


def _save(run: RunDir, rec: dict[str, Any]) -> None:
    ok = rec["status"] == "ok"
    run.makedirs("results", _safe(rec["model"]))
    run.write_text(pair_file(rec["model"], rec["task"], failed=not ok), json.dumps(rec, indent=2, default=str))
    stale = pair_file(rec["model"], rec["task"], failed=ok)
    if ok and run.exists(stale):
        run.delete(run.path(stale))


def _progress(i: int, total: int, rec: dict[str, Any], metrics: dict[str, str]) -> str:
    head = f"lamini eval: [{i}/{total}] {rec['model']} / {rec['task']}"
    if rec["status"] != "ok":
        return f"{head}: FAILED {rec['error'].splitlines()[0][:200]}"
    metric = metric_for(rec["task"], metrics)
    value = rec["all_metrics"].get(metric_key(metric))
    score = f"{100 * value:.1f}%" if isinstance(value, (int, float)) else "n/a"
    return f"{head}: {metric} {score} (n={rec['n']}, wrapper {rec['wrapper']}, {rec['seconds']:.0f} s)"


def _run_pairs(cfg: EvalConfig, todo: list[tuple[StudentSpec, str, dict]], run: RunDir) -> list[dict[str, Any]]:
    """Submit every pair as its own Ray task; save and print each as it finishes -> the records."""
    import ray

    from lamini.runs.ray_env import init_ray

    init_ray(cfg.ray)
    cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
    include = cfg.include_path
    settings = {
        # The driver's absolute path first; the path as written second, for nodes where only a
        # `--working-dir` copy exists.
        "include_path": [os.path.abspath(include), include] if include else None,
        "limit": cfg.limit,
        "bootstrap_iters": cfg.bootstrap_iters,
        "batch_size": cfg.batch_size,
    }
    remote = ray.remote(evaluate_pair)
    pending: dict[Any, tuple[StudentSpec, str, dict]] = {}
    for student, task, fp in todo:
        ref = remote.options(
            num_cpus=cfg.num_cpus_per_task,
            num_gpus=task_gpus(student, cfg, cluster_gpus),
            max_retries=0,  # a crash is recorded and retried by the next run, not looped on here
            name=f"lamini-eval:{student.name}:{task}",
        ).remote(student, task, {**settings, "fingerprint": fp})
        pending[ref] = (student, task, fp)
    records = []
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        student, task, fp = pending.pop(ref)
        try:
            rec = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - the worker itself died (out of memory, node lost)
            err = f"{type(e).__name__}: {e}"
            rec = {"model": student.name, "task": task, "fingerprint": fp, "status": "failed", "error": err}
        # Written by the driver, not the worker: the run directory may be local to the head node.
        _save(run, rec)
        records.append(rec)
        print(_progress(len(records), len(todo), rec, cfg.metrics), flush=True)
    return records


def run_eval(cfg: EvalConfig) -> EvalSummary:
    """Every student on every task -> EvalSummary; writes results, results.json, tables.md, figure4.png, manifest.json.

    Pairs already done by an earlier run (same student and limit) are reused, not recomputed. A pair
    that fails is recorded with its reason and counted in `missing`; the others still run.
    """
    from lamini.runs import manifest as mf

    t0 = time.time()
    if cfg.include_path and not os.path.isdir(cfg.include_path):
        raise FileNotFoundError(f"include_path {cfg.include_path!r} is not a folder (cwd {os.getcwd()})")
    run = RunDir(cfg.run_dir)
    tasks = eval_tasks(cfg)
    records: list[dict[str, Any]] = []
    todo: list[tuple[StudentSpec, str, dict]] = []
    for student in cfg.students:
        fp = fingerprint(student, cfg)
        for task in tasks:
            rec = run.read_json(pair_file(student.name, task))
            if rec and rec.get("status") == "ok" and rec.get("fingerprint") == fp:
                records.append(rec)
            else:
                todo.append((student, task, fp))
    reused = len(records)
    if todo:
        records += _run_pairs(cfg, todo, run)

    doc = summarize(records, [s.name for s in cfg.students], tasks, cfg.metrics)
    for s in cfg.students:  # the user's table grouping, where given, over the architecture family
        doc["models"][s.name]["group"] = s.group
    run.write_text("results.json", json.dumps(doc, indent=2))
    run.write_text("tables.md", markdown_tables(doc))
    save_figure(run, "figure4.png", figure4(doc))

    averages = [(m["average"], name) for name, m in doc["models"].items() if m["average"] is not None]
    best = max(averages) if averages else None
    summary = EvalSummary(
        run_dir=run.uri,
        models=len(cfg.students),
        tasks=len(tasks),
        computed=len(todo),
        reused=reused,
        missing=doc["missing"],
        best=best[1] if best else None,
        best_average=best[0] if best else None,
        wall_s=round(time.time() - t0, 1),
    )
    mf.write(run, "eval", cfg, tasks=tasks, summary=dataclasses.asdict(summary))
    print(summary.line(), flush=True)
    return summary
