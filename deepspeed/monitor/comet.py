"""Comet ML backend."""
from __future__ import annotations

import importlib
from typing import Any, Sequence

from deepspeed.monitor.base import Event, Monitor, event_step, event_value

__all__ = ["CometMonitor"]


class CometMonitor(Monitor):
    """Logs events as Comet metrics, each name at most once per ``samples_log_interval`` samples.

    `comet_config` is a parsed ``comet`` section
    (`deepspeed.monitor.config.CometConfig`). comet_ml is imported only when
    the section is enabled. Throttling is per event name: the first event of a
    name is logged, later ones only once the step (a sample count) has moved
    at least ``samples_log_interval`` past the last logged one, because Comet
    rate-limits clients that log every micro-step.
    """

    def __init__(self, comet_config: Any) -> None:
        super().__init__(comet_config)
        self.enabled = bool(comet_config.enabled)
        self.samples_log_interval = int(comet_config.samples_log_interval)
        # Step at which each event name was last sent.
        self._last_logged: dict[str, int] = {}
        # The comet_ml experiment; None while disabled.
        self.experiment: Any = None
        if self.enabled:
            comet_ml = _import_comet()
            self.experiment = comet_ml.start(
                api_key=comet_config.api_key,
                project=comet_config.project,
                workspace=comet_config.workspace,
                experiment_key=comet_config.experiment_key,
                mode=comet_config.mode,
                online=comet_config.online,
            )
            if comet_config.experiment_name is not None:
                self.experiment.set_name(comet_config.experiment_name)

    def _due(self, name: str, step: int) -> bool:
        last = self._last_logged.get(name)
        if last is not None and step - last < self.samples_log_interval:
            return False
        self._last_logged[name] = step
        return True

    def write_events(self, event_list: Sequence[Event]) -> None:
        if self.experiment is None:
            return
        for name, value, step in event_list:
            step = event_step(step)
            if self._due(name, step):
                self.experiment.log_metric(name, event_value(value), step=step)


def _import_comet() -> Any:
    try:
        return importlib.import_module("comet_ml")
    except ImportError as exc:
        raise ImportError(
            "the comet monitor is enabled in the ds_config but the 'comet_ml' package is not installed: "
            "pip install comet_ml, or set comet.enabled to false"
        ) from exc
