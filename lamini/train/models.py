"""Loading students: hub id, local folder, .gguf file or the embedded SmolLM2 GGUF -> model + tokenizer."""

from __future__ import annotations

from typing import Any

from lamini.gguf_cache import detach_quantizer, loadable


def model_source(spec: Any) -> tuple[str, dict[str, Any]]:
    """(what from_pretrained loads, its keyword arguments: gguf_file, trust_remote_code) for a StudentModelSpec."""
    from lamini.teachers.hf_local import resolve_model_source

    src, gguf = resolve_model_source(None if spec.base == "embedded" else spec.base, spec.gguf_file)
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    return src, kw


def resolve_family(spec: Any) -> str:
    """'decoder' or 'encoder-decoder': the spec's own, else the model config's is_encoder_decoder."""
    if spec.family:
        return spec.family
    from transformers import AutoConfig

    src, kw = model_source(spec)
    conf = AutoConfig.from_pretrained(src, **kw)
    return "encoder-decoder" if getattr(conf, "is_encoder_decoder", False) else "decoder"


def load_tokenizer(spec: Any):
    from transformers import AutoTokenizer

    src, kw = model_source(spec)
    if spec.tokenizer:
        src, kw = spec.tokenizer, {"trust_remote_code": spec.trust_remote_code}
    src, kw = loadable(src, kw)  # a local GGUF: its dequantised copy
    return AutoTokenizer.from_pretrained(src, **kw)


def load_student(spec: Any, family: str, dtype: str = "float32"):
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
