"""Builder of the ``fused_adam`` op: the multi-tensor CUDA Adam behind FusedAdam on GPU."""
from typing import List

from .builder import CUDAOpBuilder

__all__ = ["FusedAdamBuilder"]


class FusedAdamBuilder(CUDAOpBuilder):
    NAME = "fused_adam"
    BUILD_VAR = "DS_BUILD_FUSED_ADAM"

    def absolute_name(self) -> str:
        return "deepspeed.ops.adam.fused_adam_op"

    def sources(self) -> List[str]:
        return ["csrc/adam/fused_adam_frontend.cpp", "csrc/adam/multi_tensor_adam.cu"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
