"""Configs of the instruction-dataset stages (paper section 3): `lamini instructions`, `lamini dataset`
and `lamini filter-toxic`, with the generation sources, filters, budget and toxicity settings they share.

The teacher, corpus, pipeline and Ray models they use are lamini.config's; every default lives
in these classes (YAML under configs/ overrides them, `--set key=value` overrides the YAML).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lamini import SYSTEM_PROMPT
from lamini.config import (
    CorpusSpec,
    GenerationParams,
    HFTeacherConfig,
    PipelineConfig,
    RayInitConfig,
    ResponsesConfig,
    StrictModel,
    TeacherConfig,
)
from lamini.scoring.config import ToxicitySettings

# Seed formats whose examples are long: the paper asks for 10 instructions per call, not 20.
LONG_SEED_FORMATS = frozenset({"p3", "flan"})
# instruction_source of an original corpus answered as is (paper, LaMini-instruction's labels).
ORIGINAL_SOURCES = {"alpaca": "alpaca", "p3": "original_p3", "flan": "original_flan"}

ALPACA_BLACKLIST = [
    "image", "graph", "picture", "file", "map", "draw", "plot", "go to",
    "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip


StructuredOutput = Literal["json_schema", "off"]
STRUCTURED_OUTPUT_HELP = (
    "Instruction generation: json_schema constrains the teacher's answer to a JSON list of per_call "
    "{instruction, input} items (hf: xgrammar; openai: response_format, dropped if the endpoint refuses it; "
    "vllm: structured_outputs); off sends the paper's prompts unconstrained. Both parse the paper's tags too."
)


class TopicsConfig(StrictModel):
    """Wikipedia categories for topic-guided generation (paper 3.1, Figure 7)."""

    path: str = Field(description="Table `category, n_subcategories, n_pages` (CSV, TSV, JSONL or Parquet; local or URI).")
    fewer_words_than: int = Field(3, ge=1, description="Keep categories with fewer words than this (paper: 3).")
    more_subcategories_than: int = Field(10, ge=0, description="Keep categories with more subcategories than this (paper: 10).")
    more_pages_than: int = Field(50, ge=0, description="Keep categories with more pages than this (paper: 50).")
    per_prompt: int = Field(3, ge=1, description="Random topics per prompt (paper: 3).")


class GenerationSourceSpec(StrictModel):
    """One source of generated instructions, e.g. `self_instruct_with_topic` or `generated_p3`."""

    name: str = Field(description="The `instruction_source` label the accepted instructions get.")
    mode: Literal["example", "topic"] = Field(description="Example-guided (Figure 6) or topic-guided (Figure 7).")
    seeds: CorpusSpec = Field(description="Seed corpus the examples are drawn from (examples share source and subset).")
    per_call: int = Field(
        20, ge=1, description="Instructions asked for per teacher call; default as the paper: 10 for P3/FLAN seeds (longer), else 20."
    )
    examples_per_prompt: int = Field(3, ge=1, description="Seed examples per prompt (paper: 3).")
    target: int = Field(ge=1, description="Unique accepted instructions wanted from this source.")
    topics: TopicsConfig | None = Field(None, description="Topic table; required for mode `topic`.")

    @model_validator(mode="before")
    @classmethod
    def _paper_per_call(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("per_call") is None:
            seeds = data.get("seeds")
            fmt = seeds.get("format") if isinstance(seeds, dict) else getattr(seeds, "format", None)
            data = {**data, "per_call": 10 if fmt in LONG_SEED_FORMATS else 20}
        return data

    @model_validator(mode="after")
    def _topics_for_topic_mode(self) -> "GenerationSourceSpec":
        if self.mode == "topic" and self.topics is None:
            raise ValueError(f"source {self.name!r}: mode 'topic' needs a `topics` table")
        return self


class FilterConfig(StrictModel):
    """Filters applied to generated instructions; each reports how many rows it dropped."""

    min_words: int = Field(3, ge=0, description="Drop instructions with fewer words.")
    max_words: int = Field(150, ge=1, description="Drop instructions with more words.")
    blacklist: list[str] = Field(
        default_factory=lambda: list(ALPACA_BLACKLIST),
        description="Drop instructions containing any of these words/phrases (Alpaca's list by default).",
    )
    english_only: bool = Field(True, description="Drop non-English text (a script and stop-word heuristic).")
    min_alpha_ratio: float = Field(0.5, ge=0, le=1, description="Drop garbage: fewer letters than this share of characters.")
    near_dup_threshold: float = Field(0.7, gt=0, le=1, description="Drop an instruction whose ROUGE-L F with a seed or an accepted one exceeds this.")
    minhash_num_perm: int = Field(128, ge=16, description="MinHash permutations for near-duplicate candidate search.")
    lsh_threshold: float = Field(
        0.3, gt=0, lt=1, description="Jaccard level the LSH banding is tuned to catch (well below the ROUGE-L threshold, for recall)."
    )


class BudgetConfig(StrictModel):
    """When instruction generation stops even if targets are not met."""

    max_rounds: int = Field(10, ge=1, description="Most generation rounds.")
    max_requests: int | None = Field(None, ge=1, description="Most teacher requests over all rounds.")
    max_tokens: int | None = Field(None, ge=1, description="Most prompt + completion tokens over all rounds.")


class InstructionsConfig(StrictModel):
    """`lamini instructions`: generate new instructions from seed corpora, in rounds, until targets are met."""

    run_dir: str = Field("runs/instructions", description="Run directory (local path or URI); re-running resumes it.")
    sources: list[GenerationSourceSpec] = Field(min_length=1, description="Sources to generate, each with its target.")
    teacher: TeacherConfig = Field(default_factory=HFTeacherConfig, description="Teacher engine and its settings.")
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=1024, temperature=1.0),
        description="Sampling parameters for instruction generation.",
    )
    seed: int = Field(0, description="Seed of example/topic sampling; recorded, so a run is reproducible.")
    overgenerate: float = Field(1.5, ge=1.0, description="Ask for this many times the instructions still missing per round.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Filters for generated instructions.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Limits on rounds, requests and tokens.")
    on_error: Literal["raise", "skip"] = Field("raise", description="Bad seed rows: stop (raise) or send to rejects (skip).")
    structured_output: StructuredOutput = Field("json_schema", description=STRUCTURED_OUTPUT_HELP)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    _default_engine = field_validator("teacher", mode="before")(ResponsesConfig._default_engine.__func__)


class ToxicityConfig(ToxicitySettings):
    """`lamini filter-toxic`: score instruction and response with detoxify, drop rows above a threshold."""

    input: str = Field(description="LaMini-schema Parquet file or folder (local or URI).")
    run_dir: str = Field("runs/filter-toxic", description="Where kept.parquet, dropped.parquet and the manifest go.")


class DatasetConfig(StrictModel):
    """`lamini dataset`: the whole of section 3 — generate, respond, filter, deduplicate, assemble D_ALL."""

    run_dir: str = Field("runs/dataset", description="Run directory (local path or URI); re-running resumes it.")
    generate: list[GenerationSourceSpec] = Field(
        default_factory=list, description="Generated-instruction sources (self_instruct_*, generated_p3, generated_flan)."
    )
    originals: list[CorpusSpec] = Field(
        default_factory=list,
        description="Corpora whose own prompts are answered too; with no `source`, labelled as the paper: alpaca, original_p3, original_flan.",
    )
    teacher: TeacherConfig = Field(default_factory=HFTeacherConfig, description="Teacher for both instructions and responses.")
    instruction_generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=1024, temperature=1.0),
        description="Sampling for instruction generation.",
    )
    response_generation: GenerationParams = Field(default_factory=GenerationParams, description="Sampling for responses.")
    system_prompt: str | None = Field(SYSTEM_PROMPT, description="System message for responses (paper 3.2).")
    seed: int = Field(0, description="Seed of all sampling; recorded.")
    overgenerate: float = Field(1.5, ge=1.0, description="Ask for this many times the instructions still missing per round.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Filters for generated instructions.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Limits on instruction generation.")
    toxicity: ToxicitySettings | None = Field(None, description="Optional detoxify filter over the assembled dataset.")
    analyze: bool = Field(True, description="Write the analysis report of D_ALL at the end.")
    on_error: Literal["raise", "skip"] = Field("raise", description="Bad input rows: stop (raise) or send to rejects (skip).")
    structured_output: StructuredOutput = Field("json_schema", description=STRUCTURED_OUTPUT_HELP)
    keep_truncated: bool = Field(
        False,
        description="Keep responses the teacher was cut off in (finish_reason 'length') in D_ALL; by default they go to "
        "rejected/truncated.parquet, counted per source in the manifest and the summary.",
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    def instructions_config(self) -> InstructionsConfig:
        """The instruction-generation part of this run, as `lamini instructions` would run it on
        this run directory (its rounds under run_dir/instructions)."""
        return InstructionsConfig(
            run_dir=self.run_dir, sources=self.generate, teacher=self.teacher,
            generation=self.instruction_generation, seed=self.seed, overgenerate=self.overgenerate,
            filters=self.filters, budget=self.budget, on_error=self.on_error, structured_output=self.structured_output,
            pipeline=self.pipeline, ray=self.ray,
        )  # fmt: skip

    _default_engine = field_validator("teacher", mode="before")(ResponsesConfig._default_engine.__func__)

    @field_validator("originals", mode="after")
    @classmethod
    def _paper_labels(cls, specs: list[CorpusSpec]) -> list[CorpusSpec]:
        return [
            s.model_copy(update={"source": ORIGINAL_SOURCES[s.format]}) if s.source is None and s.format in ORIGINAL_SOURCES else s
            for s in specs
        ]
