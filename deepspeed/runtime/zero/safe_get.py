"""`safe_get_full_fp32_param` / `safe_get_full_grad` / `safe_get_full_optimizer_state`.

Collective: every rank of the data-parallel group must call them for the same
parameter. Each ZeRO optimizer records, on every trainable parameter, where
its fp32 values live in this rank's master partition (`param._ds_hp`):

* stages 0-2: `("flat", optimizer, group_index, bucket, offset_in_bucket)` —
  the bucket's chunk is all-gathered and the parameter's slice cut out;
* stage 3: `("shard", optimizer, group_index, slot)` — the parameter's own
  shard is all-gathered and the padding dropped.
"""
from typing import Callable, Optional

import torch

from deepspeed import comm as dist

__all__ = ["safe_get_full_fp32_param", "safe_get_full_grad", "safe_get_full_optimizer_state"]


def _gather(param: torch.nn.Parameter, pick: Callable[[object, int], Optional[torch.Tensor]]) -> Optional[torch.Tensor]:
    """pick(optimizer, group_index) -> the flat fp32 tensor shaped like that group's master."""
    hp = getattr(param, "_ds_hp", None)
    if hp is None:
        return None
    kind, optimizer, gi = hp[0], hp[1], hp[2]
    source = pick(optimizer, gi)
    if source is None:
        return None
    world = optimizer.dp_world
    if kind == "flat":
        bucket, offset = hp[3], hp[4]
        local = source.narrow(0, bucket.partition_offset, bucket.chunk_numel)
        sharded = optimizer.shard_world > 1
        full = _all_gather(local, optimizer.dp_group, world) if sharded else local
        return full.narrow(0, offset, param.numel()).view_as(param).clone()
    slot = hp[3]
    local = source.narrow(0, slot, param.ds_state.shard_numel)
    full = _all_gather(local, optimizer.dp_group, world)
    return full[:param.ds_numel].view(param.ds_shape).clone()


def _all_gather(local: torch.Tensor, group, world: int) -> torch.Tensor:
    if world == 1:
        return local
    out = torch.empty(local.numel() * world, dtype=local.dtype, device=local.device)
    dist.all_gather_into_tensor(out, local.contiguous(), group=group)
    return out


def safe_get_full_fp32_param(param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """The full fp32 master value of `param` (None if no ZeRO optimizer owns it)."""
    return _gather(param, lambda opt, gi: opt.master_partitions[gi].detach())


def safe_get_full_grad(param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """The full reduced fp32 gradient of `param` (loss-scaled under fp16), between backward and step."""

    def pick(opt, gi):
        opt._finish_reduction()
        return opt.master_partitions[gi].grad

    return _gather(param, pick)


def safe_get_full_optimizer_state(param: torch.nn.Parameter, optim_state_key: str) -> Optional[torch.Tensor]:
    """The full value of optimizer state `optim_state_key` (e.g. "exp_avg") for `param`."""

    def pick(opt, gi):
        state = opt.optimizer.state.get(opt.master_partitions[gi], {})
        value = state.get(optim_state_key)
        return value if torch.is_tensor(value) and value.numel() == opt.master_partitions[gi].numel() else None

    return _gather(param, pick)
