"""The CPU accelerator: gloo (or oneCCL) over host memory.

CPU work is eager, so streams and events are no-op objects and
synchronize/empty_cache do nothing. Memory figures are process RSS from
psutil, which is the closest host analogue of "allocated by this process".
"""
import contextlib
import importlib
import importlib.util
import os
from typing import Any, ContextManager, List, MutableMapping, Optional, Sequence

import psutil
import torch

from .abstract_accelerator import DeepSpeedAccelerator

__all__ = ["CPU_Accelerator"]

_NUMA_DIR = "/sys/devices/system/node"


class _NoopStream:
    """Stands in for a device stream on an eager device; every call is a no-op."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def wait_event(self, event: Any) -> None:
        pass

    def record_event(self, event: Any = None) -> "_NoopEvent":
        return event if event is not None else _NoopEvent()

    def query(self) -> bool:
        return True


class _NoopEvent:
    """Stands in for a device event; it is always complete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        pass

    def wait(self, stream: Any = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def elapsed_time(self, end_event: "_NoopEvent") -> float:
        return 0.0


def _ccl_available() -> bool:
    # Importing the bindings is what registers the 'ccl' backend with
    # torch.distributed, so a successful import is the real test.
    if importlib.util.find_spec("oneccl_bindings_for_pytorch") is None:
        return False
    try:
        importlib.import_module("oneccl_bindings_for_pytorch")
    except ImportError:
        return False
    return True


def _numa_node_count() -> int:
    try:
        nodes = [d for d in os.listdir(_NUMA_DIR) if d.startswith("node") and d[4:].isdigit()]
    except OSError:
        return 1
    return max(1, len(nodes))


class CPU_Accelerator(DeepSpeedAccelerator):
    """Host CPU as a DeepSpeed accelerator."""

    def __init__(self) -> None:
        super().__init__()
        self._name = "cpu"
        self._communication_backend_name = "ccl" if _ccl_available() else "gloo"
        # psutil reports current RSS only; the peak is tracked here each time
        # a memory figure is read, and reset by reset_peak_memory_stats.
        self._peak_rss = 0

    # ------------------------------------------------------------ devices
    def is_synchronized_device(self) -> bool:
        return True

    def device_name(self, device_index: Optional[int] = None) -> str:
        return "cpu"

    def device(self, device_index: Optional[int] = None) -> torch.device:
        return torch.device("cpu")

    def set_device(self, device_index: int) -> None:
        pass

    def current_device(self) -> int:
        # DeepSpeed reports the local rank so per-rank bookkeeping keyed by
        # "device index" stays distinct across ranks on one host.
        return int(os.environ.get("LOCAL_RANK", "0"))

    def current_device_name(self) -> str:
        return "cpu"

    def device_count(self) -> int:
        local_size = os.environ.get("LOCAL_SIZE")
        if local_size:
            return int(local_size)
        return _numa_node_count()

    def is_available(self) -> bool:
        return True

    def synchronize(self, device_index: Optional[int] = None) -> None:
        pass

    # ------------------------------------------------------------ RNG
    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def get_rng_state(self, device_index: Optional[int] = None) -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(self, new_state: torch.Tensor, device_index: Optional[int] = None) -> None:
        torch.set_rng_state(new_state)

    def initial_seed(self) -> int:
        return torch.initial_seed()

    # ------------------------------------------------------------ streams
    @property
    def Stream(self) -> type:
        return _NoopStream

    def stream(self, stream: Any) -> ContextManager:
        return contextlib.nullcontext()

    def current_stream(self, device_index: Optional[int] = None) -> _NoopStream:
        return _NoopStream()

    def default_stream(self, device_index: Optional[int] = None) -> _NoopStream:
        return _NoopStream()

    @property
    def Event(self) -> type:
        return _NoopEvent

    # ------------------------------------------------------------ memory
    def _rss(self) -> int:
        rss = psutil.Process().memory_info().rss
        self._peak_rss = max(self._peak_rss, rss)
        return rss

    def empty_cache(self) -> None:
        pass

    def memory_allocated(self, device_index: Optional[int] = None) -> int:
        return self._rss()

    def max_memory_allocated(self, device_index: Optional[int] = None) -> int:
        self._rss()
        return self._peak_rss

    def reset_peak_memory_stats(self, device_index: Optional[int] = None) -> None:
        self._peak_rss = 0
        self._rss()

    def memory_reserved(self, device_index: Optional[int] = None) -> int:
        return self.memory_allocated(device_index)

    def max_memory_reserved(self, device_index: Optional[int] = None) -> int:
        return self.max_memory_allocated(device_index)

    def total_memory(self, device_index: Optional[int] = None) -> int:
        return psutil.virtual_memory().total

    def available_memory(self, device_index: Optional[int] = None) -> int:
        return psutil.virtual_memory().available

    # ------------------------------------------------------------ dtypes
    def is_bf16_supported(self) -> bool:
        return True

    def is_fp16_supported(self) -> bool:
        return True

    def supported_dtypes(self) -> List[torch.dtype]:
        return [torch.float, torch.bfloat16, torch.float16]

    def amp(self) -> Any:
        return torch.cpu.amp

    # ------------------------------------------------------------ comm
    def communication_backend_name(self) -> str:
        return self._communication_backend_name

    # ------------------------------------------------------------ tensors
    def pin_memory(self, tensor: torch.Tensor, align_bytes: int = 1) -> torch.Tensor:
        # Pinning only matters for host-to-device copies; there is no device.
        return tensor

    def on_accelerator(self, tensor: torch.Tensor) -> bool:
        return tensor.device.type == "cpu"

    # ------------------------------------------------------------ launcher
    def visible_devices_envs(self) -> List[str]:
        return ["CUDA_VISIBLE_DEVICES"]

    def export_envs(self) -> List[str]:
        return []
