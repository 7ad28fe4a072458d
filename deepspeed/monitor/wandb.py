"""Weights & Biases backend."""
from __future__ import annotations

import importlib
from typing import Any, Optional, Sequence

from deepspeed.monitor.base import Event, Monitor, event_step, event_value

__all__ = ["WandbMonitor"]


class WandbMonitor(Monitor):
    """Starts a run with ``wandb.init(project, group, entity=team)`` and logs each event.

    `wandb_config` is a parsed ``wandb`` section
    (`deepspeed.monitor.config.WandbConfig`). The wandb package is imported
    only when the section is enabled, since it is an optional dependency.
    The run is not finished on `close`: the user's script may keep logging
    to it after training.
    """

    def __init__(self, wandb_config: Any) -> None:
        super().__init__(wandb_config)
        self.enabled = bool(wandb_config.enabled)
        self.group = wandb_config.group
        self.team = wandb_config.team
        self.project = wandb_config.project
        # The imported wandb module; None while disabled.
        self._wandb: Any = None
        if self.enabled:
            self._wandb = _import_wandb()
            self._wandb.init(project=self.project, group=self.group, entity=self.team)

    def log(self, data: dict[str, Any], step: Optional[int] = None, commit: Optional[bool] = None) -> None:
        """Forward one ``wandb.log`` call (no-op while disabled)."""
        if self._wandb is not None:
            self._wandb.log(data, step=step, commit=commit)

    def write_events(self, event_list: Sequence[Event]) -> None:
        if self._wandb is None:
            return
        for name, value, step in event_list:
            self._wandb.log({name: event_value(value)}, step=event_step(step))


def _import_wandb() -> Any:
    try:
        return importlib.import_module("wandb")
    except ImportError as exc:
        raise ImportError(
            "the wandb monitor is enabled in the ds_config but the 'wandb' package is not installed: "
            "pip install wandb, or set wandb.enabled to false"
        ) from exc
