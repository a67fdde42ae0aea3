"""The shape instruction-generation outputs are constrained to, one JSON schema for every engine.

    schema = instructions_schema(20)       # {"instructions": [{"instruction": ..., "input": ...}, ...]}
    text = schema_text(schema)             # what a request row carries (column RESPONSE_SCHEMA)

Why JSON and not the paper's `<example>` tags as a grammar: the OpenAI API constrains only to
a JSON schema (`response_format`), and one shape for all engines means one parse path. The
prompt keeps the paper's wording (Figures 6-7, tags included): a teacher whose endpoint refuses
`response_format` then answers in the paper's tags, which `lamini.generate.parse` still reads.

Each item is an instruction and its input ("" when it has none), joined as the paper does
("$instruction:$input", `lamini.corpus.schema.join_prompt`). Both keys are required and no
other key is allowed: that is what OpenAI's strict mode demands, and it gives a local decoder
no room to wander. The schema bounds the list to N items (the prompt's `{n}`) and each string's
length, so a small model constrained to it cannot write an endless list or string: it must
close the JSON and stop. How the engines apply it: `lamini.engines.hf_local` (xgrammar logits
processor), `lamini.engines.openai_http` (`response_format`), `lamini.engines.vllm_engine`
(`structured_outputs` in the sampling params of Ray's vLLM processor).
"""

from __future__ import annotations

import json
from typing import Any

from lamini.engines.structured import RESPONSE_SCHEMA  # noqa: F401 - the column its text goes in

# Longest strings the local decoders allow (characters; ~100 tokens each). Measured on the
# embedded 135M teacher (benchmarks/README.md): unbounded, it copies a seed's passage into an
# `input` until max_tokens and no item closes; bounded, every item closes. The paper's generated
# instructions are short (LaMini-instruction: ~20 words on average), so the bound rarely binds a
# real teacher, and endpoints are sent the schema without it (lamini.engines.structured).
MAX_INSTRUCTION_CHARS = 400
MAX_INPUT_CHARS = 400
# With a token budget (the request's max_tokens) the bounds shrink so that the first item closes
# within it: otherwise a sampled small teacher that fills both strings (800 characters) under a
# 128-token budget is cut off inside its first item and the answer gives nothing
# (benchmarks/README.md, bench_generation: 75% parse rate sampled at 128 tokens). English under
# SmolLM2's or GPT-2's tokenizer is ~4 characters a token, but the failures are degenerate runs
# ("1.1.1.1.", one character a token), so the bound assumes one: a token of a byte-level BPE
# decodes to at least one character unless it splits a multi-byte one. The JSON around the first
# item (`{"instructions": [{"instruction": "", "input": ""}`) is ~16 tokens under SmolLM2's
# tokenizer and up to ~30 under a tiny test one. At the shipped offline budget (512) the strings
# may hold 240 characters each, twice a typical LaMini instruction.
FRAME_TOKENS = 32
CHARS_PER_TOKEN_FLOOR = 1.0
MIN_STRING_CHARS = 32


def string_bounds(max_tokens: int | None) -> tuple[int, int]:
    """(instruction, input) maxLength for an answer of at most max_tokens (None: no budget)."""
    if max_tokens is None:
        return MAX_INSTRUCTION_CHARS, MAX_INPUT_CHARS
    room = int((max_tokens - FRAME_TOKENS) * CHARS_PER_TOKEN_FLOOR) // 2  # shared by the two strings
    room = max(MIN_STRING_CHARS, room)
    return min(MAX_INSTRUCTION_CHARS, room), min(MAX_INPUT_CHARS, room)


def instructions_schema(n: int, max_tokens: int | None = None) -> dict[str, Any]:
    """JSON schema of an answer holding exactly n generated instructions (the prompt's "Generate n"),
    each `{instruction, input}`. Exactly n: left to stop after any item, the embedded teacher
    writes one and stops; held to n, a cut-off answer still keeps every item it closed.
    max_tokens (the request's budget) bounds the strings so that the first item fits in it
    (string_bounds)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    max_instruction, max_input = string_bounds(max_tokens)
    item = {
        "type": "object",
        "properties": {
            "instruction": {"type": "string", "minLength": 1, "maxLength": max_instruction},
            "input": {"type": "string", "maxLength": max_input},
        },
        "required": ["instruction", "input"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"instructions": {"type": "array", "items": item, "minItems": n, "maxItems": n}},
        "required": ["instructions"],
        "additionalProperties": False,
    }


def schema_text(schema: dict[str, Any]) -> str:
    """Compact JSON text of a schema: one schema, one string (engines cache compiled grammars by it)."""
    return json.dumps(schema, separators=(",", ":"))  # key order kept: "instruction" is written before "input"


__all__ = ["RESPONSE_SCHEMA", "instructions_schema", "schema_text", "string_bounds"]
