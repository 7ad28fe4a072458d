"""Config models for mixed precision: the ``fp16`` and ``bf16`` sections."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from deepspeed.runtime.config_utils import DeepSpeedConfigModel

__all__ = ["DeepSpeedFP16Config", "DeepSpeedBF16Config"]


class DeepSpeedFP16Config(DeepSpeedConfigModel):
    """``fp16`` section: half-precision training with (dynamic) loss scaling."""

    _section: ClassVar[str] = "fp16"

    enabled: bool = False
    """Train with fp16 parameters and loss scaling."""
    auto_cast: bool = False
    """Run the forward under autocast instead of casting the inputs."""
    loss_scale: float = Field(0.0, ge=0)
    """Static loss scale; 0 selects dynamic loss scaling."""
    initial_scale_power: int = Field(16, ge=0)
    """Dynamic scaling starts at 2**initial_scale_power."""
    loss_scale_window: int = Field(1000, ge=1)
    """Overflow-free steps before the dynamic scale grows."""
    hysteresis: int = Field(2, ge=1)
    """Overflows tolerated before the dynamic scale shrinks (delayed shift)."""
    consecutive_hysteresis: bool = False
    """Refill the hysteresis budget after each overflow-free step window."""
    min_loss_scale: float = Field(1.0, gt=0)
    """Floor for the dynamic scale."""
    fp16_master_weights_and_grads: bool = False
    """Keep master weights and gradients in fp16 (ZeRO with CPU offload only)."""

    @property
    def dynamic_loss_scale(self) -> bool:
        """True when the loss scale adapts to overflows (``loss_scale == 0``)."""
        return self.loss_scale == 0

    @property
    def initial_dynamic_scale(self) -> float:
        """First dynamic loss scale, ``2**initial_scale_power``."""
        return float(2**self.initial_scale_power)


class DeepSpeedBF16Config(DeepSpeedConfigModel):
    """``bf16`` section (also accepted as the legacy ``bfloat16``)."""

    _section: ClassVar[str] = "bf16"

    enabled: bool = False
    """Train with bf16 parameters (no loss scaling needed)."""
    immediate_grad_update: bool = False
    """Apply each gradient to the fp32 master copy as soon as it is ready."""
    check_grad_overflow: bool = True
    """Check gradients for inf/nan and skip the step on overflow."""
    bf16_master_weights_and_grads: bool = False
    """Keep master weights and gradients in bf16 instead of fp32."""
    bf16_optimizer_states: bool = False
    """Keep optimizer states in bf16 instead of fp32."""
