"""Per-parameter ZeRO-3 state: the `ds_*` contract and its state machine.

[Note: the ZeRO-3 parameter contract]
transformers, peft, TRL and DS-Chat read these attributes straight off an
`nn.Parameter`, so they are plain attributes (not properties):

* `ds_id` (global counter), `ds_shape`, `ds_numel` (unpadded original),
* `ds_tensor`: this rank's flat shard, `ceil(numel / world)` elements,
  with `.ds_numel` (the shard's element count) and `.status`,
* `ds_status`: a `ZeroParamStatus`,
* `ds_persist`, `ds_active_sub_modules`, `ds_process_group`,
  `ds_zero_partition_rank`, `ds_zero_partition_world_size`, `ds_param_type`,
* `all_gather()`, `partition()`, `ds_summary()` methods bound per parameter.

While NOT_AVAILABLE, `param.data` is an empty tensor. Exactly one object,
the parameter's `ZeroParamState` (`param.ds_state`), changes these
attributes; each transition is one method named after it.
"""
import itertools
from enum import Enum
from typing import Dict, Optional

import torch

from deepspeed import comm as dist
from deepspeed.runtime.zero.collectives import gather_params

__all__ = ["ZeroParamStatus", "ZeroParamType", "ZeroParamState", "is_zero_param", "shard_numel"]


class ZeroParamStatus(Enum):
    #: the full tensor is in `param.data`
    AVAILABLE = 1
    #: only the shard exists; `param.data` is empty
    NOT_AVAILABLE = 2
    #: an all-gather is in flight; wait on the coordinator's registry before use
    INFLIGHT = 3


class ZeroParamType(Enum):
    NORMAL = 1
    PARTITIONED = 2
    REMOTE = 3


class _IdCounter:
    """Hands out `ds_id`s; one per process, in creation order (the same on every rank)."""

    def __init__(self) -> None:
        self._ids = itertools.count()

    def next(self) -> int:
        return next(self._ids)


_DS_IDS = _IdCounter()


def is_zero_param(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_state")


def shard_numel(numel: int, world: int) -> int:
    return (numel + world - 1) // world


class ZeroParamState:
    """Owns one parameter's shard and the AVAILABLE / INFLIGHT / NOT_AVAILABLE transitions."""

    def __init__(self, param: torch.nn.Parameter, group, persist: bool, shard_device: Optional[torch.device] = None,
                 dtype: Optional[torch.dtype] = None) -> None:
        self.param = param
        self.group = group
        self.world = dist.get_world_size(group=group)
        self.rank = dist.get_rank(group=group)
        full = param.data if dtype is None or not param.is_floating_point() else param.data.to(dtype)
        self.numel = full.numel()
        self.shard_numel = shard_numel(self.numel, self.world)
        self.dtype = full.dtype
        self.compute_device = full.device
        # Only this rank's slice is copied: no padded full-size temporary.
        shard = torch.zeros(self.shard_numel, dtype=full.dtype, device=shard_device or full.device)
        start = min(self.rank * self.shard_numel, self.numel)
        end = min(start + self.shard_numel, self.numel)
        shard[:end - start].copy_(full.reshape(-1)[start:end])
        shard.ds_numel = self.shard_numel
        shard.status = ZeroParamStatus.NOT_AVAILABLE
        shard.final_location = shard.device
        # Attributes of the public contract (see the note above).
        param.ds_state = self
        param.ds_id = _DS_IDS.next()
        param.ds_shape = full.shape
        param.ds_numel = self.numel
        param.ds_tensor = shard
        param.ds_persist = persist
        param.ds_active_sub_modules = set()
        param.ds_process_group = group
        param.ds_zero_partition_rank = self.rank
        param.ds_zero_partition_world_size = self.world
        param.ds_param_type = ZeroParamType.PARTITIONED
        param.ds_external = False
        param.all_gather = self._bound_all_gather
        param.partition = self._bound_partition
        param.ds_summary = self.summary
        param.padding_size = lambda: self.shard_numel * self.world - self.numel
        param.partition_numel = lambda: self.shard_numel
        param.aligned_size = lambda: self.shard_numel * self.world
        self._set_status(ZeroParamStatus.AVAILABLE)
        if persist:
            param.data = full
        else:
            self.release()

    # ---------------------------------------------------------- transitions
    def _set_status(self, status: ZeroParamStatus) -> None:
        self.param.ds_status = status
        self.param.ds_tensor.status = status

    def mark_inflight(self) -> None:
        """An all-gather for this parameter was launched; the coordinator holds its handle."""
        self._set_status(ZeroParamStatus.INFLIGHT)

    def become_available(self, full_flat: torch.Tensor) -> None:
        """Install the gathered value. full_flat: (>= numel,) in the compute dtype."""
        self.param.data = full_flat[:self.numel].view(self.param.ds_shape)
        self._set_status(ZeroParamStatus.AVAILABLE)

    def release(self) -> None:
        """Drop the full tensor; only the shard remains."""
        self.param.data = torch.empty(0, dtype=self.dtype, device=self.compute_device)
        self._set_status(ZeroParamStatus.NOT_AVAILABLE)

    def update_shard_from_full(self) -> None:
        """Re-partition after an edit of the gathered value (GatheredParameters' modifier)."""
        flat = self.param.data.reshape(-1)
        start = self.rank * self.shard_numel
        end = min(start + self.shard_numel, self.numel)
        shard = self.param.ds_tensor
        shard.zero_()
        if end > start:
            shard[:end - start].copy_(flat[start:end])

    def padded_flat(self, tensor: torch.Tensor) -> torch.Tensor:
        """A full-size tensor (e.g. a gradient) flattened and zero-padded to world * shard_numel."""
        out = torch.zeros(self.shard_numel * self.world, dtype=tensor.dtype, device=tensor.device)
        out[:self.numel].copy_(tensor.reshape(-1))
        return out

    # ------------------------------------------------------------- helpers
    def summary(self) -> Dict:
        p = self.param
        return {
            "id": p.ds_id,
            "status": p.ds_status.name,
            "numel": p.numel(),
            "ds_numel": p.ds_numel,
            "shape": tuple(p.shape),
            "ds_shape": tuple(p.ds_shape),
            "requires_grad": p.requires_grad,
            "grad_shape": tuple(p.grad.shape) if p.grad is not None else None,
            "persist": p.ds_persist,
            "active_sub_modules": sorted(p.ds_active_sub_modules),
            "ds_tensor.shape": tuple(p.ds_tensor.shape),
        }

    def _bound_all_gather(self, param_list=None, async_op: bool = False, hierarchy: int = 0):
        params = param_list if param_list is not None else [self.param]
        return gather_params([p for p in params if p.ds_status != ZeroParamStatus.AVAILABLE], async_op=async_op)

    def _bound_partition(self, param_list=None, has_been_updated: bool = False) -> None:
        for p in param_list if param_list is not None else [self.param]:
            if has_been_updated:
                p.ds_state.update_shard_from_full()
            if not p.ds_persist:
                p.ds_state.release()
