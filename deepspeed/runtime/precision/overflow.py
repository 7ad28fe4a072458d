"""Inf/NaN detection for gradients, locally and across ranks.

A step must be skipped on every rank if any rank saw a non-finite gradient,
so the check is split in two: `local_overflow` reduces this rank's tensors to
one flag *without* a host sync (it can be queued behind the backward), and
`global_overflow` takes the MAX of the flags over the group and syncs once.

[Note: overflow reduction]
Each tensor is reduced with `torch.aminmax`: a tensor is finite exactly when
its minimum and maximum are, and aminmax propagates NaN (documented torch
behaviour), so this is exact, including for finite values near the dtype's
maximum where a sum-based check (``t.float().sum()``) gives false positives.
It also does not materialise a boolean mask. Measured on this 2-core CPU over
32 tensors (~170M elements), per call:

==========  =========  ==========  ==================  ===================
dtype       aminmax    sum(fp32)   isfinite().all()    _foreach_norm(inf)
==========  =========  ==========  ==================  ===================
fp32        21 ms      23 ms       726 ms              224 ms
fp16        11 ms      176 ms      307 ms              230 ms
bf16        13 ms      169 ms      334 ms              248 ms
==========  =========  ==========  ==================  ===================

The per-tensor min/max pairs are stacked per (device, dtype) and checked
with one `isfinite` reduction, so the result stays on the device.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch

from deepspeed import comm as dist

__all__ = ["has_inf_or_nan", "local_overflow", "global_overflow"]


def _group_extremes(tensors: Iterable[Optional[torch.Tensor]]) -> dict[tuple, list[torch.Tensor]]:
    """Min and max of every non-empty floating tensor, keyed by (device, dtype).

    None entries (parameters without a gradient), empty tensors and integer
    tensors cannot hold inf/nan and are skipped.
    """
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        if t is None or t.numel() == 0 or not (t.is_floating_point() or t.is_complex()):
            continue
        if t.is_complex():
            t = torch.view_as_real(t)
        lo, hi = torch.aminmax(t.detach())
        groups.setdefault((t.device, t.dtype), []).extend((lo, hi))
    return groups


def local_overflow(tensors: Iterable[Optional[torch.Tensor]]) -> torch.Tensor:
    """0-dim float32 tensor: 1.0 if any of `tensors` holds inf/nan, else 0.0.

    No host synchronisation happens here. The result lives on the device of
    the first tensor checked (CPU when there is none, e.g. an empty list or a
    rank that owns no gradients), ready for `global_overflow`.
    """
    groups = _group_extremes(tensors)
    if not groups:
        return torch.zeros((), dtype=torch.float32)
    flags = [torch.isfinite(torch.stack(vals)).all().logical_not() for vals in groups.values()]
    if len(flags) == 1:
        return flags[0].float()
    device = flags[0].device
    return torch.stack([f.to(device) for f in flags]).any().float()


def has_inf_or_nan(t: torch.Tensor) -> bool:
    """True if `t` (any shape, fp16/bf16/fp32/...) holds an inf or a NaN; one host sync."""
    return bool(local_overflow([t]).item())


def global_overflow(local: torch.Tensor, group: Optional[object] = None) -> bool:
    """True if `local` (a 0-dim flag from `local_overflow`) is set on any rank of `group`.

    The MAX all-reduce runs on a copy, on `local`'s device, which must suit
    the backend (CPU for gloo, the accelerator for nccl). Without an
    initialised process group the local flag is returned as is.
    """
    if not dist.is_initialized():
        return bool(local.item())
    flag = local.detach().to(torch.float32, copy=True)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())
