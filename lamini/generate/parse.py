"""Teacher output of an instruction-generation prompt -> the instructions it holds.

    out = parse_instructions(result.text, result.finish_reason)
    out.instructions, out.truncated_dropped, out.reason

The prompts (Figures 6 and 7 of the paper) ask for each instruction inside
``<example>...</example>``. Teachers mostly comply, and fail in a handful of known ways,
each handled here rather than raised, so that a round's statistics can count them:

* tags with odd spacing or case (``< Example >``, ``</EXAMPLE >``, ``<example 3>``);
* numbering or labels inside the tags (``1. ``, ``2) ``, ``Example 3: ``, ``Instruction:``,
  ``- ``) and quotes around the whole instruction;
* a last block cut off by ``max_tokens`` (an opening tag with no closing one);
* a doubled opening tag or a missing closing tag before the next opening tag: the text up
  to the next tag is one block; closing tags with no block open are ignored;
* no tags at all: a numbered list ("1. ... 2. ...") is accepted as the list of
  instructions; anything else gives zero instructions with reason ``no_tags``.

Structured outputs (lamini.generate.structured) come first: an answer that is the JSON object
``{"instructions": [{"instruction": ..., "input": ...}, ...]}`` (or a bare list of such items
or strings, or the same inside a ```json fence) gives its items, each joined as the paper joins
an instruction with its input, ``"$instruction:$input"`` (reason ``json``). JSON cut off by
``max_tokens`` keeps its complete items and drops the cut one (``truncated_dropped``), as for
tags. Text that is not such JSON goes on to the tag rules above, so a teacher whose endpoint
refused the schema, or any old run, parses as before.

Truncation policy: when ``finish_reason == "length"`` the teacher was cut off, so an
unclosed last block (or the last item of an untagged numbered list) is incomplete and is
dropped (``truncated_dropped=True``). With any other finish reason ("stop", or unknown)
the teacher chose to end there: an unclosed last block is a forgotten closing tag, and kept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from lamini.corpus.schema import join_prompt

REASONS = ("json", "ok", "numbered_list", "no_tags", "no_instructions", "empty", "error")
"""Outcomes: instructions from the structured JSON / from tags / from an untagged numbered list;
tagless prose; tags or JSON but nothing usable inside; no text; the request itself failed
(``finish_reason == "error"``)."""

_OPEN = re.compile(r"<\s*example\s*\d*\s*>", re.IGNORECASE)
_CLOSE = re.compile(r"<\s*/\s*example\s*\d*\s*>", re.IGNORECASE)
_TAG = re.compile(rf"(?P<open>{_OPEN.pattern})|(?P<close>{_CLOSE.pattern})", re.IGNORECASE)

# One leading label or number: "1.", "2)", "(3)", "#4", "Example 3:", "Instruction 2 -",
# "Question:", "- ", "* ", "• ". Applied until nothing changes ("Example 1: 1. Write ...").
_PREFIX = re.compile(
    r"""^\s*(?:
        (?:example|instruction|task|question|prompt)s?\s*(?:\#?\s*\d+\s*[:.)\-–]|:)\s*  # "Example 3:", "Task:"
      | \(?\#?\d{1,3}\s*[.):\]]\s+                                             # 1.  2)  (3)  #4:
      | \#\d{1,3}\s+                                                           # #4 Write ...
      | [-*•·]\s+                                                              # bullets
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_NUMBERED_LINE = re.compile(r"^\s*\(?(\d{1,3})\s*[.)]\s+\S")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "„": "“", "`": "`"}


@dataclass(frozen=True)
class ParsedOutput:
    """What one teacher output yielded: the instructions, whether a cut-off one was dropped, and why."""

    instructions: list[str] = field(default_factory=list)
    truncated_dropped: bool = False
    reason: str = "ok"  # one of REASONS


def clean_instruction(text: str) -> str:
    """One instruction without stray numbering/labels, wrapping quotes and edge whitespace ("" if nothing left).

    Inner line breaks are kept (a P3-style instruction carries a passage); trailing spaces
    on each line are not.
    """
    text = "\n".join(line.rstrip() for line in text.strip().splitlines()).strip()
    for _ in range(3):  # a label then a number at most; bounded so odd input cannot loop
        new = _PREFIX.sub("", text, count=1).strip()
        if new == text:
            break
        text = new
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] == _QUOTES[text[0]]:
        inner = text[1:-1]
        # Only a pair around the whole text: '"Hi" means hello. Say "hi"' must stay as it is.
        if text[0] not in inner and _QUOTES[text[0]] not in inner:
            text = inner.strip()
    return text


def _tagged_blocks(text: str) -> tuple[list[str], str | None, bool]:
    """(closed blocks, text of an unclosed last block or None, whether any tag was seen)."""
    blocks: list[str] = []
    start: int | None = None  # where the open block's text begins
    seen = False
    for m in _TAG.finditer(text):
        seen = True
        if m.group("open") is not None:
            if start is not None:  # "<example>a <example>b": the first block ends at the next tag
                blocks.append(text[start : m.start()])
            start = m.end()
        elif start is not None:
            blocks.append(text[start : m.start()])
            start = None
        # a closing tag with no open block ("</example></example>") closes nothing
    return blocks, (text[start:] if start is not None else None), seen


def _numbered_items(text: str) -> list[str]:
    """Items of an untagged numbered list, or [] unless the text clearly is one.

    "Clearly": at least two numbered lines, the first numbered 1, and each number one more
    than the previous. Lines before "1." (a preamble) are skipped; an item runs on over
    unnumbered lines until a blank line, so a closing remark after a blank line is not part
    of the last item.
    """
    items: list[list[str]] = []
    expected = 1
    open_item = False
    for line in text.splitlines():
        m = _NUMBERED_LINE.match(line)
        if m and int(m.group(1)) == expected:
            items.append([line])
            expected += 1
            open_item = True
        elif not line.strip():
            open_item = False
        elif open_item:
            items[-1].append(line)
    if len(items) < 2:
        return []
    return ["\n".join(lines) for lines in items]


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*(?:```)?$", re.S | re.IGNORECASE)
# strict=False: a raw line break or tab inside a string (a multi-line input written as is, which
# teachers and some grammar engines let through) is read, not a reason to lose the answer.
_DECODER = json.JSONDecoder(strict=False)


def _item_text(item: object) -> str:
    """One JSON item -> the instruction text ("" if unusable): a string, or {instruction, input}."""
    if isinstance(item, str):
        instruction, input_ = item, ""
    elif isinstance(item, dict) and isinstance(item.get("instruction"), str):
        instruction, input_ = item["instruction"], item.get("input")
        input_ = input_ if isinstance(input_, str) else ""
    else:
        return ""
    # The prompt shows examples in tags: a model may copy a tag into the JSON string.
    instruction = clean_instruction(_TAG.sub("", instruction))
    input_ = _TAG.sub("", input_).strip()
    return join_prompt(instruction, input_) if instruction else ""


def _json_items(text: str) -> tuple[list[object], bool] | None:
    """(items, whether the JSON was complete) of a structured answer, or None when it is not one.

    Complete JSON is read whole. Otherwise (cut off by max_tokens, or a remark after it) the
    `instructions` list (or a bare list) is read item by item with the standard decoder's
    raw_decode, keeping every item that closed: one being written when the teacher stopped is
    lost, as with tags.
    """
    body = text.strip()
    m = _FENCE.match(body)
    if m and body.startswith("```"):
        body = m.group(1)
    if not body or body[0] not in "{[":
        return None
    try:
        data = _DECODER.decode(body)
    except ValueError:
        pass
    else:
        if isinstance(data, dict) and isinstance(data.get("instructions"), list):
            return data["instructions"], True
        if isinstance(data, list):
            return data, True
        return None
    # Incomplete JSON: find the list and decode its items one by one.
    if body[0] == "{":
        key = re.match(r'\{\s*"instructions"\s*:\s*\[', body)
        if key is None:
            return None
        pos = key.end()
    else:
        pos = 1
    items: list[object] = []
    while True:
        while pos < len(body) and body[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(body):
            return items, False
        if body[pos] == "]":  # the list closed: whatever follows (a remark) is not an item
            return items, True
        try:
            item, pos = _DECODER.raw_decode(body, pos)
        except ValueError:
            return items, False
        items.append(item)


def parse_instructions(text: str | None, finish_reason: str | None) -> ParsedOutput:
    """Parse one teacher output; never raises on any text (see the module docstring for the rules)."""
    if finish_reason == "error":
        return ParsedOutput([], False, "error")
    if text is None or not text.strip():
        return ParsedOutput([], False, "empty")
    cut_off = finish_reason == "length"
    structured = _json_items(text)
    if structured is not None:
        items, complete = structured
        instructions = [t for t in (_item_text(i) for i in items) if t]
        # "[1] <example>...": a bracket, not the JSON shape; nothing usable in it, so the tags decide
        if instructions or not _TAG.search(text):
            return ParsedOutput(instructions, not complete, "json" if instructions else "no_instructions")
    blocks, unclosed, tagged = _tagged_blocks(text)
    truncated = False
    if tagged:
        reason = "ok"
        if unclosed is not None and unclosed.strip():
            if cut_off:
                truncated = True
            else:
                blocks.append(unclosed)
    else:
        blocks = _numbered_items(text)
        if not blocks:
            return ParsedOutput([], False, "no_tags")
        reason = "numbered_list"
        if cut_off:  # the list's last item may stop mid-sentence
            blocks, truncated = blocks[:-1], True
    instructions = [c for c in (clean_instruction(b) for b in blocks) if c]
    if not instructions:
        reason = "no_instructions"
    return ParsedOutput(instructions, truncated, reason)
