"""Choosing the accelerator once per process.

Order: `DS_ACCELERATOR` if set (it must name a supported kind whose device is
present, else a clear error); otherwise cuda when a GPU is visible; otherwise
cpu. The choice is cached in a small holder object so every caller sees the
same instance; `set_accelerator` replaces it (tests, custom devices).
"""
import logging
import os
from typing import Callable, Dict, Optional

import torch

from .abstract_accelerator import DeepSpeedAccelerator
from .cpu_accelerator import CPU_Accelerator
from .cuda_accelerator import CUDA_Accelerator

__all__ = ["get_accelerator", "set_accelerator", "is_current_accelerator_supported", "SUPPORTED_ACCELERATOR_LIST"]

logger = logging.getLogger(__name__)

#: Accelerator kinds `DS_ACCELERATOR` may name.
SUPPORTED_ACCELERATOR_LIST = ["cpu", "cuda"]

_ENV_VAR = "DS_ACCELERATOR"


def _cuda_present() -> bool:
    # Both calls query the driver without creating a CUDA context.
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def _make_cuda() -> DeepSpeedAccelerator:
    if not _cuda_present():
        raise RuntimeError(f"{_ENV_VAR}=cuda, but torch sees no CUDA device (torch {torch.__version__}, "
                           f"torch.cuda.is_available()={torch.cuda.is_available()}). "
                           f"Unset {_ENV_VAR} or set it to 'cpu'.")
    return CUDA_Accelerator()


_FACTORIES: Dict[str, Callable[[], DeepSpeedAccelerator]] = {"cpu": CPU_Accelerator, "cuda": _make_cuda}


class _AcceleratorHolder:
    """Holds the process's accelerator; the one place the choice is stored."""

    def __init__(self) -> None:
        self.accelerator: Optional[DeepSpeedAccelerator] = None


_HOLDER = _AcceleratorHolder()


def _select() -> DeepSpeedAccelerator:
    requested = os.environ.get(_ENV_VAR)
    if requested:
        name = requested.strip().lower()
        if name not in _FACTORIES:
            raise ValueError(f"{_ENV_VAR}={requested!r} is not a supported accelerator; "
                             f"supported: {', '.join(SUPPORTED_ACCELERATOR_LIST)}")
        return _FACTORIES[name]()
    if _cuda_present():
        return CUDA_Accelerator()
    logger.warning("No CUDA device found; using the CPU accelerator (set %s to choose explicitly)", _ENV_VAR)
    return CPU_Accelerator()


def get_accelerator() -> DeepSpeedAccelerator:
    """The process's accelerator, chosen on first call and then cached."""
    if _HOLDER.accelerator is None:
        _HOLDER.accelerator = _select()
    return _HOLDER.accelerator


def set_accelerator(accel_obj: Optional[DeepSpeedAccelerator]) -> None:
    """Use `accel_obj` from now on; None clears the cache so the next
    `get_accelerator()` selects again (used by tests)."""
    if accel_obj is not None and not isinstance(accel_obj, DeepSpeedAccelerator):
        raise TypeError(f"expected a DeepSpeedAccelerator, got {type(accel_obj).__name__}")
    _HOLDER.accelerator = accel_obj


def is_current_accelerator_supported() -> bool:
    """Whether the current accelerator is one of SUPPORTED_ACCELERATOR_LIST."""
    return get_accelerator()._name in SUPPORTED_ACCELERATOR_LIST
