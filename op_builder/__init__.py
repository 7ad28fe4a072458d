"""Op builders: one small declarative class per C++/CUDA op.

Installed as ``deepspeed.ops.op_builder``. ``ALL_OPS`` maps each op name to
its builder class; ``ds_report`` and setup.py's ``DS_BUILD_OPS`` walk it.
Modules here import each other relatively and never import ``deepspeed``,
so setup.py can use them before the package is installed.
"""
from typing import Dict, Type

from .build_lock import OpBuildError
from .builder import CPUOpBuilder, CUDAOpBuilder, OpBuilder
from .cpu_adagrad import CPUAdagradBuilder
from .cpu_adam import CPUAdamBuilder
from .cpu_inference import CPUInferenceBuilder
from .cpu_lion import CPULionBuilder
from .cpu_quantizer import CPUQuantizerBuilder
from .fused_adam import FusedAdamBuilder
from .noop import NoopBuilder
from .quantizer import QuantizerBuilder
from .transformer_inference import InferenceBuilder

__all__ = [
    "ALL_OPS", "OpBuilder", "CPUOpBuilder", "CUDAOpBuilder", "OpBuildError", "CPUAdamBuilder", "CPUAdagradBuilder",
    "CPULionBuilder", "FusedAdamBuilder", "QuantizerBuilder", "CPUQuantizerBuilder", "NoopBuilder",
    "InferenceBuilder", "CPUInferenceBuilder"
]

#: Map of op name -> builder class, for every op the package ships.
ALL_OPS: Dict[str, Type[OpBuilder]] = {
    cls.NAME: cls
    for cls in (CPUAdamBuilder, CPUAdagradBuilder, CPULionBuilder, FusedAdamBuilder, QuantizerBuilder,
                CPUQuantizerBuilder, InferenceBuilder, CPUInferenceBuilder)
}
