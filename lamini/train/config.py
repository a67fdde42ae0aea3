"""Typed configs of the training stages: `lamini train` (TrainConfig) and `lamini tune` (TuneConfig).

Kept beside the trainer rather than in lamini/config.py because they are many (data, optimiser,
DeepSpeed, scaling, checkpoints); like every config here they hold every default, forbid unknown
keys, and import nothing heavy (no torch, no deepspeed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lamini.config import CorpusSpec, RayInitConfig, StrictModel
from lamini.models.spec import StudentModelSpec

# The paper's learning rates (section 4.1): 5e-4 for encoder-decoder students, 2e-5 for decoder-only.
DEFAULT_LR: dict[str, float] = {"encoder-decoder": 5e-4, "decoder": 2e-5}


class TrainDataConfig(StrictModel):
    """What the student learns from and how rows become token sequences."""

    corpora: list[CorpusSpec] = Field(
        min_length=1,
        description="Training corpora. `format: lamini` (Parquet, local or URI) streams with ray.data.read_parquet; "
        "other formats are read by lamini.corpus (instruction joined with input as '$instruction:$input').",
    )
    limit: int | None = Field(None, ge=1, description="Use at most this many rows (a demo-size run).")
    max_length: int = Field(512, ge=8, description="Decoder-only: most tokens of wrapper + instruction + response + EOS.")
    max_source_length: int = Field(512, ge=4, description="Encoder-decoder: most tokens of the instruction.")
    max_target_length: int = Field(512, ge=4, description="Encoder-decoder: most tokens of the response.")
    truncation_side: Literal["right", "left"] = Field(
        "right",
        description="Decoder-only, over max_length: `right` cuts the end of the response, `left` the start of the "
        "prompt (the response is kept, and a BOS the tokenizer adds stays first). Encoder-decoder: which side of "
        "the instruction is cut (the target is cut at its end); EOS stays last in both.",
    )
    packing: bool = Field(
        False,
        description="Decoder-only: pack whole examples into max_length sequences; position ids restart at each "
        "example, so attention stays inside it (a block-diagonal mask, or the varlen kernel with flash attention).",
    )
    shuffle: bool = Field(
        True,
        description="A seeded global shuffle of the rows every epoch (Ray Data's random_shuffle, seeded by `seed` "
        "and the epoch): the same order on every run, so a resumed run skips exactly the steps it already took.",
    )
    shuffle_buffer_rows: int = Field(
        0, ge=0, description="Rows in each worker's local shuffle buffer, on top of `shuffle` (0: none)."
    )


class ValidationConfig(StrictModel):
    """A held-out set the run evaluates on: token-weighted eval_loss at reports and at the end."""

    fraction: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="Share of the training rows held out, chosen by a seeded hash of (instruction, response): the "
        "split does not depend on the read order, and duplicate rows fall on one side. 0 when `corpora` is set.",
    )
    corpora: list[CorpusSpec] = Field(
        default_factory=list, description="A separate validation set (formats as data.corpora) instead of a share."
    )
    max_rows: int | None = Field(2000, ge=1, description="Evaluate on at most this many of the validation rows.")
    seed: int | None = Field(None, description="Seed of the held-out split (None: the run's seed).")
    every_n_steps: int | None = Field(
        None,
        ge=1,
        description="Evaluate at the reports every N steps (a multiple of log_every_n_steps); None: at every "
        "report. Always at every checkpoint (the best one is chosen by eval_loss) and at the end.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> ValidationConfig:
        if (self.fraction > 0) == bool(self.corpora):
            raise ValueError("validation: set either fraction (> 0) or corpora, not both")
        return self


class OptimConfig(StrictModel):
    """AdamW with warmup and cosine decay (DeepSpeed's WarmupCosineLR)."""

    lr: float | None = Field(
        None, gt=0, description="Peak learning rate; None: the paper's 5e-4 (encoder-decoder) or 2e-5 (decoder-only)."
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (not applied to biases and norms).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Share of the total steps spent warming up.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Cosine decays to this fraction of the peak rate.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping (0: off).")


class DeepSpeedSettings(StrictModel):
    """DeepSpeed ZeRO, written into the DeepSpeed JSON config the engine gets (see lamini.train.strategy)."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        0, description="ZeRO stage: 0 = plain data parallel, 2 = shard optimizer+grads, 3 = also parameters."
    )
    offload_optimizer: bool = Field(False, description="ZeRO-2/3: keep optimizer states on the CPU.")
    offload_params: bool = Field(False, description="ZeRO-3: keep parameters on the CPU.")
    torch_adam: bool | None = Field(
        None, description="Use torch's AdamW instead of DeepSpeed's fused/CPU Adam (None: true on CPU, false on GPU)."
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config keys merged over the generated ones (e.g. zero_optimization.reduce_bucket_size).",
    )

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> DeepSpeedSettings:
        if self.offload_optimizer and self.zero_stage < 1:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class LoraSettings(StrictModel):
    """LoRA through peft: the base weights stay frozen, only low-rank adapters train (and their optimizer states)."""

    r: int = Field(16, ge=1, description="Rank of the adapters.")
    alpha: float = Field(32.0, gt=0, description="Scaling numerator: the update is (alpha / r) * B @ A.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Modules that get adapters; None: peft's default for the architecture (Llama/GPT-J/GPT-Neo "
        "q_proj+v_proj, GPT-2 c_attn, T5 q+v); `all-linear`: every linear layer but the output head.",
    )
    export: Literal["merged", "adapter"] = Field(
        "merged",
        description="merged: the adapters folded into the weights, an ordinary model folder (what lamini's "
        "evaluations load); adapter: only the adapter files (adapter_config.json names the base).",
    )


class ScalingSettings(StrictModel):
    """Ray Train's ScalingConfig: how many workers, on what."""

    num_workers: int = Field(1, ge=1, description="Training workers (one per GPU on GPU nodes).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker asks for (also its torch thread count).")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Extra custom resources per worker (e.g. {'accelerator_type:A100': 0.001})."
    )
    accelerator_type: str | None = Field(None, description="Ray accelerator type the workers need, e.g. A100 or H100.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed on nodes (PACK fills a node before the next)."
    )


class TrainConfig(StrictModel):
    """`lamini train`: supervised fine-tuning of one student with Ray Train + DeepSpeed."""

    name: str = Field("student", description="Run name; the Ray Train run folder inside run_dir.")
    run_dir: str = Field(
        "runs/train", description="Storage for checkpoints, metrics and the exported model (local path or URI)."
    )
    model: StudentModelSpec = Field(description="The base model.")
    data: TrainDataConfig = Field(description="Training data and tokenisation.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and learning-rate schedule.")
    global_batch_size: int = Field(
        1024, ge=1, description="Sequences per optimiser step over all workers (paper: 1024)."
    )
    micro_batch_size: int = Field(4, ge=1, description="Sequences per forward/backward on one worker.")
    epochs: float = Field(5.0, gt=0, description="Passes over the data (paper: 5); ignored when max_steps is set.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (paper: 6K for 6B/7B).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Training precision; auto: bf16 with GPUs, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora: LoraSettings | None = Field(None, description="Train LoRA adapters (peft) instead of every weight.")
    deepspeed: DeepSpeedSettings = Field(default_factory=DeepSpeedSettings, description="DeepSpeed ZeRO settings.")
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Ray Train workers.")
    log_every_n_steps: int = Field(10, ge=1, description="Report loss, tokens/s and learning rate every N steps.")
    checkpoint_every_n_steps: int = Field(200, ge=1, description="Save a resumable checkpoint every N steps.")
    keep_checkpoints: int = Field(
        2, ge=1, description="Newest checkpoints kept in storage (a tune trial keeps its best ones by the ASHA "
        "metric, and the newest as well)."
    )
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the latest checkpoint (FailureConfig).")
    export: bool = Field(True, description="Write the final Hugging Face model folder (run_dir/model) at the end.")
    export_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Dtype of the exported weights (auto: the training precision)."
    )
    peak_tflops: float | None = Field(
        None, gt=0, description="Peak dense TFLOP/s of one device for MFU (None: known GPUs' spec, or measured on CPU)."
    )
    validation: ValidationConfig | None = Field(
        None, description="Held-out evaluation (eval_loss); None: training loss only."
    )
    seed: int = Field(0, description="Seed of weight init noise, dropout and shuffling.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        per_step = self.micro_batch_size * self.scaling.num_workers
        if self.global_batch_size % per_step:
            raise ValueError(
                f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size x num_workers "
                f"({self.micro_batch_size} x {self.scaling.num_workers} = {per_step})"
            )
        v = self.validation
        if v is not None and v.every_n_steps is not None and v.every_n_steps % self.log_every_n_steps:
            raise ValueError(
                f"validation.every_n_steps {v.every_n_steps} is not a multiple of log_every_n_steps "
                f"{self.log_every_n_steps}: evaluation happens at reports"
            )
        return self

    @property
    def grad_accum_steps(self) -> int:
        """Micro batches per optimiser step on each worker, derived from the global batch size."""
        return self.global_batch_size // (self.micro_batch_size * self.scaling.num_workers)


class SearchSpace(StrictModel):
    """What `lamini tune` varies. Empty lists/None keep the base config's value."""

    lr: tuple[float, float] | None = Field(None, description="Learning rate, log-uniform in [low, high].")
    global_batch_size: list[int] = Field(default_factory=list, description="Global batch sizes to choose from.")
    epochs: list[float] = Field(default_factory=list, description="Epoch counts to choose from.")


class ASHASettings(StrictModel):
    """ASHA early stopping (ray.tune.schedulers.ASHAScheduler) on a reported metric."""

    metric: str | None = Field(
        None, description="Reported metric the scheduler compares; None: eval_loss with train.validation, else loss."
    )
    mode: Literal["min", "max"] = Field("min", description="Whether lower or higher is better.")
    max_t: int = Field(
        1000,
        ge=1,
        description="ASHA's step horizon. Keep it above the trials' max_steps: a trial Tune stops (early, or at "
        "max_t) leaves its Ray Train workers to Train's placement-group cleaner, which needs the State API.",
    )
    grace_period: int = Field(10, ge=1, description="Steps every trial runs before it may be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="Fraction of trials kept at each rung (1/factor).")


class TuneConfig(StrictModel):
    """`lamini tune`: a Ray Tune search over `lamini train` runs, with ASHA early stopping."""

    run_dir: str = Field("runs/tune", description="Storage of the search: one Train run per trial, and the summary.")
    train: TrainConfig = Field(description="The base training config every trial starts from.")
    search: SearchSpace = Field(default_factory=SearchSpace, description="The hyperparameters varied.")
    num_samples: int = Field(4, ge=1, description="Trials sampled from the search space.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at once (each holds its own workers).")
    asha: ASHASettings = Field(default_factory=ASHASettings, description="Early stopping.")
    seed: int = Field(0, description="Seed of the search's sampling.")

    @property
    def metric(self) -> str:
        """What ASHA compares and trials keep their best checkpoints by."""
        return self.asha.metric or ("eval_loss" if self.train.validation else "loss")

    @model_validator(mode="after")
    def _metric_is_reported(self) -> TuneConfig:
        v = self.train.validation
        if self.metric == "eval_loss":
            if v is None:
                raise ValueError("asha.metric eval_loss needs train.validation")
            if v.every_n_steps not in (None, self.train.log_every_n_steps):
                # Tune checks that every result carries the metric, and ASHA compares at every report.
                raise ValueError("with asha.metric eval_loss, train.validation.every_n_steps must be unset")
        return self
