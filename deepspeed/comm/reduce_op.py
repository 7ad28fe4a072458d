"""DeepSpeed's own `ReduceOp` enum and its mapping onto torch's.

DeepSpeed scripts pass `deepspeed.comm.ReduceOp.SUM`; code written for
torch passes `torch.distributed.ReduceOp.SUM`. Every collective accepts
either, so both are normalised here in one place.
"""
from enum import Enum
from typing import Any

import torch.distributed as dist

__all__ = ["ReduceOp", "to_torch_op", "is_avg"]


class ReduceOp(Enum):
    """Reduction applied by all_reduce / reduce / reduce_scatter."""

    SUM = 0
    PRODUCT = 1
    MIN = 2
    MAX = 3
    BAND = 4
    BOR = 5
    BXOR = 6
    #: Mean over the group; emulated as SUM then divide where the backend
    #: has no native AVG.
    AVG = 7
    #: Placeholder kept for value compatibility; never valid in a collective.
    UNUSED = 8


def to_torch_op(op: Any) -> Any:
    """The torch.distributed reduce op for a DeepSpeed or torch `op`."""
    if isinstance(op, ReduceOp):
        if op is ReduceOp.UNUSED:
            raise ValueError("ReduceOp.UNUSED cannot be used in a collective")
        return getattr(dist.ReduceOp, op.name)
    if isinstance(op, (dist.ReduceOp, dist.ReduceOp.RedOpType)):
        return op
    raise TypeError(f"expected deepspeed.comm.ReduceOp or torch.distributed.ReduceOp, got {op!r}")


def is_avg(op: Any) -> bool:
    """Whether `op` (either flavour) requests an average."""
    if isinstance(op, ReduceOp):
        return op is ReduceOp.AVG
    return op == dist.ReduceOp.AVG
