"""`lamini herd`: one config from seed corpora to a report of evaluated students.

The herd config names the parts and lets each stage keep its own config class: the dataset is a
whole `DatasetConfig` (or an existing LaMini Parquet), each student is a zoo config (or a whole
`TrainConfig`) plus overrides, each evaluation is that stage's config minus what the herd fills in
(students, run_dir, Ray). `lamini.herd.plan.check_plan` builds every derived config before the herd
starts, so a typo fails before an hour of teacher calls, not after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from lamini.config import CorpusSpec, GenerationParams, RayInitConfig, StrictModel
from lamini.generate.config import DatasetConfig
from lamini.models.scratch import ScratchSpec

# Zoo configs (`zoo: lamini-gpt-124m`) are looked up here, relative to the working directory first,
# then beside the installed package (a source checkout's configs/train).
ZOO_DIRS = (Path("configs/train"), Path(__file__).resolve().parents[2] / "configs" / "train")


class DatasetSource(StrictModel):
    """Where the herd's instruction data comes from: built now, or a LaMini Parquet that exists."""

    build: DatasetConfig | None = Field(
        None, description="A `lamini dataset` config, run inside the herd (its run_dir becomes <herd>/dataset)."
    )
    parquet: str | None = Field(
        None, description="An existing LaMini-instruction Parquet file or folder (instruction, response, "
        "instruction_source), local or URI."
    )  # fmt: skip

    @model_validator(mode="after")
    def _one(self) -> DatasetSource:
        if (self.build is None) == (self.parquet is None):
            raise ValueError("dataset: give exactly one of `build` (a dataset config) or `parquet` (an existing file)")
        return self


class HoldoutSettings(StrictModel):
    """The seeded slice of D_ALL no student trains on: the distillation-fidelity check."""

    fraction: float = Field(0.1, gt=0, lt=1, description="Share of D_ALL held out.")
    max_rows: int | None = Field(200, ge=1, description="At most this many held-out rows.")
    seed: int | None = Field(None, description="Seed of the draw; None: the herd's seed.")


class StudentEntry(StrictModel):
    """One student of the herd: a zoo config or a full training config, plus overrides."""

    name: str = Field(description="The student's name: its run folder, table rows and model card.")
    zoo: str | None = Field(
        None, description="A zoo config: a name under configs/train (e.g. lamini-flan-t5-77m) or a YAML path."
    )
    scratch: ScratchSpec | None = Field(
        None, description="Build the base model from this architecture, with a tokenizer trained on the herd's "
        "training texts (for runs with no pretrained model at hand, e.g. offline on CPU).",
    )  # fmt: skip
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields merged over the zoo config (nested keys merge), e.g. {max_steps: 30}. "
        "The herd sets name, run_dir, the training data and Ray itself.",
    )
    serve: dict[str, Any] = Field(
        default_factory=dict,
        description="StudentSpec fields for evaluation (batch_size, engine, num_cpus_per_actor, ...).",
    )

    @model_validator(mode="after")
    def _has_a_model(self) -> StudentEntry:
        if not (self.zoo or self.scratch or "model" in self.train):
            raise ValueError(f"student {self.name}: give `zoo`, `scratch` or `train.model`")
        if self.scratch and "base" in self.train.get("model", {}):
            raise ValueError(f"student {self.name}: `scratch` builds the base; do not also set train.model.base")
        return self


class AblationSettings(StrictModel):
    """Paper Table 4: one student per training set of `rows` random rows, each evaluated."""

    rows: int = Field(ge=1, description="Rows per sample (the paper: 52K).")
    sources: list[str] | None = Field(
        None, description="instruction_source values of D_ALL to sample (None: every source present), plus D_ALL."
    )
    originals: dict[str, CorpusSpec] = Field(
        default_factory=dict,
        description="Original corpora as their own columns, e.g. {A: alpaca, P: p3, F: flan} corpus specs; their "
        "rows keep the corpus' own responses.",
    )
    student: str | None = Field(None, description="The herd student whose setup each sample trains (default: the first).")
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="TrainConfig fields merged over that student's for the ablation's students (e.g. max_steps: the "
        "samples are smaller than the herd's training split).",
    )
    seed: int | None = Field(None, description="Seed of the draws; None: the herd's seed.")


class Evaluations(StrictModel):
    """Which evaluations run on every student. Each is that stage's config without students/run_dir/ray."""

    fidelity: bool = Field(True, description="Distillation fidelity on the held-out slice, before and after training.")
    fidelity_generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=64, temperature=0.0, top_p=1.0, seed=0),
        description="Sampling of the students' answers for fidelity's ROUGE-L (greedy).",
    )
    lm_eval: dict[str, Any] | None = Field(None, description="`lamini eval` settings (tasks, include_path, limit, ...).")
    hallucination: dict[str, Any] | None = Field(None, description="`lamini probe hallucination` settings.")
    toxicity: dict[str, Any] | None = Field(None, description="`lamini probe toxicity` settings (prompts, detoxify_model, ...).")
    user_oriented: dict[str, Any] | None = Field(None, description="`lamini probe user-oriented` settings.")
    base_models: bool = Field(
        True, description="Also evaluate each student's untrained base (the paper's `UT`, fidelity's `before`)."
    )


class HerdConfig(StrictModel):
    """`lamini herd`: build (or read) the dataset, train every student, evaluate them all, write one report."""

    run_dir: str = Field("runs/herd", description="The herd's run directory; re-running resumes every stage.")
    seed: int = Field(0, description="Seed of the holdout and ablation draws and of every student's training.")
    dataset: DatasetSource = Field(description="The instruction data.")
    holdout: HoldoutSettings = Field(default_factory=HoldoutSettings, description="The held-out fidelity slice.")
    students: list[StudentEntry] = Field(min_length=1, description="The herd.")
    ablation: AblationSettings | None = Field(None, description="Paper Table 4's training-set ablation.")
    evaluations: Evaluations = Field(default_factory=Evaluations, description="What is measured.")
    reserve_cpus_for_data: float = Field(
        1.0, ge=0, description="CPUs left free while students train side by side (Ray Data's reads need them, or "
        "training stalls); students start as the cluster's remaining CPUs and GPUs allow.",
    )  # fmt: skip
    max_concurrent_students: int | None = Field(None, ge=1, description="Cap on students training at once.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection (every stage shares it).")

    @model_validator(mode="after")
    def _check(self) -> HerdConfig:
        names = [s.name for s in self.students]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"student names must be unique; repeated: {dup}")
        if self.ablation and self.ablation.student and self.ablation.student not in names:
            raise ValueError(f"ablation.student {self.ablation.student!r} is not a herd student ({names})")
        return self


def zoo_path(zoo: str) -> Path:
    """A zoo name or YAML path -> the file."""
    p = Path(zoo)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"zoo config {zoo} does not exist")
        return p
    for d in ZOO_DIRS:
        if (d / f"{zoo}.yaml").is_file():
            return d / f"{zoo}.yaml"
    raise FileNotFoundError(f"zoo config {zoo!r} is not in {', '.join(str(d) for d in ZOO_DIRS)}")


def read_zoo(zoo: str) -> dict[str, Any]:
    data = yaml.safe_load(zoo_path(zoo).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"zoo config {zoo}: top level must be a mapping")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`: nested mappings merge, everything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


Phase = Literal["before", "after"]
