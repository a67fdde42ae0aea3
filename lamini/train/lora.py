"""LoRA through peft: wrap a student before DeepSpeed sees it, and export it merged or as an adapter.

Only the adapters require gradients, so lamini.train.strategy.param_groups hands DeepSpeed just
them: optimizer states shrink from 12-16 bytes per parameter to those of the adapters, which is
what lets a 6B/7B student train on fewer GPUs. The frozen base still takes its weights' memory
(ZeRO-3 still shards it). Imported inside Ray Train workers only (peft imports torch).
"""

from __future__ import annotations

from typing import Any

from lamini.train.config import LoraSettings, TrainConfig


def lora_config(settings: LoraSettings, family: str):
    from peft import LoraConfig, TaskType

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,  # None: peft's table per model type
        task_type=TaskType.SEQ_2_SEQ_LM if family == "encoder-decoder" else TaskType.CAUSAL_LM,
    )


def wrap(model, settings: LoraSettings, family: str, gradient_checkpointing: bool):
    """The student as a peft model with trainable adapters and a frozen base."""
    from peft import get_peft_model

    if gradient_checkpointing:
        # The frozen embeddings' output does not require grad, so reentrant checkpointing would
        # drop the adapters' gradients; transformers' hook makes the inputs require it.
        model.enable_input_require_grads()
    return get_peft_model(model, lora_config(settings, family))


def export_model(module, state_dict: dict[str, Any], cfg: TrainConfig, family: str, zero3: bool):
    """(model to save_pretrained, its state dict or None for the adapter's own) for cfg.lora.export.

    module is the trained peft model (DeepSpeed's engine.module) and state_dict its consolidated
    weights on rank 0. Under ZeRO-3 the module's parameters are shards, so a fresh base is loaded
    on the CPU and the weights put into it before merging; otherwise the module itself is whole.
    """
    from lamini.models.loading import load_student

    if zero3:
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        # Training is over: the fresh base must load whole, not as ZeRO-3 shards (transformers
        # builds under deepspeed.zero.Init while the strategy's HfDeepSpeedConfig is registered).
        unset_hf_deepspeed_config()
        module = wrap(load_student(cfg.model, family), cfg.lora, family, gradient_checkpointing=False)
        module.load_state_dict(state_dict)
    if cfg.lora.export == "adapter":
        return module, None  # PeftModel.save_pretrained writes adapter_config.json + adapter weights
    merged = module.merge_and_unload()  # peft's merge: W += (alpha / r) * B @ A, adapters removed
    return merged, merged.state_dict()
