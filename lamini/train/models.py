"""Loading students: hub id, local folder, .gguf file or the embedded SmolLM2 GGUF -> model + tokenizer."""

from __future__ import annotations

from typing import Any


def model_source(spec: Any) -> tuple[str, str | None]:
    """(what from_pretrained loads, gguf_file kwarg or None) for a StudentModelSpec."""
    from lamini.teachers.hf_local import resolve_model_source

    return resolve_model_source(None if spec.base == "embedded" else spec.base, spec.gguf_file)


def _kwargs(spec: Any) -> dict[str, Any]:
    _, gguf = model_source(spec)
    kw: dict[str, Any] = {"trust_remote_code": spec.trust_remote_code}
    if gguf:
        kw["gguf_file"] = gguf
    return kw


def resolve_family(spec: Any) -> str:
    """'decoder' or 'encoder-decoder': the spec's own, else the model config's is_encoder_decoder."""
    if spec.family:
        return spec.family
    from transformers import AutoConfig

    src, _ = model_source(spec)
    conf = AutoConfig.from_pretrained(src, **_kwargs(spec))
    return "encoder-decoder" if getattr(conf, "is_encoder_decoder", False) else "decoder"


def load_tokenizer(spec: Any):
    from transformers import AutoTokenizer

    src, _ = model_source(spec)
    kw = _kwargs(spec)
    if spec.tokenizer:
        src, kw = spec.tokenizer, {"trust_remote_code": spec.trust_remote_code}
    return AutoTokenizer.from_pretrained(src, **kw)


def load_student(spec: Any, family: str, dtype: str = "float32"):
    """The model in `dtype` (fp32 master weights for training; DeepSpeed casts for bf16/fp16)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    src, gguf = model_source(spec)
    cls = AutoModelForSeq2SeqLM if family == "encoder-decoder" else AutoModelForCausalLM
    model = cls.from_pretrained(src, dtype=getattr(torch, dtype), **_kwargs(spec))
    if gguf:
        # transformers dequantises GGUF weights into ordinary tensors on load but keeps the gguf
        # quantizer attached, which makes save_pretrained refuse; the trained student is not quantized.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def count_params(model) -> int:
    """All parameters, also when ZeRO-3 has partitioned them (ds_numel is the full size)."""
    return sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters())
