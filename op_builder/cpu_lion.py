"""Builder of the ``cpu_lion`` op: the SIMD CPU Lion behind DeepSpeedCPULion."""
from typing import List

from .builder import CPUOpBuilder

__all__ = ["CPULionBuilder"]


class CPULionBuilder(CPUOpBuilder):
    NAME = "cpu_lion"
    BUILD_VAR = "DS_BUILD_CPU_LION"

    def absolute_name(self) -> str:
        return "deepspeed.ops.lion.cpu_lion_op"

    def sources(self) -> List[str]:
        return ["csrc/cpu/lion/cpu_lion.cpp"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
