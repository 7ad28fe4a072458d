"""Pure-torch reference of the ``cpu_adagrad`` kernel: its test oracle and its fallback.

Same maths and order as the kernel, in fp32, with 16-bit tensors widened on
load and rounded (to nearest-even) on store. It equals torch.optim.Adagrad
with ``lr_decay=0`` and ``initial_accumulator_value=0``.
"""
from typing import Optional

import torch

__all__ = ["cpu_adagrad_reference_step"]


@torch.no_grad()
def cpu_adagrad_reference_step(params: torch.Tensor, grads: torch.Tensor, exp_avg_sq: torch.Tensor, *, step: int,
                               lr: float, eps: float, weight_decay: float,
                               params_copy: Optional[torch.Tensor] = None) -> None:
    """One Adagrad step in place; ``exp_avg_sq`` is the running sum of squared grads.

    ``step`` is accepted for symmetry with the kernel (Adagrad does not use it).
    """
    del step
    p = params.float()
    g = grads.float()
    s = exp_avg_sq.float()
    if weight_decay != 0:
        g = g + p * weight_decay
    s = s + g * g
    p = p + (g / (s.sqrt() + eps)) * (-lr)
    params.copy_(p.view_as(params))
    exp_avg_sq.copy_(s)
    if params_copy is not None:
        params_copy.copy_(p.view_as(params_copy))
