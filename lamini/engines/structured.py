"""Structured outputs: how each engine constrains an answer to the JSON schema its request carries.

A request row may carry a JSON schema (as JSON text) in column RESPONSE_SCHEMA; the engines
read it into `ChatRequest.response_schema` and make the answer follow it:

* `hf`: constrained decoding with xgrammar's transformers logits processor (`GrammarConstraint`):
  at each step every token that would break the schema gets probability 0, so greedy and sampled
  decoding both write only valid JSON, and the grammar's end allows only EOS.
* `openai`: the chat-completions `response_format` (`openai_response_format`); an endpoint that
  refuses it is asked again without it (lamini.engines.openai_http), and the prompt's own format
  (the paper's tags) applies.
* `vllm`: `structured_outputs` in the sampling params of Ray's vLLM processor
  (`vllm_structured_outputs`), which vLLM turns into its own guided decoding (xgrammar by default).

Why xgrammar for `hf` (measured against llguidance on the embedded SmolLM2-135M teacher, CPU,
benchmarks/bench_generation.py, numbers in benchmarks/README.md): both hold every answer to the
schema; xgrammar's mask costs ~1 ms per decoding step for a batch of 4 (~0.1% of the step, the
model's forward pass is the rest), the llguidance matcher with our own bitmask-to-logits step
18-70 ms (1-2.5%); xgrammar ships a ready transformers LogitsProcessor (llguidance only bitmask
helpers, whose torch one needs torch.compile and a C++ toolchain on CPU), and it is vLLM's
default structured-output backend (one library for both local engines). lm-format-enforcer
(a pure-Python character-level parser walked per token) and outlines (a large dependency tree
for the same JSON-schema feature) were not kept. xgrammar is the optional `[structured]` extra
(in `dev` too): without it the `hf` engine decodes unconstrained and says so once in the log
(the paper's tags still parse).
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger(__name__)

RESPONSE_SCHEMA = "response_schema"
"""Request-row column: the JSON schema (JSON text) the answer must follow; null for a free answer."""

OPENAI_SCHEMA_NAME = "generated_instructions"  # OpenAI's json_schema.name: [a-zA-Z0-9_-]{1,64}
INSTALL_HINT = "pip install 'lamini-lm[structured]'"


# Keywords left out of a schema sent to an endpoint: OpenAI's strict mode rejects length bounds
# on strings (a 400 for the whole request), and providers differ on array bounds. The prompt asks
# for N; the local decoders (hf, vllm) keep the bounds, where they stop a small model's runaway.
_ENDPOINT_UNSUPPORTED = frozenset({"minLength", "maxLength", "minItems", "maxItems"})


def _portable(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _portable(v) for k, v in node.items() if k not in _ENDPOINT_UNSUPPORTED}
    if isinstance(node, list):
        return [_portable(v) for v in node]
    return node


def openai_response_format(schema_json: str) -> dict[str, Any]:
    """The chat-completions `response_format` for a schema (strict: the endpoint must follow it),
    in the subset of JSON schema that strict endpoints accept."""
    schema = _portable(json.loads(schema_json))
    return {"type": "json_schema", "json_schema": {"name": OPENAI_SCHEMA_NAME, "schema": schema, "strict": True}}


def vllm_structured_outputs(schema_json: str) -> dict[str, Any]:
    """The `structured_outputs` entry of a ray.data.llm sampling_params dict (vLLM's
    StructuredOutputsParams keywords). The schema stays JSON text: as a nested dict its
    varying keys would become an Arrow struct column whose fields differ from row to row."""
    return {"json": schema_json}


def have_xgrammar() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None


class GrammarConstraint:
    """Compiles schemas once per engine (xgrammar, for one tokenizer) and hands out logits processors.

    processor(schema_json) returns a fresh transformers LogitsProcessor for one generate() call
    (it keeps one matcher per row, so it cannot be reused). Compiled grammars are cached by the
    schema text: a round of instruction generation sends one or two distinct schemas.
    """

    def __init__(self, tokenizer, vocab_size: int, stop_ids: set[int]):
        import xgrammar as xgr

        self._xgr = xgr
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids))
        self._compiler = xgr.GrammarCompiler(info)
        self._compiled: dict[str, Any] = {}

    def compiled(self, schema_json: str):
        grammar = self._compiled.get(schema_json)
        if grammar is None:
            # Compact JSON (no free whitespace): a small model let loose on "any whitespace" can
            # spend its whole budget on newlines; one fixed layout also costs the fewest tokens.
            grammar = self._compiler.compile_json_schema(schema_json, any_whitespace=False)
            self._compiled[schema_json] = grammar
        return grammar

    def processor(self, schema_json: str):
        from xgrammar.contrib.hf import LogitsProcessor

        return LogitsProcessor(self.compiled(schema_json))


__all__ = ["GrammarConstraint", "RESPONSE_SCHEMA", "have_xgrammar", "openai_response_format", "vllm_structured_outputs"]
