"""Batch inference for many students in one job: plan how each is served, run them side by side.

`plan_serving(student, cluster_gpus, have_vllm)` decides, per student, the engine (vLLM or HF),
the family (decoder or encoder-decoder, from the model config), the prompt wrapper (the Alpaca
template the decoder-only students were trained with; the raw instruction for encoder-decoder
students), the parameter count (counted on the meta device: no weights loaded) and the GPUs per
actor (small students share a GPU).

`generate_for_students(students, rows, gen, run, subdir, ray_cfg)` sends the same rows to every
student, each through its own actor pool, all students at once (one driver thread each: Ray Data
runs the pipelines concurrently and the cluster packs the actors), and writes one Parquet file
per student, `run/subdir/<name>.parquet`. Every input row comes back as exactly one output row,
with either a `response` or an `error`; a re-run reuses a student's finished file (resume), but
only when the fingerprint stored in its Parquet schema metadata (`generation_parts`: the student's
model, wrapper, sampling settings and the input rows) equals this run's. The same stamp
(`reusable`, `store`) guards the probes' downstream files (scores, verdicts, grades).
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lamini.config import GenerationParams, RayInitConfig
from lamini.evaluate.config import StudentSpec
from lamini.models.templates import wrap
from lamini.runs.fingerprint import reusable, store, table_digest
from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

ROW_INDEX = "row_index"  # input order, kept through the engines (which may reorder rows)
# The StudentSpec fields that decide which model answers and how it is prompted (not how it is
# served: batch size, actors, GPUs). `lamini eval` keys its stored results on the same fields.
MODEL_KEYS = ("base", "family", "gguf_file", "tokenizer", "trust_remote_code", "wrapper", "dtype")
# Architectures vLLM does not serve (vLLM never supported T5; GPT-Neo has no vLLM model class).
VLLM_UNSUPPORTED_MODEL_TYPES = frozenset({"gpt_neo", "t5", "mt5", "bart"})


@dataclass
class Serving:
    """How one student is served: what plan_serving decided, recorded in every result."""

    student: StudentSpec
    engine: str  # "hf" | "vllm"
    engine_reason: str
    family: str  # "decoder" | "encoder-decoder"
    wrapper: str  # "alpaca" | "none"
    source: str  # what from_pretrained (or vLLM) loads
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    model_type: str = ""
    params: int = 0
    num_gpus: float = 0.0
    device: str = "cpu"
    dtype: str = "float32"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.student.name,
            "base": self.student.base,
            "engine": self.engine,
            "engine_reason": self.engine_reason,
            "family": self.family,
            "wrapper": self.wrapper,
            "model_type": self.model_type,
            "params": self.params,
            "num_gpus_per_actor": self.num_gpus,
            "device": self.device,
            "dtype": self.dtype,
        }


def student_model_fields(student: StudentSpec) -> dict[str, Any]:
    """The MODEL_KEYS fields of a StudentSpec (what a stored result of this student must match)."""
    return {k: getattr(student, k) for k in MODEL_KEYS}


def gpus_for(params: int) -> float:
    """GPUs per actor for a student of `params` parameters (bf16 weights + KV cache headroom):
    up to 0.5B four share a GPU, up to 2B two, larger ones get a whole GPU (7B: 14 GB bf16)."""
    if params <= 500e6:
        return 0.25
    if params <= 2e9:
        return 0.5
    return 1.0


def choose_engine(
    requested: str, family: str, model_type: str, is_gguf: bool, cluster_gpus: float, have_vllm: bool
) -> tuple[str, str]:
    """(engine, why) for one student. Pure. Raises ValueError when `vllm` is asked for and cannot serve it."""
    blockers = []
    if family == "encoder-decoder":
        blockers.append("vLLM does not serve encoder-decoder models")
    if model_type in VLLM_UNSUPPORTED_MODEL_TYPES:
        blockers.append(f"vLLM has no model class for {model_type}")
    if is_gguf:
        blockers.append("GGUF students are dequantised by transformers")
    if not cluster_gpus:
        blockers.append("the cluster has no GPU")
    if not have_vllm:
        blockers.append("vllm is not installed (extra [gpu])")
    if requested == "hf":
        return "hf", "engine: hf in the config"
    if requested == "vllm":
        # A CPU-only driver may submit to GPU workers that have vllm: only that one is not fatal.
        fatal = [b for b in blockers if not b.startswith("vllm is not installed")]
        if fatal:
            raise ValueError(f"engine vllm cannot serve this student: {'; '.join(fatal)}")
        return "vllm", "engine: vllm in the config"
    if blockers:
        return "hf", "; ".join(blockers)
    return "vllm", "decoder-only model vLLM serves, on a GPU cluster"


def count_params_meta(config: Any, family: str) -> int:
    """Parameters of the architecture in `config`, built on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if family == "encoder-decoder" else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    return sum(p.numel() for p in model.parameters())


