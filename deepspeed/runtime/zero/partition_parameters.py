"""Public ZeRO-3 entry points: `Init`, `GatheredParameters`, and the parameter enums.

These names are imported from here by transformers, DS-Chat and TRL
(`deepspeed.runtime.zero.partition_parameters.ZeroParamStatus`, ...), and
re-exported from `deepspeed.zero`.
"""
import functools
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch

from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.comm import groups
from deepspeed.runtime.config import DeepSpeedConfig, load_config_source
from deepspeed.runtime.zero.collectives import gather_params
from deepspeed.runtime.zero.param import ZeroParamState, ZeroParamStatus, ZeroParamType, is_zero_param

__all__ = ["Init", "GatheredParameters", "ZeroParamStatus", "ZeroParamType", "register_external_parameter",
           "unregister_external_parameter", "partition_module", "zero_wrapper_for_fp_tensor_constructor"]

# transformers' `prevent_arange_dtype_change` patches these two names; our Init
# does not rewrite tensor constructors (parameters are cast when partitioned),
# so the patch is harmless.
_orig_torch_arange = torch.arange


def zero_wrapper_for_fp_tensor_constructor(fn: Callable, target_fp_dtype: torch.dtype, target_device=None) -> Callable:
    """Wrap a tensor constructor so floating results get `target_fp_dtype` (kept for API compatibility)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        tensor = fn(*args, **kwargs)
        return tensor.to(target_fp_dtype) if tensor.is_floating_point() else tensor

    return wrapped


def partition_module(module: torch.nn.Module, group=None, dtype: Optional[torch.dtype] = None,
                     persistence_threshold: int = 100_000, model_persistence_threshold: int = 2**63 - 1,
                     shard_device: Optional[torch.device] = None) -> List[torch.nn.Parameter]:
    """Partition every not-yet-partitioned parameter of `module` (tied ones once).

    Rank 0's values are broadcast first so every rank shards the same tensor.
    Small parameters (`ds_numel <= persistence_threshold`, within the
    `model_persistence_threshold` budget) persist: they stay whole.
    """
    group = group if group is not None else groups.get_data_parallel_group()
    src = dist.get_global_rank(group, 0) if dist.get_world_size(group=group) > 1 else None
    persistent_budget = model_persistence_threshold - sum(
        p.ds_numel for p in module.parameters() if is_zero_param(p) and p.ds_persist)
    converted = []
    for p in module.parameters():
        if is_zero_param(p):
            continue
        if src is not None:
            dist.broadcast(p.data, src=src, group=group)
        persist = p.numel() <= persistence_threshold and p.numel() <= persistent_budget
        if persist:
            persistent_budget -= p.numel()
        ZeroParamState(p, group, persist, shard_device=shard_device, dtype=dtype)
        converted.append(p)
    return converted


def register_external_parameter(module: torch.nn.Module, parameter: torch.nn.Parameter) -> None:
    """Declare that `module`'s forward uses `parameter`, which belongs to another module."""
    if not isinstance(parameter, torch.nn.Parameter):
        raise TypeError("register_external_parameter expects an nn.Parameter")
    if not hasattr(module, "_ds_external_params"):
        module._ds_external_params = {}
    module._ds_external_params[id(parameter)] = parameter
    if is_zero_param(parameter):
        parameter.ds_external = True


def unregister_external_parameter(module: torch.nn.Module, parameter: torch.nn.Parameter) -> None:
    getattr(module, "_ds_external_params", {}).pop(id(parameter), None)


