"""`deepspeed.comm`: torch.distributed under DeepSpeed's names.

Signatures mirror torch.distributed; see comm.py for what is added. The
named process-group registry lives in `deepspeed.comm.groups`.
"""
from . import groups
from .comm import *  # noqa: F401,F403  (the public facade; names listed in comm.__all__)
from .comm import __all__ as _comm_all
from .reduce_op import ReduceOp

__all__ = ["groups", "ReduceOp", *_comm_all]
