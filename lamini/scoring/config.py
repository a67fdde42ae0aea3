"""Detoxify scoring settings, shared by `lamini filter-toxic`, the dataset stage and the toxicity probe."""

from __future__ import annotations

from pydantic import Field

from lamini.config import PipelineConfig, RayInitConfig, StrictModel


class ToxicitySettings(StrictModel):
    """How rows are scored with detoxify and which are dropped (used alone or inside `dataset`)."""

    model: str = Field(
        "original",
        description="detoxify model type (original, unbiased, multilingual) or a local checkpoint file (.ckpt).",
    )
    threshold: float = Field(0.5, gt=0, le=1, description="Drop a row whose score on `label` is above this in any column.")
    label: str = Field("toxicity", description="Which detoxify output the threshold applies to.")
    columns: list[str] = Field(default_factory=lambda: ["instruction", "response"], description="Text columns scored.")
    batch_size: int = Field(64, ge=1, description="Texts per detoxify forward pass.")
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig, description="Actor pool and block sizes.")
    ray: RayInitConfig = Field(default_factory=RayInitConfig, description="Ray connection.")
