"""Python face of the ``transformer_inference`` op; the torch references live in deepspeed/inference/kernels.py."""
from deepspeed.inference.kernels import (ACTIVATIONS, InferenceKernels, bias_act_ref, layer_norm_ref, rms_norm_ref,
                                         rotary_ref)

__all__ = ["InferenceKernels", "ACTIVATIONS", "rms_norm_ref", "layer_norm_ref", "rotary_ref", "bias_act_ref"]
