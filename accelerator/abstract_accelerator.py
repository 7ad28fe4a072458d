"""The accelerator interface: the device calls that training code makes.

DeepSpeed's interface has 65 abstract methods; this one keeps the calls user
scripts and our runtime actually make (spec §1 and §7), so a new device kind
is a small class. Concrete helpers that every device implements the same way
(op-builder lookup, `random()`) live here rather than being abstract.
"""
import importlib
from abc import ABC, abstractmethod
from typing import Any, ContextManager, Dict, List, MutableMapping, Optional, Sequence

import torch

__all__ = ["DeepSpeedAccelerator"]


class DeepSpeedAccelerator(ABC):
    """One device kind (cpu, cuda, ...) behind DeepSpeed's accelerator API."""

    def __init__(self) -> None:
        # `_name` and `_communication_backend_name` mirror DeepSpeed's private
        # attributes, which some third-party code reads directly.
        self._name: str = ""
        self._communication_backend_name: str = ""

    # ------------------------------------------------------------ devices
    @abstractmethod
    def is_synchronized_device(self) -> bool:
        """True when work runs eagerly, so streams and events are no-ops."""

    @abstractmethod
    def device_name(self, device_index: Optional[int] = None) -> str:
        """'cuda' or 'cuda:i' style name; 'cpu' for the CPU accelerator."""

    @abstractmethod
    def device(self, device_index: Optional[int] = None) -> Any:
        """The device object (or module) for `device_index`."""

    @abstractmethod
    def set_device(self, device_index: int) -> None: ...

    @abstractmethod
    def current_device(self) -> int: ...

    @abstractmethod
    def current_device_name(self) -> str: ...

    @abstractmethod
    def device_count(self) -> int: ...

    @abstractmethod
    def is_available(self) -> bool: ...

    @abstractmethod
    def synchronize(self, device_index: Optional[int] = None) -> None: ...

    # ------------------------------------------------------------ RNG
    def random(self) -> Any:
        """The torch RNG module; identical for all devices."""
        return torch.random

    @abstractmethod
    def manual_seed(self, seed: int) -> None: ...

    @abstractmethod
    def manual_seed_all(self, seed: int) -> None: ...

    @abstractmethod
    def get_rng_state(self, device_index: Optional[int] = None) -> torch.Tensor: ...

    @abstractmethod
    def set_rng_state(self, new_state: torch.Tensor, device_index: Optional[int] = None) -> None: ...

    @abstractmethod
    def initial_seed(self) -> int: ...

    # ------------------------------------------------------------ streams
    @property
    @abstractmethod
    def Stream(self) -> Any:
        """The stream class (a no-op class on synchronized devices)."""

    @abstractmethod
    def stream(self, stream: Any) -> ContextManager: ...

    @abstractmethod
    def current_stream(self, device_index: Optional[int] = None) -> Any: ...

    @abstractmethod
    def default_stream(self, device_index: Optional[int] = None) -> Any: ...

    @property
    @abstractmethod
    def Event(self) -> Any:
        """The event class (a no-op class on synchronized devices)."""

    # ------------------------------------------------------------ memory
    @abstractmethod
    def empty_cache(self) -> None: ...

    @abstractmethod
    def memory_allocated(self, device_index: Optional[int] = None) -> int: ...

    @abstractmethod
    def max_memory_allocated(self, device_index: Optional[int] = None) -> int: ...

    @abstractmethod
    def reset_peak_memory_stats(self, device_index: Optional[int] = None) -> None: ...

    @abstractmethod
    def memory_reserved(self, device_index: Optional[int] = None) -> int: ...

    @abstractmethod
    def max_memory_reserved(self, device_index: Optional[int] = None) -> int: ...

    @abstractmethod
    def total_memory(self, device_index: Optional[int] = None) -> int: ...

    @abstractmethod
    def available_memory(self, device_index: Optional[int] = None) -> int: ...

    # ------------------------------------------------------------ dtypes
    @abstractmethod
    def is_bf16_supported(self) -> bool: ...

    @abstractmethod
    def is_fp16_supported(self) -> bool: ...

    @abstractmethod
    def supported_dtypes(self) -> List[torch.dtype]: ...

    @abstractmethod
    def amp(self) -> Any:
        """The device's autocast module (`torch.cuda.amp`, `torch.cpu.amp`)."""

    # ------------------------------------------------------------ comm
    @abstractmethod
    def communication_backend_name(self) -> str:
        """torch.distributed backend for this device: 'nccl', 'gloo', 'ccl'."""

    # ------------------------------------------------------------ tensors
    @abstractmethod
    def pin_memory(self, tensor: torch.Tensor, align_bytes: int = 1) -> torch.Tensor: ...

    def is_pinned(self, tensor: torch.Tensor) -> bool:
        return tensor.is_pinned()

    @abstractmethod
    def on_accelerator(self, tensor: torch.Tensor) -> bool:
        """Whether `tensor` lives on this accelerator's device type."""

    # ------------------------------------------------------------ launcher
    @abstractmethod
    def visible_devices_envs(self) -> List[str]:
        """Env vars the launcher sets to restrict a rank's devices."""

    def set_visible_devices_envs(self, current_env: MutableMapping[str, str],
                                 local_accelerator_ids: Sequence[int]) -> None:
        """Restrict a rank to `local_accelerator_ids` through every visible-devices variable."""
        for env in self.visible_devices_envs():
            current_env[env] = ",".join(map(str, local_accelerator_ids))

    @abstractmethod
    def export_envs(self) -> List[str]:
        """Env-var prefixes the multi-node launcher forwards to every node."""

    # ------------------------------------------------------------ ops
    def get_op_builder(self, class_name: str) -> Optional[type]:
        """The builder class registered under `class_name`, or None.

        Looked up by both op name ('cpu_adam') and class name
        ('CPUAdamBuilder'), as DeepSpeed callers use both.
        """
        # Imported here, not at module top: op builders query the accelerator
        # when they build, so a top-level import would make the two packages
        # import each other.
        all_ops: Dict[str, type] = importlib.import_module("deepspeed.ops.op_builder").ALL_OPS
        if class_name in all_ops:
            return all_ops[class_name]
        for builder in all_ops.values():
            if getattr(builder, "__name__", None) == class_name:
                return builder
        return None

    def create_op_builder(self, class_name: str) -> Optional[Any]:
        """An instance of the builder for `class_name`, or None if unknown."""
        builder = self.get_op_builder(class_name)
        return None if builder is None else builder()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, backend={self._communication_backend_name!r})"
