"""Run directories: where a stage's output, rejects and manifest live, and how a run resumes."""

from lamini.runs.rundir import RunDir

__all__ = ["RunDir"]
