"""`MonitorMaster`: fans training events out to every enabled backend."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from deepspeed.monitor.base import Event, Monitor
from deepspeed.monitor.comet import CometMonitor
from deepspeed.monitor.csv_monitor import csvMonitor
from deepspeed.monitor.tensorboard import TensorBoardMonitor
from deepspeed.monitor.wandb import WandbMonitor

__all__ = ["Monitor", "MonitorMaster"]


class MonitorMaster(Monitor):
    """The engine's single monitor: builds the enabled writers on rank 0 only.

    Only rank 0 creates files or remote runs, so logs are not duplicated per
    rank. `enabled` follows the config on every rank (any section enabled),
    letting callers skip building events when nothing is configured;
    `write_events` is a no-op on other ranks.

    Args:
        monitor_config: a `deepspeed.monitor.config.DeepSpeedMonitorConfig`.
        rank: this process's global rank.
    """

    def __init__(self, monitor_config: Any, rank: int = 0) -> None:
        super().__init__(monitor_config)
        self.rank = rank
        self.enabled = bool(monitor_config.enabled)
        self.tb_monitor: Optional[TensorBoardMonitor] = None
        self.csv_monitor: Optional[csvMonitor] = None
        self.wandb_monitor: Optional[WandbMonitor] = None
        self.comet_monitor: Optional[CometMonitor] = None
        if rank != 0:
            return
        if monitor_config.tensorboard.enabled:
            self.tb_monitor = TensorBoardMonitor(monitor_config.tensorboard)
        if monitor_config.csv_monitor.enabled:
            self.csv_monitor = csvMonitor(monitor_config.csv_monitor)
        if monitor_config.wandb.enabled:
            self.wandb_monitor = WandbMonitor(monitor_config.wandb)
        comet_config = getattr(monitor_config, "comet", None)
        if comet_config is not None and comet_config.enabled:
            self.comet_monitor = CometMonitor(comet_config)

    @property
    def writers(self) -> list[Monitor]:
        """The backends built on this rank (empty off rank 0)."""
        candidates = (self.tb_monitor, self.csv_monitor, self.wandb_monitor, self.comet_monitor)
        return [m for m in candidates if m is not None]

    def write_events(self, event_list: Sequence[Event]) -> None:
        """Send ``(name, value, step)`` events to every backend; values may be 0-dim tensors."""
        for writer in self.writers:
            writer.write_events(event_list)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
