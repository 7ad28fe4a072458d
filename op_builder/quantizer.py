"""Builder of the ``quantizer`` op: symmetric int8 quantize/dequantize with per-group scales on GPU (ZeRO++)."""
from typing import List

from .builder import CUDAOpBuilder

__all__ = ["QuantizerBuilder"]


class QuantizerBuilder(CUDAOpBuilder):
    NAME = "quantizer"
    BUILD_VAR = "DS_BUILD_QUANTIZER"

    def absolute_name(self) -> str:
        return "deepspeed.ops.quantizer.quantizer_op"

    def sources(self) -> List[str]:
        return ["csrc/quantization/pt_binding.cpp", "csrc/quantization/quantize.cu", "csrc/quantization/dequantize.cu"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes"]
