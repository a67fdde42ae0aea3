"""Prompt templates students are trained and prompted with (one place, so training and evaluation agree)."""

from __future__ import annotations

# The Alpaca template without an input section: the LaMini paper trains decoder-only students on
# it (instruction and input are already joined as "$instruction:$input").
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def alpaca_prompt(instruction: str) -> str:
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def wrap(instruction: str, wrapper: str) -> str:
    """The text a student is given for an instruction: the Alpaca template (as in training) or the raw text."""
    return alpaca_prompt(instruction) if wrapper == "alpaca" else instruction