def plan_serving(student: StudentSpec, cluster_gpus: float, have_vllm: bool) -> Serving:
    """StudentSpec + what the cluster has -> Serving. Reads the model config (no weights)."""
    from transformers import AutoConfig

    from lamini.models.loading import model_source

    src, kw = model_source(student)
    config = AutoConfig.from_pretrained(src, **kw)
    family = student.family or ("encoder-decoder" if getattr(config, "is_encoder_decoder", False) else "decoder")
    model_type = getattr(config, "model_type", "") or ""
    engine, reason = choose_engine(student.engine, family, model_type, "gguf_file" in kw, cluster_gpus, have_vllm)
    wrapper = student.wrapper if student.wrapper != "auto" else ("alpaca" if family == "decoder" else "none")
    params = int(student.params) if student.params else count_params_meta(config, family)
    num_gpus = 0.0
    if cluster_gpus:
        num_gpus = student.num_gpus_per_actor if student.num_gpus_per_actor is not None else gpus_for(params)
    device = "cuda" if num_gpus else "cpu"
    dtype = student.dtype if student.dtype != "auto" else ("bfloat16" if device == "cuda" else "float32")
    return Serving(
        student=student, engine=engine, engine_reason=reason, family=family, wrapper=wrapper, source=src,
        load_kwargs=kw, model_type=model_type, params=params, num_gpus=num_gpus, device=device, dtype=dtype,
    )  # fmt: skip


def cluster_facts() -> tuple[float, bool]:
    """(GPUs in the Ray cluster, whether vllm is importable here)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)), importlib.util.find_spec("vllm") is not None


@dataclass
class StudentRun:
    """One student's outputs: its Serving, the table (input columns + results), timing."""

    serving: Serving
    table: pa.Table
    wall_s: float
    reused: bool = False

    @property
    def errors(self) -> int:
        return self.table.num_rows - self.table.column("error").null_count

    @property
    def missing(self) -> int:
        """Rows with neither a response nor an error: an engine that lost a result without saying
        why (downstream such a row would pass for an empty answer)."""
        import pyarrow.compute as pc

        t = self.table
        return int(pc.sum(pc.and_(pc.is_null(t.column("response")), pc.is_null(t.column("error")))).as_py() or 0)

    def line(self) -> str:
        toks = sum(self.table.column("completion_tokens").to_pylist())
        how = "reused" if self.reused else f"{self.wall_s:.1f} s, {toks / max(self.wall_s, 1e-9):.1f} tok/s"
        return (
            f"{self.serving.student.name}: {self.table.num_rows} rows, {self.errors} errors, {toks} tokens "
            f"({self.serving.engine}, {self.serving.device}, wrapper {self.serving.wrapper}; {how})"
        )


