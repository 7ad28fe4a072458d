"""Pure-torch reference of the ``cpu_adam`` kernel: its test oracle and its fallback.

The maths is the kernel's, step for step and in the same order, in fp32:
16-bit tensors are widened on load and rounded back to their own dtype on
store (torch rounds to nearest-even, as the kernel does). So a SIMD build and
this function differ only where the compiler fused a multiply-add, by an ulp
of fp32 at most per operation.
"""
import math
from typing import Optional

import torch

__all__ = ["cpu_adam_reference_step"]


@torch.no_grad()
def cpu_adam_reference_step(params: torch.Tensor, grads: torch.Tensor, exp_avg: torch.Tensor,
                            exp_avg_sq: torch.Tensor, *, step: int, lr: float, beta1: float, beta2: float,
                            eps: float, weight_decay: float, bias_correction: bool, adamw_mode: bool,
                            params_copy: Optional[torch.Tensor] = None) -> None:
    """One Adam (``adamw_mode=False``: L2 weight decay) or AdamW step, in place.

    ``step`` counts from 1. ``params_copy``, if given, receives the updated
    parameters in its own dtype, as ``adam_update_copy`` does.
    """
    bc1 = 1.0 - beta1**step if bias_correction else 1.0
    bc2 = 1.0 - beta2**step if bias_correction else 1.0
    p = params.float()
    g = grads.float()
    m = exp_avg.float()
    v = exp_avg_sq.float()
    if weight_decay != 0:
        if adamw_mode:
            p = p * (1.0 - lr * weight_decay)
        else:
            g = g + p * weight_decay
    m = m * beta1 + g * (1.0 - beta1)
    v = v * beta2 + g * g * (1.0 - beta2)
    denom = v.sqrt() * (1.0 / math.sqrt(bc2)) + eps
    p = p + (m / denom) * (-lr / bc1)
    params.copy_(p.view_as(params))
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
    if params_copy is not None:
        params_copy.copy_(p.view_as(params_copy))
