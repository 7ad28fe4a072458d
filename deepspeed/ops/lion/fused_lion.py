"""FusedLion: Lion (Chen et al., 2023) over many tensors per op with torch foreach.

The maths is exactly ``deepspeed.runtime.lion.Lion``'s, op for op:

    c = sign(b1*m + (1-b1)*g);  p *= 1 - lr*wd;  p -= lr*c;  m = b2*m + (1-b2)*g

so on CPU the two agree bit for bit; ``torch._foreach_*`` batches the
elementwise ops over all tensors of a (device, dtype) bucket, which on CUDA
means a handful of multi-tensor launches instead of several per parameter.
"""
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

__all__ = ["FusedLion", "foreach_lion_step"]


def foreach_lion_step(params: List[torch.Tensor], grads: List[torch.Tensor], exp_avgs: List[torch.Tensor], *,
                      lr: float, beta1: float, beta2: float, weight_decay: float) -> None:
    """One Lion step over parallel same-device lists, in place."""
    if not params:
        return
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1.0 - beta1)
    torch._foreach_sign_(update)
    # In-place scaling takes the factor as a 0-dim fp32 tensor: with a Python
    # scalar, torch's in-place foreach multiply rounds the factor to the
    # tensors' dtype first, so bf16/fp16 params would drift from Lion's
    # Tensor.mul_ (which keeps the factor in fp32).
    device = params[0].device
    if weight_decay != 0:
        torch._foreach_mul_(params, torch.tensor(1.0 - lr * weight_decay, device=device))
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, torch.tensor(beta2, device=device))
    torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta2)


class FusedLion(torch.optim.Optimizer):
    """Lion with DeepSpeed's FusedLion signature.

    State per parameter: ``exp_avg`` (same dtype as the parameter); the step
    count is kept per param group (``group["step"]``) for checkpoint parity
    with DeepSpeed, although Lion's update does not use it.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0., set_grad_none: bool = True) -> None:
        if lr < 0.0:
            raise ValueError(f"FusedLion: invalid learning rate {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"FusedLion: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))
        self.set_grad_none = set_grad_none

    def __getstate__(self) -> Dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups.
        state = super().__getstate__()
        state["set_grad_none"] = self.set_grad_none
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("set_grad_none", True)

    def zero_grad(self, set_to_none: Optional[bool] = None) -> None:
        """Clear gradients; ``set_to_none`` defaults to the constructor's ``set_grad_none``."""
        super().zero_grad(set_to_none=self.set_grad_none if set_to_none is None else set_to_none)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with_grad = [p for p in group["params"] if p.grad is not None]
            if not with_grad:
                continue
            group["step"] = group.get("step", 0) + 1
            beta1, beta2 = group["betas"]
            buckets: Dict[Tuple[torch.device, torch.dtype], List[torch.Tensor]] = {}
            for p in with_grad:
                if p.grad.is_sparse:
                    raise RuntimeError("FusedLion does not support sparse gradients")
                state = self.state[p]
                if len(state) == 0:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buckets.setdefault((p.device, p.dtype), []).append(p)
            for ps in buckets.values():
                foreach_lion_step(ps, [p.grad for p in ps], [self.state[p]["exp_avg"] for p in ps], lr=group["lr"],
                                  beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
        return loss
