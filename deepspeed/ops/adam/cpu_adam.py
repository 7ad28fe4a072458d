"""DeepSpeedCPUAdam: Adam/AdamW on CPU tensors with the SIMD ``cpu_adam`` op (ZeRO-Offload's optimizer).

The kernel (csrc/cpu/adam/cpu_adam.cpp) updates fp32, fp16 or bf16
parameters with fp32 (or, with ``fp32_optimizer_states=False``, 16-bit)
``exp_avg``/``exp_avg_sq`` in one pass over memory, on all the threads
``torch.set_num_threads`` allows. It matches ``torch.optim.AdamW`` (or
``torch.optim.Adam`` with ``adamw_mode=False``) to fp32 rounding. Where the
op cannot be built, :func:`cpu_adam_reference_step` does the same maths.
See :class:`~deepspeed.ops.cpu_optimizer.CPUOptimizer` for what all CPU
optimizers share (``step_with_copy``, state dtypes, checkpoints).
"""
import itertools
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from deepspeed.ops.adam.cpu_adam_reference import cpu_adam_reference_step
from deepspeed.ops.cpu_optimizer import CPUOptimizer
from deepspeed.ops.op_builder import CPUAdamBuilder

__all__ = ["DeepSpeedCPUAdam"]


class DeepSpeedCPUAdam(CPUOptimizer):
    """Adam with decoupled weight decay (AdamW, the default) or L2 weight decay (``adamw_mode=False``).

    State per parameter: ``step`` (int), ``exp_avg`` and ``exp_avg_sq``.
    ``amsgrad`` is not supported and raises.
    """

    BUILDER = CPUAdamBuilder
    STATE_KEYS = ("exp_avg", "exp_avg_sq")
    _ids = itertools.count()

    def __init__(self, model_params: Iterable, lr: float = 1e-3, bias_correction: bool = True,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0,
                 amsgrad: bool = False, adamw_mode: bool = True, fp32_optimizer_states: bool = True) -> None:
        if amsgrad:
            raise ValueError("DeepSpeedCPUAdam does not support amsgrad=True")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, amsgrad=amsgrad)
        #: True: AdamW (p *= 1 - lr*wd); False: Adam with L2 decay (g += wd*p).
        self.adam_w_mode = bool(adamw_mode)
        super().__init__(model_params, defaults, fp32_optimizer_states)

    def _create_op(self) -> None:
        d = self.defaults
        self._op.create_adam(self.opt_id, d["lr"], d["betas"][0], d["betas"][1], d["eps"], d["weight_decay"],
                             self.adam_w_mode, False)

    def _destroy_op(self) -> None:
        self._op.destroy_adam(self.opt_id)

    def _kernel_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                       states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        args = (self.opt_id, step, float(group["lr"]), beta1, beta2, group["eps"], group["weight_decay"],
                group.get("bias_correction", True), param, grad, states[0], states[1])
        if copy is None:
            self._op.adam_update(*args)
        else:
            self._op.adam_update_copy(*args, copy)

    def _reference_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                          states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        cpu_adam_reference_step(param, grad, states[0], states[1], step=step, lr=float(group["lr"]), beta1=beta1,
                                beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                                bias_correction=group.get("bias_correction", True), adamw_mode=self.adam_w_mode,
                                params_copy=copy)
