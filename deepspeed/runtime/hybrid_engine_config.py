"""Config model for the ``hybrid_engine`` section (RLHF train <-> generate switch)."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from deepspeed.runtime.config_utils import DeepSpeedConfigModel

__all__ = ["HybridEngineConfig"]


class HybridEngineConfig(DeepSpeedConfigModel):
    """``hybrid_engine`` section."""

    _section: ClassVar[str] = "hybrid_engine"

    enabled: bool = False
    """Build a DeepSpeedHybridEngine, whose ``generate`` runs the inference path."""
    max_out_tokens: int = Field(512, ge=1)
    """Largest prompt + generated length the inference workspace is sized for."""
    inference_tp_size: int = Field(1, ge=1)
    """Tensor-parallel degree used during generation."""
    release_inference_cache: bool = False
    """Free the KV cache / workspace after each generate call."""
    pin_parameters: bool = True
    """Under ZeRO-3, gather all layers once for generation instead of layer by layer."""
    tp_gather_partition_size: int = Field(8, ge=1)
    """Under ZeRO-3 with TP > 1, layers gathered at a time."""
    enable_cuda_graph: bool = False
    """Capture the decode step in a CUDA graph."""
