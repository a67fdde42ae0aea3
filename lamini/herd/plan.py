"""A herd config -> the concrete stage configs it runs, and where every output lives.

Everything here is pure (no Ray, no torch): the herd's layout, each student's TrainConfig (zoo
config + overrides + what the herd decides: name, run_dir, training data, seed, Ray), the
StudentSpecs every evaluation serves, and each evaluation stage's config. `check_plan` builds all
of them with placeholder paths so a bad config fails at load time.

Layout of a herd run (run_dir):
    dataset/                 the `lamini dataset` run (when the herd builds the data)
    data/train.parquet       D_ALL minus the held-out slice: what the herd's students train on
    data/holdout.parquet     the held-out slice (fidelity)
    data/ablation/<s>.parquet  the ablation's training samples (paper Table 4)
    bases/<student>/         bases built from an architecture (`scratch`)
    students/<student>/      each student's `lamini train` run (model/ is the exported model)
    eval/<stage>/            fidelity, lm_eval, hallucination, toxicity, user_oriented
    state/<step>.json        what each finished step did, and the fingerprint of its inputs
    report/                  report.md, report.json and the PNGs
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lamini.evaluate.config import (
    EvalConfig,
    HallucinationConfig,
    StudentSpec,
    ToxicityProbeConfig,
    UserOrientedConfig,
)
from lamini.herd.config import HerdConfig, StudentEntry, deep_merge, read_zoo
from lamini.runs.rundir import RunDir
from lamini.train.config import TrainConfig

if TYPE_CHECKING:
    from lamini.models.scratch import ScratchSpec

D_ALL_SAMPLE = "D_ALL"
EVALUATIONS: dict[str, type] = {
    "lm_eval": EvalConfig,
    "hallucination": HallucinationConfig,
    "toxicity": ToxicityProbeConfig,
    "user_oriented": UserOrientedConfig,
}
_SCRATCH_FAMILY = {"gpt2": "decoder", "t5": "encoder-decoder"}


@dataclass(frozen=True)
class StudentPlan:
    """One student to train: its config, where its base comes from, how it is served."""

    name: str
    entry: StudentEntry
    train: TrainConfig
    sample: str | None  # the ablation sample it trains on; None: the herd's training split
    scratch: ScratchSpec | None

    @property
    def model_dir(self) -> str:
        """Where `lamini train` exports this student."""
        return posixpath.join(_uri(self.train.run_dir), self.name, "model")


def slug(text: str) -> str:
    """A file-name-safe form of a sample or source label."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _uri(path: str) -> str:
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


class Layout:
    """Where the herd's files go: URIs only (nothing is created until a stage writes)."""

    def __init__(self, cfg: HerdConfig):
        self.uri = _uri(cfg.run_dir)
        self.dataset_run = self.of("dataset")
        self.train_data = self.of("data", "train.parquet")
        self.holdout = self.of("data", "holdout.parquet")
        self.students = self.of("students")

    def of(self, *parts: str) -> str:
        return posixpath.join(self.uri, *parts)

    @property
    def run(self) -> RunDir:
        return RunDir(self.uri)

    def sample_data(self, sample: str) -> str:
        return self.of("data", "ablation", f"{slug(sample)}.parquet")

    def base_dir(self, student: str) -> str:
        return self.of("bases", slug(student))

    def eval_dir(self, stage: str) -> str:
        return self.of("eval", stage)


def train_config(
    cfg: HerdConfig, entry: StudentEntry, name: str, data: str, base_dir: str, extra: dict[str, Any] | None = None
) -> TrainConfig:
    """A student's TrainConfig: its zoo config, its overrides (then `extra`), then what the herd decides."""
    data_cfg: dict[str, Any] = read_zoo(entry.zoo) if entry.zoo else {}
    data_cfg = deep_merge(deep_merge(data_cfg, entry.train), extra or {})
    data_cfg = deep_merge(data_cfg, {"name": name, "run_dir": Layout(cfg).students, "ray": cfg.ray.model_dump()})
    data_cfg.setdefault("seed", cfg.seed)
    data_section = dict(data_cfg.get("data") or {})
    data_section["corpora"] = [{"format": "lamini", "path": data}]
    data_cfg["data"] = data_section
    if entry.scratch is not None:
        model = dict(data_cfg.get("model") or {})
        model.update(base=base_dir, family=_SCRATCH_FAMILY[entry.scratch.arch])
        data_cfg["model"] = model
    return TrainConfig.model_validate(data_cfg)


