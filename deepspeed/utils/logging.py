"""The package logger and rank-aware logging helpers."""
import logging
import sys
from typing import Iterable, Optional

__all__ = ["logger", "log_dist", "print_rank_0"]


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is at emit time, so redirections and tees see our lines too."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def _make_logger() -> logging.Logger:
    log = logging.getLogger("DeepSpeed")
    if not log.handlers:
        handler = _CurrentStdoutHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] [%(filename)s:%(lineno)d] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


#: configured once; handlers are attached lazily on first import of this module
logger = _make_logger()


def _rank() -> int:
    import torch.distributed as tdist  # torch only; avoids a cycle with deepspeed.comm
    return tdist.get_rank() if tdist.is_available() and tdist.is_initialized() else 0


def log_dist(message: str, ranks: Optional[Iterable[int]] = None, level: int = logging.INFO) -> None:
    """Log `message` on the given global ranks (all ranks if `ranks` is None or contains -1)."""
    rank = _rank()
    wanted = None if ranks is None else set(ranks)
    if wanted is None or -1 in wanted or rank in wanted:
        logger.log(level, f"[Rank {rank}] {message}")


def print_rank_0(message: str) -> None:
    if _rank() == 0:
        print(message, flush=True)