class GatheredParameters:
    """Temporarily gather ZeRO-3 parameters (spec §1).

    Non-ZeRO parameters are ignored; parameters are de-duplicated and
    ordered by `ds_id` so every rank issues the same collectives. On exit,
    with `modifier_rank=r` the values are broadcast from rank r and the
    shards rewritten; with `modifier_rank=None` nothing is written back.
    """

    def __init__(self, params: Union[torch.nn.Parameter, Iterable[torch.nn.Parameter]], modifier_rank: Optional[int] = None,
                 fwd_module: Optional[torch.nn.Module] = None, enabled: bool = True) -> None:
        if isinstance(params, torch.Tensor):
            params = [params]
        unique: Dict[int, torch.nn.Parameter] = {}
        for p in params if params is not None else []:
            if is_zero_param(p):
                unique[p.ds_id] = p
        self.params = [unique[k] for k in sorted(unique)]
        self.enabled = enabled and bool(self.params)
        self.modifier_rank = modifier_rank
        self.fwd_module = fwd_module
        self._gathered: List[torch.nn.Parameter] = []

    def __enter__(self):
        if not self.enabled:
            return self
        for p in self.params:
            if p.ds_status == ZeroParamStatus.INFLIGHT:
                p.ds_state.coordinator.gather_now([p])
        missing = [p for p in self.params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
        if missing:
            from_group: Dict[int, List[torch.nn.Parameter]] = {}
            for p in missing:
                from_group.setdefault(id(p.ds_process_group), []).append(p)
            for group_params in from_group.values():
                gather_params(group_params, async_op=False)
        self._gathered = missing
        if self.fwd_module is not None:
            for p in self.params:
                register_external_parameter(self.fwd_module, p)
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self.modifier_rank is not None:
            for p in self.params:
                group = p.ds_process_group
                src = dist.get_global_rank(group, self.modifier_rank) if dist.get_world_size(group=group) > 1 else None
                if src is not None:
                    dist.broadcast(p.data, src=src, group=group)
                p.ds_state.update_shard_from_full()
        for p in self._gathered:
            if not p.ds_persist and not p.ds_active_sub_modules:
                p.ds_state.release()
        self._gathered = []


class Init:
    """Partition parameters as each module finishes construction (spec §1 `zero.Init`).

    Every `nn.Module` subclass's `__init__` is wrapped while the context is
    active; when a module's own `__init__` returns, each of its parameters
    that is not yet partitioned is broadcast from rank 0, cast to the target
    dtype and sharded, so no rank ever holds more than one module's full
    parameters.
    """

    def __init__(self, module: Optional[torch.nn.Module] = None, data_parallel_group=None,
                 mem_efficient_linear: bool = True, remote_device: Optional[str] = None, pin_memory: bool = False,
                 config_dict_or_path: Any = None, config: Any = None, enabled: bool = True,
                 dtype: Optional[torch.dtype] = None, mpu=None, zero_param_parallel_group=None,
                 zero_quantized_weights: bool = False, zero_quantized_nontrainable_weights: bool = False,
                 sequence_data_parallel_group=None, param_swapper=None) -> None:
        self.enabled = enabled
        if not enabled:
            return
        dist.init_distributed()
        source = config_dict_or_path if config_dict_or_path is not None else config
        ds_config = DeepSpeedConfig(load_config_source(source), mpu=mpu,
                                    world_size=groups.get_data_parallel_world_size(mpu)) if source is not None else None
        self.group = data_parallel_group or groups.get_data_parallel_group(mpu)
        self.dtype = dtype or self._dtype_from(ds_config)
        zc = ds_config.zero_config if ds_config is not None else None
        self.persistence_threshold = int(zc.param_persistence_threshold) if zc else 100_000
        self.model_persistence_threshold = int(zc.model_persistence_threshold) if zc else 2**63 - 1
        offload = remote_device if remote_device is not None else (zc.offload_param_device if zc else "none")
        if offload == "nvme":
            raise NotImplementedError("zero.Init(remote_device='nvme') is not available in this build")
        self.shard_device = torch.device("cpu") if offload == "cpu" else None
        self._patched: Dict[type, Callable] = {}
        if module is not None:
            self._partition(module)

    @staticmethod
    def _dtype_from(ds_config: Optional[DeepSpeedConfig]) -> torch.dtype:
        if ds_config is None:
            return torch.half if get_accelerator().is_fp16_supported() else torch.float32
        if ds_config.fp16_enabled:
            return torch.half
        if ds_config.bfloat16_enabled:
            return torch.bfloat16
        return torch.float32

    def _partition(self, module: torch.nn.Module) -> None:
        partition_module(module, self.group, self.dtype, self.persistence_threshold, self.model_persistence_threshold,
                         self.shard_device)

    def _wrap_class(self, cls: type) -> None:
        original = cls.__dict__.get("__init__")
        if original is None or cls in self._patched:
            return
        context = self

        @functools.wraps(original)
        def init_then_partition(module, *args, **kwargs):
            original(module, *args, **kwargs)
            if _init_owner(type(module)) is cls:
                context._partition(module)

        self._patched[cls] = original
        cls.__init__ = init_then_partition

    def __enter__(self):
        if not self.enabled:
            return self
        for cls in _all_subclasses(torch.nn.Module):
            self._wrap_class(cls)
        self._orig_init_subclass = torch.nn.Module.__init_subclass__
        context = self

        def init_subclass(cls, **kwargs):
            super(torch.nn.Module, cls).__init_subclass__(**kwargs)
            context._wrap_class(cls)

        torch.nn.Module.__init_subclass__ = classmethod(init_subclass)
        return self

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        for cls, original in self._patched.items():
            cls.__init__ = original
        self._patched.clear()
        torch.nn.Module.__init_subclass__ = self._orig_init_subclass


def _init_owner(cls: type) -> type:
    """The most-derived class in `cls`'s MRO that defines `__init__`: its __init__ finishes last."""
    return next(c for c in cls.__mro__ if "__init__" in c.__dict__)


def _all_subclasses(cls: type) -> List[type]:
    out, stack = [], [cls]
    while stack:
        for sub in stack.pop().__subclasses__():
            out.append(sub)
            stack.append(sub)
    return out
