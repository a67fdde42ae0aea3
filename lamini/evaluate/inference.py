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
with either a `response` or an `error`; a re-run reuses a student's finished file (resume).
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from lamini.runs.rundir import RunDir

log = logging.getLogger(__name__)

ROW_INDEX = "row_index"  # input order, kept through the engines (which may reorder rows)
# Architectures vLLM does not serve (vLLM never supported T5; GPT-Neo has no vLLM model class).
VLLM_UNSUPPORTED_MODEL_TYPES = frozenset({"gpt_neo", "t5", "mt5", "bart"})


@dataclass
class Serving:
    """How one student is served: what plan_serving decided, recorded in every result."""

    student: Any  # StudentSpec
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


def plan_serving(student: Any, cluster_gpus: float, have_vllm: bool) -> Serving:
    """StudentSpec + what the cluster has -> Serving. Reads the model config (no weights)."""
    from transformers import AutoConfig

    from lamini.train.models import model_source

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


def wrap(instruction: str, wrapper: str) -> str:
    """The text a student is given for an instruction: the Alpaca template (as in training) or the raw text."""
    from lamini.train.data import alpaca_prompt

    return alpaca_prompt(instruction) if wrapper == "alpaca" else instruction


def load_for_generation(serving: Serving):
    """(model in eval mode on serving.device, tokenizer set up for batched generation)."""
    from lamini.teachers.hf_local import prepare_tokenizer
    from lamini.train.models import load_student, load_tokenizer

    model = load_student(serving.student, serving.family, serving.dtype).to(serving.device).eval()
    return model, prepare_tokenizer(load_tokenizer(serving.student), decoder=serving.family == "decoder")


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

    def line(self) -> str:
        toks = sum(self.table.column("completion_tokens").to_pylist())
        how = "reused" if self.reused else f"{self.wall_s:.1f} s, {toks / max(self.wall_s, 1e-9):.1f} tok/s"
        return (
            f"{self.serving.student.name}: {self.table.num_rows} rows, {self.errors} errors, {toks} tokens "
            f"({self.serving.engine}, {self.serving.device}, wrapper {self.serving.wrapper}; {how})"
        )


def _run_one(serving: Serving, rows: pa.Table, gen: Any, min_tokens: int) -> pa.Table:
    import ray

    from lamini.evaluate.engines import ENGINES

    s = serving.student
    prompts = [wrap(t, serving.wrapper) for t in rows.column("instruction").to_pylist()]
    table = rows.append_column("prompt", pa.array(prompts, pa.string()))
    block = max(1, s.batch_size * 4)
    blocks = [table.slice(i, block) for i in range(0, table.num_rows, block)] or [table]
    ds = ENGINES[serving.engine](ray.data.from_arrow(blocks), serving, gen, min_tokens=min_tokens)
    refs = ds.to_arrow_refs()
    parts = [t for t in ray.get(refs) if t.num_rows]
    out = pa.concat_tables(parts, promote_options="default") if parts else table.slice(0, 0)
    return out.sort_by(ROW_INDEX)


def generate_for_students(
    students: list[Any],
    rows: pa.Table,
    gen: Any,
    run: RunDir,
    subdir: str,
    ray_cfg: Any,
    min_tokens: int = 0,
) -> dict[str, StudentRun]:
    """rows (needs `instruction`; other columns are carried) -> {student name: StudentRun}.

    Writes run/subdir/<name>.parquet per student (atomically) and reuses one that exists with
    the same rows. Raises RuntimeError if an engine lost or duplicated rows.
    """
    from lamini.runs.ray_env import init_ray

    init_ray(ray_cfg)
    gpus, have_vllm = cluster_facts()
    run.makedirs(subdir)
    rows = rows.append_column(ROW_INDEX, pa.array(range(rows.num_rows), pa.int64()))
    plans = {s.name: plan_serving(s, gpus, have_vllm) for s in students}
    for p in plans.values():
        log.info("serving %s with %s (%s)", p.student.name, p.engine, p.engine_reason)

    def one(name: str) -> StudentRun:
        serving = plans[name]
        rel = f"{subdir}/{name}.parquet"
        if run.exists(rel):
            old = run.read_table(rel)
            if old.num_rows == rows.num_rows and old.column(ROW_INDEX).to_pylist() == list(range(rows.num_rows)):
                return StudentRun(serving, old, 0.0, reused=True)
            log.warning("%s does not match this run's rows: generating again", run.uri_of(rel))
        t0 = time.time()
        out = _run_one(serving, rows, gen, min_tokens)
        got = out.column(ROW_INDEX).to_pylist()
        if got != list(range(rows.num_rows)):
            raise RuntimeError(f"student {name}: {rows.num_rows} rows in, {len(got)} out ({len(set(got))} distinct)")
        out = out.append_column("student", pa.array([name] * out.num_rows, pa.string()))
        run.write_table(rel, out)
        return StudentRun(serving, out, time.time() - t0)

    with cf.ThreadPoolExecutor(max_workers=len(plans)) as pool:
        futures = {name: pool.submit(one, name) for name in plans}
        results = {name: f.result() for name, f in futures.items()}
    for r in results.values():
        log.info(r.line())
        print(f"lamini: {r.line()}", flush=True)
    return results
