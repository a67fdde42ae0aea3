"""One parser per instruction format: a decoded record in, the rows it holds out.

A parser is a pure function ``parse(value, ctx) -> list[Parsed]`` that checks types strictly
and raises :class:`BadRecord` with a reason naming the field ("field 'instruction' must be a
string, got int"); it never sees files or error policy. :data:`FORMATS` maps each
``CorpusSpec.format`` to its parser and to the container its files come in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from lamini.config import CorpusSpec
from lamini.corpus.schema import (
    INSTRUCTION,
    INSTRUCTION_SOURCE,
    LAMINI_COLUMNS,
    RESPONSE,
    BadRecord,
)
from lamini.corpus.sources import EXTENSIONS, Container

ENDOFTEXT = "<|endoftext|>"
_SURROGATE = re.compile("[\ud800-\udfff]")


class Parsed(NamedTuple):
    """What a parser extracts from a record; the reader adds id, prompt, source and origin."""

    instruction: str
    input: str
    response: str | None
    subset: str
    meta: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FileContext:
    """What a parser may know about where a record comes from."""

    spec: CorpusSpec
    stem: str  # file name without extensions: the P3 template name

    @property
    def default_subset(self) -> str:
        return self.spec.subset or "default"


# ------------------------------------------------------------------------------------------
# Field checks. JSON type names in messages would be friendlier, but the Python names are
# what users see when they inspect the record in Python, and they are unambiguous.
# ------------------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _object(value: Any, what: str = "a JSON object") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRecord(f"expected {what}, got {_type_name(value)}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"field '{field}' must be a string, got {_type_name(value)}")
    if _SURROGATE.search(value):  # a JSON "\ud800" escape: Arrow cannot store it as UTF-8
        raise BadRecord(f"field '{field}' holds an unpaired surrogate escape")
    return value


def required_str(obj: dict[str, Any], key: str, field: str | None = None) -> str:
    """``obj[key]`` as a string; missing, null or another type is a bad record."""
    if key not in obj:
        raise BadRecord(f"missing required field '{key}'")
    return _text(obj[key], field or key)


def instruction_str(obj: dict[str, Any], key: str) -> str:
    """The instruction: a required string with something besides whitespace in it."""
    text = required_str(obj, key)
    if not text.strip():
        raise BadRecord(f"empty instruction (field '{key}')")
    return text


def optional_str(obj: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    """``obj[key]`` as a string, or None when absent or null (absent is an error if ``required``)."""
    if key not in obj:
        if required:
            raise BadRecord(f"missing required field '{key}'")
        return None
    value = obj[key]
    return None if value is None else _text(value, key)


def response_or_none(text: str | None) -> str | None:
    """An empty response is no response: the row still needs a teacher's answer."""
    return text if text is not None and text.strip() else None


