"""Engines behind one interface (lamini.engines.base.Engine), picked by a teacher config's `engine`.

One engine serves every role: the teacher answering instructions, a student answering probe
prompts, an LLM judge grading answers. The registry maps an engine name to "module:attr" strings
and imports the module only when that engine is used, so `import lamini.engines` loads neither
torch nor vllm.
"""

from __future__ import annotations

import importlib
from typing import Any

from lamini.config import TeacherConfig
from lamini.engines.base import ChatRequest, ChatResult, Engine, EngineInfo

ENGINES: dict[str, EngineInfo] = {
    "openai": EngineInfo(
        "openai", engine="lamini.engines.openai_http:OpenAIEngine", stage="lamini.engines.actors:apply_teacher", io_bound=True
    ),
    # The Batch API: answer_table sends it through lamini.runs.batch_api, not a Ray Data stage.
    "openai_batch": EngineInfo(
        "openai_batch", engine="lamini.engines.openai_http:OpenAIEngine", stage="lamini.runs.batch_api:answer_with_batches",
    ),
    "hf": EngineInfo(
        "hf", engine="lamini.engines.hf_local:HFEngine", stage="lamini.engines.actors:apply_teacher",
        student_stage="lamini.engines.actors:apply_hf",
    ),
    "vllm": EngineInfo(
        "vllm", engine="lamini.engines.vllm_engine:VLLMEngine", stage="lamini.engines.vllm_engine:apply_vllm",
        student_stage="lamini.engines.vllm_engine:apply_vllm_student",
    ),
}  # fmt: skip


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def make_engine(cfg: TeacherConfig, share: float = 1.0) -> Engine:
    """Build the in-process engine for a teacher config (OpenAITeacherConfig, HFTeacherConfig, ...).

    `share` is this instance's fraction of the run-wide rate limits (HTTP engines only).
    """
    info = ENGINES[cfg.engine]
    cls = _load(info.engine)
    return cls(cfg, share=share) if info.io_bound else cls(cfg)


def engine_stage(cfg: TeacherConfig):
    """The function that maps a Ray Dataset of request rows through this config's engine."""
    return _load(ENGINES[cfg.engine].stage)


def student_stage(engine: str):
    """The function that maps a Ray Dataset of finished prompts through a student served on `engine`:
    stage(ds, serving, gen, min_tokens=0)."""
    ref = ENGINES[engine].student_stage
    if ref is None:
        raise ValueError(f"engine {engine!r} does not serve students")
    return _load(ref)


__all__ = ["ENGINES", "ChatRequest", "ChatResult", "Engine", "make_engine", "engine_stage", "student_stage"]