def _run_one(serving: Serving, rows: pa.Table, gen: GenerationParams, min_tokens: int) -> pa.Table:
    import ray

    from lamini.engines import student_stage

    s = serving.student
    prompts = [wrap(t, serving.wrapper) for t in rows.column("instruction").to_pylist()]
    table = rows.append_column("prompt", pa.array(prompts, pa.string()))
    block = max(1, s.batch_size * 4)
    blocks = [table.slice(i, block) for i in range(0, table.num_rows, block)] or [table]
    ds = student_stage(serving.engine)(ray.data.from_arrow(blocks), serving, gen, min_tokens=min_tokens)
    refs = ds.to_arrow_refs()
    parts = [t for t in ray.get(refs) if t.num_rows]
    out = pa.concat_tables(parts, promote_options="default") if parts else table.slice(0, 0)
    return out.sort_by(ROW_INDEX)


def generation_parts(serving: Serving, rows_digest: str, gen: GenerationParams, min_tokens: int) -> dict[str, Any]:
    """What a student's stored outputs must match to be reused: its model, the wrapper as resolved
    ("auto" depends on the family), the prompt truncation, the sampling settings, min_tokens and
    every input row (the carried columns, e.g. `id`, go into the output too). Not the engine, device
    or resolved dtype: finished outputs stay valid when a run resumes on another cluster (the
    `engine` column records which one wrote them)."""
    return {
        "model": student_model_fields(serving.student),
        "wrapper": serving.wrapper,
        "max_input_tokens": serving.student.max_input_tokens,
        "generation": gen.model_dump(mode="json"),
        "min_tokens": min_tokens,
        "rows": rows_digest,  # table_digest of the input rows
    }


def generate_for_students(
    students: list[StudentSpec],
    rows: pa.Table,
    gen: GenerationParams,
    run: RunDir,
    subdir: str,
    ray_cfg: RayInitConfig,
    min_tokens: int = 0,
) -> dict[str, StudentRun]:
    """rows (needs `instruction`; other columns are carried) -> {student name: StudentRun}.

    Writes run/subdir/<name>.parquet per student (atomically), stamped with generation_parts, and
    reuses one that exists with the same stamp (any other is regenerated, with a warning saying
    why). Raises RuntimeError if an engine lost or duplicated rows.
    """
    from lamini.runs.ray_env import init_ray

    init_ray(ray_cfg)
    gpus, have_vllm = cluster_facts()
    run.makedirs(subdir)
    rows = rows.append_column(ROW_INDEX, pa.array(range(rows.num_rows), pa.int64()))
    rows_digest = table_digest(rows)  # once: every student's stamp holds it
    plans = {s.name: plan_serving(s, gpus, have_vllm) for s in students}
    for p in plans.values():
        log.info("serving %s with %s (%s)", p.student.name, p.engine, p.engine_reason)

    def in_order(t: pa.Table) -> bool:  # every input row once, in input order
        return t.column(ROW_INDEX).to_pylist() == list(range(rows.num_rows))

    def one(name: str) -> StudentRun:
        serving = plans[name]
        rel = f"{subdir}/{name}.parquet"
        parts = generation_parts(serving, rows_digest, gen, min_tokens)
        old = reusable(run, rel, parts, "generating", check=lambda t: [] if in_order(t) else ["its rows"])
        if old is not None:  # (a matching stamp with rows out of order: a damaged or edited file)
            return StudentRun(serving, old, 0.0, reused=True)
        t0 = time.time()
        out = _run_one(serving, rows, gen, min_tokens)
        if not in_order(out):
            got = out.column(ROW_INDEX).to_pylist()
            raise RuntimeError(f"student {name}: {rows.num_rows} rows in, {len(got)} out ({len(set(got))} distinct)")
        out = store(run, rel, out.append_column("student", pa.array([name] * out.num_rows, pa.string())), parts)
        return StudentRun(serving, out, time.time() - t0)

    with cf.ThreadPoolExecutor(max_workers=len(plans)) as pool:
        futures = {name: pool.submit(one, name) for name in plans}
        results = {name: f.result() for name, f in futures.items()}
    for r in results.values():
        log.info(r.line())
        print(f"lamini: {r.line()}", flush=True)
    return results
