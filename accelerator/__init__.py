"""Device abstraction; installed as `deepspeed.accelerator`.

`get_accelerator()` returns the cpu or cuda implementation of
`DeepSpeedAccelerator`. Importing this package touches no device.
"""
from .abstract_accelerator import DeepSpeedAccelerator
from .cpu_accelerator import CPU_Accelerator
from .cuda_accelerator import CUDA_Accelerator
from .real_accelerator import (SUPPORTED_ACCELERATOR_LIST, get_accelerator, is_current_accelerator_supported,
                               set_accelerator)

__all__ = [
    "DeepSpeedAccelerator",
    "CPU_Accelerator",
    "CUDA_Accelerator",
    "get_accelerator",
    "set_accelerator",
    "is_current_accelerator_supported",
    "SUPPORTED_ACCELERATOR_LIST",
]
