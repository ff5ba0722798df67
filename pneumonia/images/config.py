"""`PreprocessConfig`: params.yaml's `preprocess` section and model.json's `preprocessing`
block. Pydantic only: loading params never imports a decoder."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Intensity = Literal["none", "equalize", "clahe"]
Framing = Literal["full", "thorax"]


class PreprocessConfig(BaseModel):
    """What `prepare_image` needs: params.yaml's `preprocess` section, and model.json's
    `preprocessing` block for serving. Strict: a missing, unknown or mistyped key fails."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    image_size: int = Field(ge=16, le=1024)  # square side in px fed to the model
    intensity: Intensity
    clahe_clip_limit: float = Field(gt=0, allow_inf_nan=False)
    clahe_tile_grid: int = Field(ge=1, le=64)
    # full: the whole image; thorax: cropped to the detected lung fields and ribcage
    # (`pneumonia.images.framing.find_thorax`) before the resize, so that a tight or a wide
    # collimation, or a black border, reaches the model as the same input.
    framing: Framing = "full"
