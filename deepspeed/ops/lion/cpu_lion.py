"""DeepSpeedCPULion: Lion on CPU tensors with the SIMD ``cpu_lion`` op.

Same maths as deepspeed/runtime/lion.py (update = sign(b1*m + (1-b1)*g),
p *= 1 - lr*wd, p -= lr*update, m = b2*m + (1-b2)*g), to fp32 rounding.
Where the op cannot be built, :func:`cpu_lion_reference_step` does the same
maths. See :class:`~deepspeed.ops.cpu_optimizer.CPUOptimizer` for what all
CPU optimizers share.
"""
import itertools
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from deepspeed.ops.cpu_optimizer import CPUOptimizer
from deepspeed.ops.lion.cpu_lion_reference import cpu_lion_reference_step
from deepspeed.ops.op_builder import CPULionBuilder

__all__ = ["DeepSpeedCPULion"]


class DeepSpeedCPULion(CPUOptimizer):
    """Lion; state per parameter: ``step`` (int) and ``exp_avg``."""

    BUILDER = CPULionBuilder
    STATE_KEYS = ("exp_avg", )
    _ids = itertools.count()

    def __init__(self, model_params: Iterable, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0, fp32_optimizer_states: bool = True) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        super().__init__(model_params, defaults, fp32_optimizer_states)

    def _create_op(self) -> None:
        d = self.defaults
        self._op.create_lion(self.opt_id, d["lr"], d["betas"][0], d["betas"][1], d["weight_decay"], False)

    def _destroy_op(self) -> None:
        self._op.destroy_lion(self.opt_id)

    def _kernel_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                       states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        args = (self.opt_id, step, float(group["lr"]), beta1, beta2, group["weight_decay"], param, grad, states[0])
        if copy is None:
            self._op.lion_update(*args)
        else:
            self._op.lion_update_copy(*args, copy)

    def _reference_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                          states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        cpu_lion_reference_step(param, grad, states[0], step=step, lr=float(group["lr"]), beta1=beta1, beta2=beta2,
                                weight_decay=group["weight_decay"], params_copy=copy)
