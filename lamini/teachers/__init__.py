"""Teacher backends behind one interface, picked by the config's `backend` field.

The registry maps a backend name to "module:attr" strings and imports the module only
when that backend is used, so `import lamini.teachers` loads neither torch nor vllm.
"""

from __future__ import annotations

import importlib
from typing import Any

from lamini.teachers.base import BackendInfo, ChatRequest, ChatResult, Teacher

BACKENDS: dict[str, BackendInfo] = {
    "openai": BackendInfo(
        "openai", teacher="lamini.teachers.openai_http:OpenAITeacher", stage="lamini.teachers.actors:apply_teacher", io_bound=True
    ),
    "hf": BackendInfo("hf", teacher="lamini.teachers.hf_local:HFTeacher", stage="lamini.teachers.actors:apply_teacher"),
    "vllm": BackendInfo("vllm", teacher="lamini.teachers.vllm_engine:VLLMTeacher", stage="lamini.teachers.vllm_engine:apply_vllm"),
}


def _load(ref: str) -> Any:
    module, attr = ref.split(":")
    return getattr(importlib.import_module(module), attr)


def make_teacher(cfg: Any, share: float = 1.0) -> Teacher:
    """Build the in-process teacher for a teacher config (OpenAITeacherConfig, HFTeacherConfig, ...).

    `share` is this instance's fraction of the run-wide rate limits (HTTP teachers only).
    """
    cls = _load(BACKENDS[cfg.backend].teacher)
    return cls(cfg, share=share) if BACKENDS[cfg.backend].io_bound else cls(cfg)


def teacher_stage(cfg: Any):
    """The function that maps a Ray Dataset of request rows through this backend."""
    return _load(BACKENDS[cfg.backend].stage)


__all__ = ["BACKENDS", "ChatRequest", "ChatResult", "Teacher", "make_teacher", "teacher_stage"]
