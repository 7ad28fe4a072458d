"""Builder of the ``cpu_inference`` op: the skinny fp32 linear of the Hybrid Engine's CPU decode steps."""
from typing import List

from .builder import CPUOpBuilder

__all__ = ["CPUInferenceBuilder"]


class CPUInferenceBuilder(CPUOpBuilder):
    NAME = "cpu_inference"
    BUILD_VAR = "DS_BUILD_CPU_INFERENCE"

    def absolute_name(self) -> str:
        return "deepspeed.ops.transformer.inference.cpu_inference_op"

    def sources(self) -> List[str]:
        return ["csrc/cpu/inference/decode_linear.cpp"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
