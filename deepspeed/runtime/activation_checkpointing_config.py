"""Config model for the ``activation_checkpointing`` section."""
from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from deepspeed.runtime.config_utils import DeepSpeedConfigModel

__all__ = ["DeepSpeedActivationCheckpointingConfig"]


class DeepSpeedActivationCheckpointingConfig(DeepSpeedConfigModel):
    """``activation_checkpointing`` section (read by ``deepspeed.checkpointing``)."""

    _section: ClassVar[str] = "activation_checkpointing"

    partition_activations: bool = False
    """Shard saved activations across model-parallel ranks."""
    contiguous_memory_optimization: bool = False
    """Copy checkpointed activations into one preallocated buffer to avoid fragmentation."""
    synchronize_checkpoint_boundary: bool = False
    """Synchronize the device at each checkpoint boundary (debugging / timing)."""
    profile: bool = False
    """Time the checkpointed forward and recompute."""
    cpu_checkpointing: bool = False
    """Move checkpointed activations to CPU (needs partition_activations)."""
    number_checkpoints: int | None = Field(None, ge=1)
    """Number of checkpoints expected per forward; sizes the contiguous buffer."""
