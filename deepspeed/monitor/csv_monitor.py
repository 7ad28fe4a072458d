"""CSV backend: one ``step,<value name>`` file per event name."""
from __future__ import annotations

import csv
import os
from typing import Any, Sequence

from deepspeed.monitor.base import DEFAULT_OUTPUT_PATH, Event, Monitor, event_step, event_value

__all__ = ["csvMonitor"]


def _file_stem(event_name: str) -> str:
    """File name (without ``.csv``) for an event: path separators and spaces become ``_``."""
    return event_name.replace("/", "_").replace(" ", "_")


class csvMonitor(Monitor):
    """Appends each event as a row of ``output_path/job_name/<name>.csv``.

    For ``Train/Samples/lr`` the file is ``Train_Samples_lr.csv`` with header
    ``step,lr``. Files are opened in append mode, so a resumed run continues
    them; the header is written only when a file is new or empty. An empty
    ``output_path`` means `DEFAULT_OUTPUT_PATH`.
    """

    def __init__(self, csv_config: Any) -> None:
        super().__init__(csv_config)
        self.enabled = bool(csv_config.enabled)
        self.output_path = csv_config.output_path or DEFAULT_OUTPUT_PATH
        self.job_name = csv_config.job_name
        self.log_dir = os.path.join(self.output_path, self.job_name)
        # Stems whose file already has a header; saves a stat per event.
        self.filenames: set[str] = set()
        if self.enabled:
            os.makedirs(self.log_dir, exist_ok=True)

    def write_events(self, event_list: Sequence[Event]) -> None:
        if not self.enabled:
            return
        rows: dict[str, list[tuple[str, int, float]]] = {}
        for name, value, step in event_list:
            rows.setdefault(_file_stem(name), []).append((name, event_step(step), event_value(value)))
        # One open per file per call, rows kept in event order within a file.
        for stem, file_rows in rows.items():
            path = os.path.join(self.log_dir, stem + ".csv")
            with open(path, "a", newline="") as f:
                writer = csv.writer(f)
                if stem not in self.filenames:
                    if f.tell() == 0:
                        writer.writerow(["step", file_rows[0][0].split("/")[-1]])
                    self.filenames.add(stem)
                for _, step, value in file_rows:
                    writer.writerow([step, value])
