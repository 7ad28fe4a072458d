"""Builder of the ``transformer_inference`` op: the Hybrid Engine decode-path kernels (norms, rotary, bias+act)."""
from typing import List

from .builder import CUDAOpBuilder

__all__ = ["InferenceBuilder"]


class InferenceBuilder(CUDAOpBuilder):
    NAME = "transformer_inference"
    BUILD_VAR = "DS_BUILD_TRANSFORMER_INFERENCE"

    def absolute_name(self) -> str:
        return "deepspeed.ops.transformer.inference.transformer_inference_op"

    def sources(self) -> List[str]:
        return ["csrc/transformer/inference/pt_binding.cpp", "csrc/transformer/inference/normalize.cu",
                "csrc/transformer/inference/rotary.cu", "csrc/transformer/inference/bias_activation.cu"]

    def include_paths(self) -> List[str]:
        return ["csrc/includes", "csrc/transformer/inference"]
