"""Op builders: one small declarative class per C++/CUDA op.

Installed as `deepspeed.ops.op_builder`. The ops issue fills `ALL_OPS`; until
then the table is empty and `ds_report` shows no ops.
"""
from typing import Dict

__all__ = ["ALL_OPS"]

#: Map of op name -> builder class. Filled in by the builders that exist.
ALL_OPS: Dict[str, type] = {}
