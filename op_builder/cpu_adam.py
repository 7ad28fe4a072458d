"""Builder of the ``cpu_adam`` op: the SIMD CPU Adam/AdamW behind DeepSpeedCPUAdam and ZeRO-Offload."""
from typing import List

from .builder import CPUOpBuilder

__all__ = ["CPUAdamBuilder"]


class CPUAdamBuilder(CPUOpBuilder):
    NAME = "cpu_adam"
    BUILD_VAR = "DS_BUILD_CPU_ADAM"

    def absolute_name(self) -> str:
        return "deepspeed.ops.adam.cpu_adam_op"

    def sources(self) -> List[str]:
        return ["csrc/cpu/adam/cpu_adam.cpp"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
