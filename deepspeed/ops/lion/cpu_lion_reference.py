"""Pure-torch reference of the ``cpu_lion`` kernel: its test oracle and its fallback.

Same maths as deepspeed/runtime/lion.py and the kernel, in fp32, with 16-bit
tensors widened on load and rounded (to nearest-even) on store.
"""
from typing import Optional

import torch

__all__ = ["cpu_lion_reference_step"]


@torch.no_grad()
def cpu_lion_reference_step(params: torch.Tensor, grads: torch.Tensor, exp_avg: torch.Tensor, *, step: int,
                            lr: float, beta1: float, beta2: float, weight_decay: float,
                            params_copy: Optional[torch.Tensor] = None) -> None:
    """One Lion step in place. ``step`` is accepted for symmetry (Lion does not use it)."""
    del step
    p = params.float()
    g = grads.float()
    m = exp_avg.float()
    direction = (m * beta1 + g * (1.0 - beta1)).sign()
    if weight_decay != 0:
        p = p * (1.0 - lr * weight_decay)
    p = p + direction * (-lr)
    m = m * beta2 + g * (1.0 - beta2)
    params.copy_(p.view_as(params))
    exp_avg.copy_(m)
    if params_copy is not None:
        params_copy.copy_(p.view_as(params_copy))
