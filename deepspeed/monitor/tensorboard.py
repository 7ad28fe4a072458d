"""TensorBoard backend: scalars written with torch's SummaryWriter."""
from __future__ import annotations

import os
from typing import Any, Sequence

from deepspeed.monitor.base import DEFAULT_OUTPUT_PATH, Event, Monitor, event_step, event_value

__all__ = ["TensorBoardMonitor"]


class TensorBoardMonitor(Monitor):
    """Writes each event with ``add_scalar`` under ``output_path/job_name``.

    `tensorboard_config` is a parsed ``tensorboard`` section
    (`deepspeed.monitor.config.TensorBoardConfig`). Nothing is imported or
    created when it is disabled; an empty ``output_path`` means
    `DEFAULT_OUTPUT_PATH`.
    """

    def __init__(self, tensorboard_config: Any) -> None:
        super().__init__(tensorboard_config)
        self.enabled = bool(tensorboard_config.enabled)
        self.output_path = tensorboard_config.output_path or DEFAULT_OUTPUT_PATH
        self.job_name = tensorboard_config.job_name
        self.log_dir = os.path.join(self.output_path, self.job_name)
        # Created only when enabled, so a disabled monitor costs nothing and
        # does not need the tensorboard package.
        self.summary_writer = self._open_writer() if self.enabled else None

    def _open_writer(self) -> Any:
        # Imported here because tensorboard is an optional dependency and
        # loading it takes noticeable time.
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "the tensorboard monitor is enabled in the ds_config but the 'tensorboard' package is "
                "not installed: pip install tensorboard, or set tensorboard.enabled to false"
            ) from exc
        os.makedirs(self.log_dir, exist_ok=True)
        return SummaryWriter(log_dir=self.log_dir)

    def write_events(self, event_list: Sequence[Event]) -> None:
        if self.summary_writer is None:
            return
        for name, value, step in event_list:
            self.summary_writer.add_scalar(name, event_value(value), event_step(step))
        # Flushed per batch of events so that a crashed run still shows its curves.
        self.summary_writer.flush()

    def close(self) -> None:
        if self.summary_writer is not None:
            self.summary_writer.close()
            self.summary_writer = None
