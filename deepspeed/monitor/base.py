"""The writer interface shared by every monitor backend.

Kept apart from `monitor.py` so that the backends can subclass `Monitor`
while `MonitorMaster` (in `monitor.py`) imports the backends, without a cycle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence, Union

import torch

__all__ = ["Monitor", "Event", "DEFAULT_OUTPUT_PATH", "event_value", "event_step"]

#: One scalar to log: ``(name, value, step)``. The engine uses names like
#: ``Train/Samples/lr`` and step = ``global_samples``.
Event = tuple[str, Union[float, torch.Tensor], Union[int, torch.Tensor]]

#: Root directory used when a file-writing monitor's ``output_path`` is empty.
#: Relative to the working directory, like torch's own SummaryWriter default.
DEFAULT_OUTPUT_PATH = "runs"


def event_value(value: Any) -> float:
    """The event value as a Python float; accepts numbers and 1-element tensors."""
    if isinstance(value, torch.Tensor):
        return float(value.detach().item())
    return float(value)


def event_step(step: Any) -> int:
    """The event step as a Python int; accepts ints and 1-element tensors."""
    if isinstance(step, torch.Tensor):
        return int(step.item())
    return int(step)


class Monitor(ABC):
    """A destination for scalar training events."""

    def __init__(self, monitor_config: Any) -> None:
        # The parsed config section this writer was built from.
        self.monitor_config = monitor_config

    @abstractmethod
    def write_events(self, event_list: Sequence[Event]) -> None:
        """Record every ``(name, value, step)`` in `event_list`, in order."""

    def close(self) -> None:
        """Flush and release files or connections; the default has none."""