def _instances(task: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Self-instruct style ``instances[{input, output}]`` -> ``[(input, output)]``; at least one."""
    if "instances" not in task:
        raise BadRecord("missing required field 'instances'")
    instances = task["instances"]
    if not isinstance(instances, list):
        raise BadRecord(f"field 'instances' must be a list, got {_type_name(instances)}")
    if not instances:
        raise BadRecord("field 'instances' is empty")
    out = []
    for i, inst in enumerate(instances):
        inst = _object(inst, f"instances[{i}] to be a JSON object")
        try:
            out.append((optional_str(inst, "input") or "", response_or_none(optional_str(inst, "output", required=True))))
        except BadRecord as e:
            raise BadRecord(f"instances[{i}]: {e.reason}") from None
    return out


# ------------------------------------------------------------------------------------------
# The formats
# ------------------------------------------------------------------------------------------


def parse_self_instruct(value: Any, ctx: FileContext) -> list[Parsed]:
    """Self-instruct seed task -> one row per instance; subset "classification" or "generation"."""
    task = _object(value)
    instruction = instruction_str(task, "instruction")
    is_cls = task.get("is_classification")
    if not isinstance(is_cls, bool):
        raise BadRecord(f"field 'is_classification' must be a bool, got {_type_name(is_cls)}")
    subset = "classification" if is_cls else "generation"
    meta = {"task_id": task.get("id"), "name": optional_str(task, "name"), "is_classification": is_cls}
    return [
        Parsed(instruction, inp, out, subset, {**meta, "instance": i})
        for i, (inp, out) in enumerate(_instances(task))
    ]


def parse_user_oriented(value: Any, ctx: FileContext) -> list[Parsed]:
    """User-oriented instruction -> one row per instance; subset = the motivating app."""
    task = _object(value)
    instruction = instruction_str(task, "instruction")
    app = required_str(task, "motivation_app")
    return [
        Parsed(instruction, inp, out, app, {"task_id": task.get("id"), "instance": i})
        for i, (inp, out) in enumerate(_instances(task))
    ]


def parse_alpaca(value: Any, ctx: FileContext) -> list[Parsed]:
    """Alpaca ``{instruction, input, output}``; input and output may be absent (instruction-only corpora)."""
    row = _object(value)
    instruction = instruction_str(row, "instruction")
    inp = optional_str(row, "input") or ""
    return [Parsed(instruction, inp, response_or_none(optional_str(row, "output")), ctx.default_subset, {})]


def parse_p3(value: Any, ctx: FileContext) -> list[Parsed]:
    """P3 ``{prompt, completion}``: the prompt is the whole instruction; subset = template (file stem)."""
    row = _object(value)
    prompt = instruction_str(row, "prompt")
    completion = optional_str(row, "completion")
    if completion is not None:
        completion = completion.removesuffix(ENDOFTEXT)
    return [Parsed(prompt, "", response_or_none(completion), ctx.stem, {})]


def parse_flan(value: Any, ctx: FileContext) -> list[Parsed]:
    """FLAN ``{inputs, targets, task_name[, template_type]}``; the FLAN-2022 ``_task_name`` spelling works too."""
    row = _object(value)
    inputs = instruction_str(row, "inputs")
    targets = response_or_none(optional_str(row, "targets"))
    task = required_str(row, "_task_name" if "_task_name" in row and "task_name" not in row else "task_name")
    meta = {}
    for key in ("template_type", "_template_type", "_task_source", "_template_idx"):
        if row.get(key) is not None:
            meta[key.lstrip("_")] = row[key]
    return [Parsed(inputs, "", targets, task, meta)]


# "\n\nAgent:" — the speaker marker that separates an OIG instruction from its response.
_OIG_MARKER = re.compile(r"\n\n([A-Z][A-Za-z]*):")
# Names OIG uses for the answering side; preferred over other capitalised words ("Note:",
# "Example:") that a response may itself contain after a blank line.
OIG_AGENT_NAMES = frozenset({"Agent", "Assistant", "Bot", "AI", "Answer", "Response", "Output"})


def split_oig(pair: str) -> tuple[str, str, str]:
    """``"instruction\\n\\nAgent: response<|endoftext|>"`` -> (instruction, agent name, response).

    Splits on the last marker with a known agent name, else on the last ``\\n\\n<Word>:``
    marker (Word a single capitalised word); raises BadRecord when there is none.
    """
    markers = list(_OIG_MARKER.finditer(pair))
    if not markers:
        raise BadRecord("no '\\n\\n<Agent>:' marker between instruction and response")
    known = [m for m in markers if m.group(1) in OIG_AGENT_NAMES]
    m = (known or markers)[-1]
    instruction = pair[: m.start()].strip()
    response = pair[m.end() :].strip().removesuffix(ENDOFTEXT).strip()
    return instruction, m.group(1), response


def parse_oig(value: Any, ctx: FileContext) -> list[Parsed]:
    """OIG ``[source, "instruction\\n\\nAgent: response<|endoftext|>"(, extra)]``; subset = the source."""
    if not isinstance(value, list):
        raise BadRecord(f"expected a JSON array [source, text, ...], got {_type_name(value)}")
    if len(value) < 2:
        raise BadRecord(f"expected at least 2 elements [source, text], got {len(value)}")
    source = _text(value[0], "[0] (source)")
    instruction, agent, response = split_oig(_text(value[1], "[1] (text)"))
    if not instruction:
        raise BadRecord("empty instruction (before the agent marker)")
    meta: dict[str, Any] = {"agent": agent}
    if len(value) > 2:
        meta["extra"] = value[2] if len(value) == 3 else value[2:]
    return [Parsed(instruction, "", response_or_none(response), source, meta)]


def parse_lamini(value: Any, ctx: FileContext) -> list[Parsed]:
    """LaMini-instruction (LAMINI_COLUMNS: instruction, response, instruction_source); subset = instruction_source."""
    row = _object(value)
    instruction = instruction_str(row, INSTRUCTION)
    response = response_or_none(optional_str(row, RESPONSE))
    return [Parsed(instruction, "", response, required_str(row, INSTRUCTION_SOURCE), {})]


def parse_generic(value: Any, ctx: FileContext) -> list[Parsed]:
    """Any table of objects read through ``spec.columns``; a mapped column must exist (null is fine)."""
    row = _object(value)
    cols = ctx.spec.columns
    instruction = instruction_str(row, cols.instruction)
    inp = (optional_str(row, cols.input, required=True) or "") if cols.input else ""
    response = response_or_none(optional_str(row, cols.response, required=True)) if cols.response else None
    subset = required_str(row, cols.subset) if cols.subset else ctx.default_subset
    return [Parsed(instruction, inp, response, subset, {})]


Parser = Callable[[Any, FileContext], list[Parsed]]


@dataclass(frozen=True)
class Format:
    """How to read one ``CorpusSpec.format``: its files' container (None: from the extension) and parser."""

    container: Container | None
    parse: Parser
    columns: tuple[str, ...] | None = None  # Parquet columns to read (None: all)


FORMATS: dict[str, Format] = {
    "self_instruct": Format("jsonl", parse_self_instruct),
    "user_oriented": Format("jsonl", parse_user_oriented),
    "alpaca": Format("json", parse_alpaca),
    "p3": Format("jsonl", parse_p3),
    "flan": Format("jsonl", parse_flan),
    "oig": Format("json", parse_oig),
    "lamini": Format("parquet", parse_lamini, LAMINI_COLUMNS),
    "generic": Format(None, parse_generic),
}


def container_for(spec: CorpusSpec) -> Container | None:
    """The container every file of ``spec`` is read as; None means "from each file's extension"."""
    if spec.format == "generic":
        return spec.file_format
    return FORMATS[spec.format].container


def folder_extensions(spec: CorpusSpec) -> frozenset[str]:
    """Extensions of the files a folder contributes: those of the spec's container, else all known."""
    container = container_for(spec)
    if container in ("jsonl", "json"):  # JSON Lines often hide behind ".json" and vice versa
        return frozenset(e for e, c in EXTENSIONS.items() if c in ("jsonl", "json"))
    if container is None:
        return frozenset(EXTENSIONS)
    return frozenset(e for e, c in EXTENSIONS.items() if c == container)


def parquet_columns(spec: CorpusSpec) -> list[str] | None:
    """Columns worth reading from Parquet for ``spec`` (projection keeps wide files cheap)."""
    if spec.format == "generic":
        cols = spec.columns
        return [c for c in (cols.instruction, cols.input, cols.response, cols.subset) if c]
    fixed = FORMATS[spec.format].columns
    return list(fixed) if fixed else None


def meta_json(meta: dict[str, Any]) -> str:
    """Meta as a compact JSON object string; non-JSON values (from Parquet) are written with ``str``."""
    text = json.dumps(meta, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    if _SURROGATE.search(text):
        raise BadRecord("an extra field holds an unpaired surrogate escape")
    return text
