"""FusedAdam: Adam/AdamW that updates many tensors per kernel launch.

On CUDA tensors the step runs the ``multi_tensor_adam`` kernel of the
``fused_adam`` op (csrc/adam/multi_tensor_adam.cu), which updates up to 36
tensors per launch. Everywhere else it runs :func:`foreach_adam_step`, a
pure-torch ``torch._foreach_*`` version of the same maths that is also the
kernel's test oracle. Both follow torch.optim.Adam/AdamW's formulas, so the
CPU path matches torch to fp32 rounding.

State per parameter: ``exp_avg`` and ``exp_avg_sq``, created like the
parameter (same dtype, as DeepSpeed's FusedAdam does); the step count is
per param group (``group["step"]``). 16-bit parameters are updated with
fp32 arithmetic and rounded back to their dtype on store.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from deepspeed.ops.op_builder import FusedAdamBuilder

__all__ = ["FusedAdam", "foreach_adam_step"]

#: Elements per multi-tensor-apply work item (one CUDA block per chunk).
_CHUNK_SIZE = 2048 * 32


def foreach_adam_step(params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor],
                      exp_avg_sqs: List[torch.Tensor], *, step: int, lr: float, beta1: float, beta2: float,
                      eps: float, weight_decay: float, adam_w_mode: bool, bias_correction: bool) -> None:
    """One Adam(W) step over parallel lists, in place, with torch foreach ops.

    All tensors of one call share a device; ``params[i]``, ``grads[i]``,
    ``exp_avgs[i]`` and ``exp_avg_sqs[i]`` have the same shape. Lists of
    16-bit tensors are upcast to fp32 for the maths and copied back (rounding
    to nearest-even), matching what the CUDA kernel does in registers.
    """
    if not params:
        return
    low_precision = any(t.dtype != torch.float32 for t in params + exp_avgs + exp_avg_sqs)
    if low_precision:
        p32 = [p.float() for p in params]
        m32 = [m.float() for m in exp_avgs]
        v32 = [v.float() for v in exp_avg_sqs]
    else:
        p32, m32, v32 = params, exp_avgs, exp_avg_sqs
    g32 = [g.float() for g in grads]

    bc1 = 1.0 - beta1**step if bias_correction else 1.0
    bc2 = 1.0 - beta2**step if bias_correction else 1.0
    if weight_decay != 0:
        if adam_w_mode:
            torch._foreach_mul_(p32, 1.0 - lr * weight_decay)
        else:
            g32 = torch._foreach_add(g32, p32, alpha=weight_decay)
    torch._foreach_lerp_(m32, g32, 1.0 - beta1)
    torch._foreach_mul_(v32, beta2)
    torch._foreach_addcmul_(v32, g32, g32, 1.0 - beta2)
    denom = torch._foreach_sqrt(v32)
    torch._foreach_div_(denom, bc2**0.5)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(p32, m32, denom, -lr / bc1)

    if low_precision:
        for dst, src in zip(params + exp_avgs + exp_avg_sqs, p32 + m32 + v32):
            if dst is not src:
                dst.copy_(src)


class FusedAdam(torch.optim.Optimizer):
    """Adam / AdamW with DeepSpeed's FusedAdam signature.

    ``adam_w_mode=True`` applies decoupled weight decay (torch.optim.AdamW),
    ``False`` adds ``weight_decay * p`` to the gradient (torch.optim.Adam).
    ``set_grad_none`` is the default of :meth:`zero_grad`'s ``set_to_none``.
    AMSGrad is not supported.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, bias_correction: bool = True,
                 betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, adam_w_mode: bool = True,
                 weight_decay: float = 0., amsgrad: bool = False, set_grad_none: bool = True) -> None:
        if amsgrad:
            raise RuntimeError("FusedAdam does not support the AMSGrad variant")
        if lr < 0.0:
            raise ValueError(f"FusedAdam: invalid learning rate {lr}")
        if eps < 0.0:
            raise ValueError(f"FusedAdam: invalid epsilon {eps}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"FusedAdam: betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, bias_correction=bias_correction, betas=tuple(betas), eps=eps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)
        # Ints, as the kernel takes them (1 = AdamW, 0 = Adam with L2).
        self.adam_w_mode = 1 if adam_w_mode else 0
        self.set_grad_none = set_grad_none
        # The CUDA op is compiled/loaded on the first step that sees a CUDA
        # tensor, so CPU-only users never need nvcc.
        self._cuda_op: Optional[Any] = None
        # One int32 "skip this step" flag per CUDA device (always 0 here:
        # overflow handling happens before step() in the engine).
        self._noop_flags: Dict[torch.device, torch.Tensor] = {}

    def __getstate__(self) -> Dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups; keep the
        # mode flags too so a deepcopy or pickle steps the same way.
        state = super().__getstate__()
        state.update(adam_w_mode=self.adam_w_mode, set_grad_none=self.set_grad_none)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("adam_w_mode", 1)
        self.__dict__.setdefault("set_grad_none", True)
        self._cuda_op = None
        self._noop_flags = {}

    def zero_grad(self, set_to_none: Optional[bool] = None) -> None:
        """Clear gradients; ``set_to_none`` defaults to the constructor's ``set_grad_none``."""
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None, grads: Any = None, output_params: Any = None,
             scale: Any = None, grad_norms: Any = None, grad_scaler: Any = None) -> Any:
        """One optimizer step over every parameter that has a ``.grad``.

        The extra arguments existed in old DeepSpeed releases; they are
        rejected so a script relying on them fails loudly, not silently.
        """
        if any(a is not None for a in (grads, output_params, scale, grad_norms, grad_scaler)):
            raise RuntimeError("FusedAdam.step() takes no grads/output_params/scale/grad_norms/grad_scaler; "
                               "gradients are read from param.grad")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            if not with_grad:
                continue
            group["step"] = group.get("step", 0) + 1
            buckets: Dict[Tuple[torch.device, torch.dtype, torch.dtype, bool], List[torch.Tensor]] = {}
            for p in with_grad:
                if p.grad.is_sparse:
                    raise RuntimeError("FusedAdam does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                fused = p.is_cuda and self._kernel_accepts(p, state)
                buckets.setdefault((p.device, p.dtype, state["exp_avg"].dtype, fused), []).append(p)
            for (device, _, _, fused), ps in buckets.items():
                self._step_bucket(group, ps, device, fused)
        return loss

    def _kernel_accepts(self, p: torch.Tensor, state: Dict[str, torch.Tensor]) -> bool:
        """Whether the CUDA kernel can update ``p`` (flat, contiguous, supported dtypes)."""
        m, v = state["exp_avg"], state["exp_avg_sq"]
        dtypes = (torch.float32, torch.float16, torch.bfloat16)
        return (p.dtype in dtypes and p.grad.dtype == p.dtype and m.dtype == v.dtype
                and m.dtype in (torch.float32, p.dtype) and p.is_contiguous() and m.is_contiguous()
                and v.is_contiguous() and m.device == p.device and v.device == p.device)

    def _step_bucket(self, group: Dict[str, Any], params: List[torch.Tensor], device: torch.device,
                     fused: bool) -> None:
        beta1, beta2 = group["betas"]
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        if not fused:
            foreach_adam_step(params, grads, exp_avgs, exp_avg_sqs, step=group["step"], lr=group["lr"],
                              beta1=beta1, beta2=beta2, eps=group["eps"], weight_decay=group["weight_decay"],
                              adam_w_mode=bool(self.adam_w_mode), bias_correction=group["bias_correction"])
            return
        if self._cuda_op is None:
            self._cuda_op = FusedAdamBuilder().load()
        noop = self._noop_flags.get(device)
        if noop is None:
            noop = self._noop_flags[device] = torch.zeros(1, dtype=torch.int32, device=device)
        grads = [g.contiguous() for g in grads]
        self._cuda_op.multi_tensor_adam(_CHUNK_SIZE, noop, [grads, params, exp_avgs, exp_avg_sqs], group["lr"],
                                        beta1, beta2, group["eps"], group["step"], self.adam_w_mode,
                                        1 if group["bias_correction"] else 0, group["weight_decay"])
