"""Builder of the ``cpu_adagrad`` op: the SIMD CPU Adagrad behind DeepSpeedCPUAdagrad."""
from typing import List

from .builder import CPUOpBuilder

__all__ = ["CPUAdagradBuilder"]


class CPUAdagradBuilder(CPUOpBuilder):
    NAME = "cpu_adagrad"
    BUILD_VAR = "DS_BUILD_CPU_ADAGRAD"

    def absolute_name(self) -> str:
        return "deepspeed.ops.adagrad.cpu_adagrad_op"

    def sources(self) -> List[str]:
        return ["csrc/cpu/adagrad/cpu_adagrad.cpp"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