def ablation_samples(cfg: HerdConfig, sources: list[str]) -> list[str]:
    """The ablation's training sets, in the paper's column order: D_ALL, each source, then A/P/F."""
    if cfg.ablation is None:
        return []
    wanted = cfg.ablation.sources if cfg.ablation.sources is not None else sources
    return [D_ALL_SAMPLE, *[s for s in wanted if s != D_ALL_SAMPLE], *cfg.ablation.originals]


def plan_students(cfg: HerdConfig, sources: list[str] | None = None) -> list[StudentPlan]:
    """The herd's students, then one per ablation sample (sources: D_ALL's instruction_source values)."""
    lay = Layout(cfg)
    plans = [
        StudentPlan(e.name, e, train_config(cfg, e, e.name, lay.train_data, lay.base_dir(e.name)), None, e.scratch)
        for e in cfg.students
    ]
    if cfg.ablation is not None:
        by_name = {e.name: e for e in cfg.students}
        entry = by_name[cfg.ablation.student or cfg.students[0].name]
        for sample in ablation_samples(cfg, sources or []):
            name = f"{entry.name}-abl-{slug(sample)}"
            # Every ablation student starts from the same base as its herd student.
            tc = train_config(cfg, entry, name, lay.sample_data(sample), lay.base_dir(entry.name), cfg.ablation.train)
            plans.append(StudentPlan(name, entry, tc, sample, entry.scratch))
    return plans


def student_spec(plan: StudentPlan, phase: str) -> StudentSpec:
    """How an evaluation serves a student: trained (phase "after") or its untrained base ("before")."""
    m = plan.train.model
    base = plan.model_dir if phase == "after" else m.base
    name = plan.name if phase == "after" else base_name(plan)
    fields = {"name": name, "base": base, "family": m.family, "gguf_file": None if phase == "after" else m.gguf_file,
              "tokenizer": None if phase == "after" else m.tokenizer, "trust_remote_code": m.trust_remote_code}  # fmt: skip
    return StudentSpec.model_validate({**fields, **plan.entry.serve})


def base_name(plan: StudentPlan) -> str:
    """The label of a student's untrained base in tables (ablation students share their herd student's)."""
    return f"{plan.entry.name}-base"


def eval_config(cfg: HerdConfig, stage: str, students: list[StudentSpec]) -> Any:
    """The config of evaluation `stage` for these students, from the herd's settings for it."""
    settings = getattr(cfg.evaluations, stage)
    data = {**settings, "students": [s.model_dump() for s in students], "run_dir": Layout(cfg).eval_dir(stage),
            "ray": cfg.ray.model_dump()}  # fmt: skip
    return EVALUATIONS[stage].model_validate(data)


def check_plan(cfg: HerdConfig) -> None:
    """Build every derived config once (placeholder paths): a bad zoo name, override or evaluation
    setting raises now, naming the student or stage."""
    for entry in cfg.students:
        try:
            plan = plan_students(cfg.model_copy(update={"students": [entry], "ablation": None}))[0]
            student_spec(plan, "after")
            student_spec(plan, "before")
        except Exception as e:
            raise ValueError(f"student {entry.name}: {e}") from e
    placeholder = [StudentSpec(name="placeholder", base="placeholder")]
    for stage in EVALUATIONS:
        if getattr(cfg.evaluations, stage) is not None:
            try:
                eval_config(cfg, stage, placeholder)
            except Exception as e:
                raise ValueError(f"evaluations.{stage}: {e}") from e
