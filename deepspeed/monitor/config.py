"""Config models for the training monitors (TensorBoard, CSV, W&B, Comet).

Each monitor is its own top-level ds_config section (``tensorboard``,
``csv_monitor``, ``wandb``, ``comet``); `DeepSpeedMonitorConfig` groups them so
the monitor code receives one parsed object.
"""
from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from deepspeed.runtime.config_utils import DeepSpeedConfigModel

__all__ = [
    "TensorBoardConfig",
    "CSVConfig",
    "WandbConfig",
    "CometConfig",
    "DeepSpeedMonitorConfig",
    "get_monitor_config",
]


class TensorBoardConfig(DeepSpeedConfigModel):
    """``tensorboard`` section: scalars go to ``output_path/job_name``."""

    _section: ClassVar[str] = "tensorboard"

    enabled: bool = False
    """Write TensorBoard event files."""
    output_path: str = ""
    """Directory for the event files; empty lets the writer pick its default."""
    job_name: str = "DeepSpeedJobName"
    """Sub-directory of `output_path` for this run."""


class CSVConfig(DeepSpeedConfigModel):
    """``csv_monitor`` section: one CSV file per event name under ``output_path/job_name``."""

    _section: ClassVar[str] = "csv_monitor"

    enabled: bool = False
    """Write CSV files."""
    output_path: str = ""
    """Directory for the CSV files; empty lets the writer pick its default."""
    job_name: str = "DeepSpeedJobName"
    """Sub-directory of `output_path` for this run."""


class WandbConfig(DeepSpeedConfigModel):
    """``wandb`` section: arguments for ``wandb.init``."""

    _section: ClassVar[str] = "wandb"

    enabled: bool = False
    """Log to Weights & Biases."""
    group: str | None = None
    """``wandb.init(group=...)``."""
    team: str | None = None
    """``wandb.init(entity=...)``."""
    project: str = "deepspeed"
    """``wandb.init(project=...)``."""


class CometConfig(DeepSpeedConfigModel):
    """``comet`` section: arguments for a Comet ML experiment."""

    _section: ClassVar[str] = "comet"

    enabled: bool = False
    """Log to Comet ML."""
    samples_log_interval: int = Field(100, ge=1)
    """Log every this many samples."""
    project: str | None = None
    """Comet project name."""
    workspace: str | None = None
    """Comet workspace."""
    api_key: str | None = None
    """API key; None lets comet_ml read its own configuration."""
    experiment_name: str | None = None
    """Display name of the experiment."""
    experiment_key: str | None = None
    """Key of an existing experiment to continue."""
    online: bool | None = None
    """False logs offline."""
    mode: str | None = None
    """comet_ml start mode ("get", "create", "get_or_create")."""


class DeepSpeedMonitorConfig(DeepSpeedConfigModel):
    """All monitor sections of a ds_config, parsed together."""

    _section: ClassVar[str] = ""

    tensorboard: TensorBoardConfig = Field(default_factory=TensorBoardConfig)
    csv_monitor: CSVConfig = Field(default_factory=CSVConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    comet: CometConfig = Field(default_factory=CometConfig)

    @property
    def enabled(self) -> bool:
        """True when any monitor is enabled."""
        return any(m.enabled for m in (self.tensorboard, self.csv_monitor, self.wandb, self.comet))


#: The top-level ds_config keys that belong to the monitor.
MONITOR_SECTIONS: tuple[str, ...] = ("tensorboard", "csv_monitor", "wandb", "comet")


def get_monitor_config(param_dict: dict[str, Any]) -> DeepSpeedMonitorConfig:
    """Build the monitor config from a whole ds_config dict (other keys are ignored)."""
    sections = {k: param_dict[k] for k in MONITOR_SECTIONS if param_dict.get(k) is not None}
    return DeepSpeedMonitorConfig(**sections)
