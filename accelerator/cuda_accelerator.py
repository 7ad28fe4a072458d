"""The CUDA accelerator: a thin layer over `torch.cuda` with NCCL.

Construction must not create a CUDA context: the launcher and forked test
ranks build an accelerator before choosing a device, and a context created
before `fork` breaks every child. Each method touches torch.cuda only when
called.
"""
from typing import Any, ContextManager, List, MutableMapping, Optional, Sequence

import torch

from .abstract_accelerator import DeepSpeedAccelerator

__all__ = ["CUDA_Accelerator"]


class CUDA_Accelerator(DeepSpeedAccelerator):
    """NVIDIA GPUs through torch.cuda."""

    def __init__(self) -> None:
        super().__init__()
        self._name = "cuda"
        self._communication_backend_name = "nccl"

    # ------------------------------------------------------------ devices
    def is_synchronized_device(self) -> bool:
        return False

    def device_name(self, device_index: Optional[int] = None) -> str:
        return "cuda" if device_index is None else f"cuda:{device_index}"

    def device(self, device_index: Optional[int] = None) -> Any:
        return torch.cuda.device(device_index)

    def set_device(self, device_index: int) -> None:
        torch.cuda.set_device(device_index)

    def current_device(self) -> int:
        return torch.cuda.current_device()

    def current_device_name(self) -> str:
        return f"cuda:{torch.cuda.current_device()}"

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def is_available(self) -> bool:
        return torch.cuda.is_available()

    def synchronize(self, device_index: Optional[int] = None) -> None:
        torch.cuda.synchronize(device_index)

    # ------------------------------------------------------------ RNG
    def manual_seed(self, seed: int) -> None:
        torch.cuda.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.cuda.manual_seed_all(seed)

    def get_rng_state(self, device_index: Optional[int] = None) -> torch.Tensor:
        return torch.cuda.get_rng_state() if device_index is None else torch.cuda.get_rng_state(device_index)

    def set_rng_state(self, new_state: torch.Tensor, device_index: Optional[int] = None) -> None:
        if device_index is None:
            torch.cuda.set_rng_state(new_state)
        else:
            torch.cuda.set_rng_state(new_state, device_index)

    def initial_seed(self) -> int:
        return torch.cuda.initial_seed()

    # ------------------------------------------------------------ streams
    @property
    def Stream(self) -> type:
        return torch.cuda.Stream

    def stream(self, stream: Any) -> ContextManager:
        return torch.cuda.stream(stream)

    def current_stream(self, device_index: Optional[int] = None) -> Any:
        return torch.cuda.current_stream(device_index)

    def default_stream(self, device_index: Optional[int] = None) -> Any:
        return torch.cuda.default_stream(device_index)

    @property
    def Event(self) -> type:
        return torch.cuda.Event

    # ------------------------------------------------------------ memory
    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def memory_allocated(self, device_index: Optional[int] = None) -> int:
        return torch.cuda.memory_allocated(device_index)

    def max_memory_allocated(self, device_index: Optional[int] = None) -> int:
        return torch.cuda.max_memory_allocated(device_index)

    def reset_peak_memory_stats(self, device_index: Optional[int] = None) -> None:
        torch.cuda.reset_peak_memory_stats(device_index)

    def memory_reserved(self, device_index: Optional[int] = None) -> int:
        return torch.cuda.memory_reserved(device_index)

    def max_memory_reserved(self, device_index: Optional[int] = None) -> int:
        return torch.cuda.max_memory_reserved(device_index)

    def total_memory(self, device_index: Optional[int] = None) -> int:
        index = torch.cuda.current_device() if device_index is None else device_index
        return torch.cuda.get_device_properties(index).total_memory

    def available_memory(self, device_index: Optional[int] = None) -> int:
        free, _total = torch.cuda.mem_get_info(device_index)
        return free

    # ------------------------------------------------------------ dtypes
    def is_bf16_supported(self) -> bool:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()

    def is_fp16_supported(self) -> bool:
        # Every GPU torch still supports (compute capability >= 5.0) has
        # usable fp16 arithmetic.
        return torch.cuda.is_available()

    def supported_dtypes(self) -> List[torch.dtype]:
        dtypes = [torch.float]
        if self.is_fp16_supported():
            dtypes.append(torch.half)
        if self.is_bf16_supported():
            dtypes.append(torch.bfloat16)
        return dtypes

    def amp(self) -> Any:
        return torch.cuda.amp

    # ------------------------------------------------------------ comm
    def communication_backend_name(self) -> str:
        return self._communication_backend_name

    # ------------------------------------------------------------ tensors
    def pin_memory(self, tensor: torch.Tensor, align_bytes: int = 1) -> torch.Tensor:
        return tensor.pin_memory()

    def on_accelerator(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cuda"

    # ------------------------------------------------------------ launcher
    def visible_devices_envs(self) -> List[str]:
        return ["CUDA_VISIBLE_DEVICES"]

    def export_envs(self) -> List[str]:
        return ["NCCL"]
