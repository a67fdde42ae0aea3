"""Every stage the command line runs keeps one contract: its config class in, a StageSummary out.

The contract is read from the stage functions' own annotations (typing.get_type_hints), so a
stage that takes `Any` or returns a class without `line()` and `missing` fails here.
"""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import typing

import pytest
from conftest import ROOT

from lamini.cli import STAGES
from lamini.runs.summary import StageSummary


def _stage(ref: str):
    module, fn = ref.split(":")
    return getattr(importlib.import_module(module), fn)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_takes_its_config_and_returns_a_stage_summary(name):
    cls, ref, _ = STAGES[name]
    hints = typing.get_type_hints(_stage(ref))
    summary = hints.pop("return")
    assert list(hints.values()) == [cls], f"{ref} must take one {cls.__name__}"
    assert dataclasses.is_dataclass(summary), "--json prints the summary with dataclasses.asdict"
    assert callable(getattr(summary, "line", None))
    assert typing.get_type_hints(summary).get("missing") is int


def test_stage_summary_protocol_checks_line_and_missing():
    @dataclasses.dataclass
    class Done:
        missing: int = 0

        def line(self) -> str:
            return "done"

    @dataclasses.dataclass
    class NoCount:
        def line(self) -> str:
            return "?"

    assert isinstance(Done(), StageSummary)
    assert not isinstance(NoCount(), StageSummary)


def test_help_loads_no_stage_module():
    """`lamini --help` imports the config classes only: no stage module, no pyarrow, Ray or torch."""
    stages = sorted({ref.split(":")[0] for _, ref, _ in STAGES.values()})
    code = (
        "import sys, contextlib, io\n"
        "import lamini.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        lamini.cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"heavy = {stages + ['pyarrow', 'ray', 'torch', 'transformers', 'matplotlib']!r}\n"
        "print(','.join(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_evaluate_classes_have_every_field_the_engines_read():
    """The engines and loaders read a served student through protocols (they sit below evaluate);
    StudentModelSpec, StudentSpec and Serving must keep every field those name, with its type."""
    from lamini.evaluate.config import StudentSpec
    from lamini.evaluate.inference import Serving
    from lamini.models.spec import (
        ModelSource,
        ServedStudent,
        StudentModelSpec,
        StudentServing,
    )

    for proto, cls in ((ModelSource, StudentModelSpec), (ServedStudent, StudentSpec), (StudentServing, Serving)):
        want, have = typing.get_type_hints(proto), typing.get_type_hints(cls)
        assert want and {k: have.get(k) for k in want} == want, f"{cls.__name__} vs {proto.__name__}"
    # `student` is a read-only property of the protocol (so a StudentSpec fits a ServedStudent).
    assert typing.get_type_hints(StudentServing.student.fget)["return"] is ServedStudent
    assert typing.get_type_hints(Serving)["student"] is StudentSpec
