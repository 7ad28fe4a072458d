"""What the DS-Chat steps report while they run: training.log, progress bars, scalars, metrics.

* `training_log(output_dir, args)`: rank 0's stdout is teed into
  `<output_dir>/training.log`, which starts with the step's arguments. DS-Chat's
  shell scripts did this with `| tee`; here it happens however the step is
  launched (a script, `python -m`, the `deepspeed` launcher, a test).
* `progress(iterable, desc)`: a tqdm bar on rank 0 only, drawn on stderr so
  that it never lands in training.log.
* `ScalarWriter`: TensorBoard scalars of the pipeline itself (step 3's
  `reward`, `actor_loss`, ... under `{tensorboard_path}/step3_tensorboard_logs`),
  written by rank 0. The engines' own events go through the ds_config's
  `tensorboard` section instead.
* `write_metrics` / `read_metrics`: each step's final numbers as JSON
  (`<output_dir>/metrics.json`), so runners such as the demo read numbers, not
  log lines.
"""
import contextlib
import io
import json
import os
import sys
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional, TextIO

from dschat.utils import is_rank_0

__all__ = ["training_log", "progress", "ScalarWriter", "write_metrics", "read_metrics", "METRICS_FILE", "LOG_FILE"]

LOG_FILE = "training.log"
METRICS_FILE = "metrics.json"


class _Tee(io.TextIOBase):
    """A text stream that writes to the original stream and to a log file."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        super().__init__()
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()
        self._log.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()


def _format_args(args: Any) -> str:
    items = vars(args).items() if hasattr(args, "__dict__") else dict(args).items()
    return "\n".join(f"  {key} = {value!r}" for key, value in sorted(items))


@contextlib.contextmanager
def training_log(output_dir: Optional[str], args: Any, title: str = "") -> Iterator[None]:
    """Tee rank 0's stdout into `<output_dir>/training.log` (appending) while the block runs.

    Nothing happens without an output folder or off rank 0. The file is
    appended to, so a resumed run keeps the log of the interrupted one.
    """
    if output_dir is None or not is_rank_0():
        yield
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, LOG_FILE), "a", encoding="utf-8", buffering=1) as log:
        log.write(f"===== {title or 'dschat'} arguments =====\n{_format_args(args)}\n")
        original = sys.stdout
        sys.stdout = _Tee(original, log)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stdout = original


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, initial: int = 0) -> Iterable:
    """`iterable` with a tqdm bar on rank 0 (stderr); unchanged elsewhere."""
    if not is_rank_0():
        return iterable
    from tqdm.auto import tqdm
    stream = sys.__stderr__
    # Under a launcher stderr is a pipe, where every refresh becomes a line of
    # the log; refresh rarely there.
    interactive = stream is not None and stream.isatty()
    return tqdm(iterable, desc=desc, total=total, initial=initial, file=stream, dynamic_ncols=True, leave=False,
                mininterval=0.1 if interactive else 30.0)


class ScalarWriter:
    """TensorBoard scalars written by rank 0 under `<root>/<name>`; a no-op when disabled or on other ranks."""

    def __init__(self, enabled: bool, root: str, name: str) -> None:
        self._writer = None
        if enabled and is_rank_0():
            from torch.utils.tensorboard import SummaryWriter
            self.log_dir = os.path.join(root, name)
            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = SummaryWriter(log_dir=self.log_dir)

    def add_scalars(self, values: Mapping[str, float], global_step: int) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(key, float(value), global_step=global_step)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_metrics(output_dir: Optional[str], metrics: Mapping[str, Any]) -> None:
    """Write (merge into) `<output_dir>/metrics.json` on rank 0."""
    if output_dir is None or not is_rank_0():
        return
    os.makedirs(output_dir, exist_ok=True)
    merged = dict(read_metrics(output_dir))
    merged.update(metrics)
    path = os.path.join(output_dir, METRICS_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(merged, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def read_metrics(output_dir: str) -> Dict[str, Any]:
    """What `write_metrics` wrote there ({} when nothing was)."""
    path = os.path.join(output_dir, METRICS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
