"""DeepSpeedCPUAdagrad: Adagrad on CPU tensors with the SIMD ``cpu_adagrad`` op.

Matches ``torch.optim.Adagrad`` (no lr decay, zero initial accumulator,
weight decay as L2) to fp32 rounding. The running sum of squared gradients
is the state ``exp_avg_sq``. Where the op cannot be built,
:func:`cpu_adagrad_reference_step` does the same maths. See
:class:`~deepspeed.ops.cpu_optimizer.CPUOptimizer` for what all CPU
optimizers share.
"""
import itertools
from typing import Any, Dict, Iterable, List, Optional

import torch

from deepspeed.ops.adagrad.cpu_adagrad_reference import cpu_adagrad_reference_step
from deepspeed.ops.cpu_optimizer import CPUOptimizer
from deepspeed.ops.op_builder import CPUAdagradBuilder

__all__ = ["DeepSpeedCPUAdagrad"]


class DeepSpeedCPUAdagrad(CPUOptimizer):
    """Adagrad; state per parameter: ``step`` (int) and ``exp_avg_sq``. ``amsgrad`` raises."""

    BUILDER = CPUAdagradBuilder
    STATE_KEYS = ("exp_avg_sq", )
    _ids = itertools.count()

    def __init__(self, model_params: Iterable, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0,
                 amsgrad: bool = False, fp32_optimizer_states: bool = True) -> None:
        if amsgrad:
            raise ValueError("DeepSpeedCPUAdagrad does not support amsgrad=True")
        defaults = dict(lr=lr, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
        super().__init__(model_params, defaults, fp32_optimizer_states)

    def _create_op(self) -> None:
        d = self.defaults
        self._op.create_adagrad(self.opt_id, d["lr"], d["eps"], d["weight_decay"], False)

    def _destroy_op(self) -> None:
        self._op.destroy_adagrad(self.opt_id)

    def _kernel_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                       states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        args = (self.opt_id, step, float(group["lr"]), group["eps"], group["weight_decay"], param, grad, states[0])
        if copy is None:
            self._op.adagrad_update(*args)
        else:
            self._op.adagrad_update_copy(*args, copy)

    def _reference_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                          states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        cpu_adagrad_reference_step(param, grad, states[0], step=step, lr=float(group["lr"]), eps=group["eps"],
                                   weight_decay=group["weight_decay"], params_copy=copy)
