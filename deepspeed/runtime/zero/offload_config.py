"""Config models for ZeRO offload: ``zero_optimization.offload_param`` / ``offload_optimizer``."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator

from deepspeed.runtime.config_utils import DeepSpeedConfigModel

__all__ = [
    "OffloadDeviceEnum",
    "DeepSpeedZeroOffloadParamConfig",
    "DeepSpeedZeroOffloadOptimizerConfig",
]


class OffloadDeviceEnum(str, enum.Enum):
    """Where offloaded tensors live."""

    none = "none"
    """No offload: tensors stay on the accelerator."""
    cpu = "cpu"
    """Pinned (or pageable) host memory."""
    nvme = "nvme"
    """Files under ``nvme_path``, staged through host buffers."""


def _normalise_device(value: Any) -> Any:
    # JSON null and upper-case spellings ("CPU") mean the obvious thing.
    if value is None:
        return OffloadDeviceEnum.none.value
    if isinstance(value, str):
        return value.lower()
    return value


class DeepSpeedZeroOffloadParamConfig(DeepSpeedConfigModel):
    """``offload_param``: where ZeRO-3 keeps parameter shards between uses."""

    _section: ClassVar[str] = "offload_param"

    device: OffloadDeviceEnum = "none"  # type: ignore[assignment]  # stored as the enum value
    """Offload target; "none" disables parameter offload."""
    nvme_path: Path | None = None
    """Directory for the swap files when device is "nvme"."""
    buffer_count: int = Field(5, ge=0)
    """Host staging buffers for NVMe swapping."""
    buffer_size: int = Field(100_000_000, ge=0)
    """Elements per staging buffer."""
    max_in_cpu: int = Field(1_000_000_000, ge=0)
    """Elements kept in host memory when NVMe offload is on."""
    pin_memory: bool = True
    """Use page-locked host memory (faster copies, more host RAM pressure)."""

    @field_validator("device", mode="before")
    @classmethod
    def _device_spelling(cls, value: Any) -> Any:
        return _normalise_device(value)


class DeepSpeedZeroOffloadOptimizerConfig(DeepSpeedConfigModel):
    """``offload_optimizer``: where optimizer states and the optimizer step live."""

    _section: ClassVar[str] = "offload_optimizer"

    device: OffloadDeviceEnum = "none"  # type: ignore[assignment]  # stored as the enum value
    """Offload target; "none" disables optimizer offload."""
    nvme_path: Path | None = None
    """Directory for the swap files when device is "nvme"."""
    buffer_count: int = Field(4, ge=0)
    """Host staging buffers for NVMe swapping of optimizer states."""
    pin_memory: bool = True
    """Use page-locked host memory for offloaded states and gradients."""
    pipeline_read: bool = False
    """Overlap reading the next sub-group's states from NVMe with the step."""
    pipeline_write: bool = False
    """Overlap writing states back to NVMe with the step."""
    fast_init: bool = False
    """Create NVMe swap files lazily for a faster start."""
    ratio: float = Field(1.0, ge=0.0, le=1.0)
    """Fraction of the optimizer step offloaded; values below 1 need ZeRO stage 3."""

    @field_validator("device", mode="before")
    @classmethod
    def _device_spelling(cls, value: Any) -> Any:
        return _normalise_device(value)

    @property
    def pipeline(self) -> bool:
        """True when NVMe reads or writes are pipelined with the step."""
        return self.pipeline_read or self.pipeline_write
