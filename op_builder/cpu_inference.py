"""Builder of the ``cpu_inference`` op: the skinny fp32 linear and the attention of the Hybrid Engine's CPU decode steps."""
from typing import List

from .builder import CPUOpBuilder

__all__ = ["CPUInferenceBuilder"]


class CPUInferenceBuilder(CPUOpBuilder):
    NAME = "cpu_inference"
    BUILD_VAR = "DS_BUILD_CPU_INFERENCE"

    def absolute_name(self) -> str:
        return "deepspeed.ops.transformer.inference.cpu_inference_op"

    def sources(self) -> List[str]:
        return ["csrc/cpu/inference/decode_linear.cpp", "csrc/cpu/inference/decode_attention.cpp",
                "csrc/cpu/inference/bindings.cpp"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
