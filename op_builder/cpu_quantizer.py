"""Builder of the ``cpu_quantizer`` op: symmetric int8 quantize/dequantize with per-group scales on the CPU."""
from typing import List

from .builder import CPUOpBuilder

__all__ = ["CPUQuantizerBuilder"]


class CPUQuantizerBuilder(CPUOpBuilder):
    NAME = "cpu_quantizer"
    BUILD_VAR = "DS_BUILD_CPU_QUANTIZER"

    def absolute_name(self) -> str:
        return "deepspeed.ops.quantizer.cpu_quantizer_op"

    def sources(self) -> List[str]:
        return ["csrc/quantization/cpu_quantizer.cpp"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
