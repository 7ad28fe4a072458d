"""Module hooks that drive the ZeRO-3 coordinator through forward and backward.

Forward: every submodule fetches its parameters in a forward pre-hook and
releases them in a forward hook. Backward: the module's outputs pass
through `_BackwardHook`, whose backward re-fetches the parameters before
autograd reaches the module; its inputs pass through another `_BackwardHook`, whose
backward runs once the module's input gradients exist and releases what is
no longer needed. The root module starts an iteration in its pre-hook and,
when no backward can follow, ends it in its post-hook; otherwise the end of
backward is signalled by a callback queued on the autograd engine.
"""
import functools
from typing import Any, Callable, List

import torch

from deepspeed.runtime.zero.coordinator import PartitionedParameterCoordinator, module_params

__all__ = ["DeepSpeedZeRoOffload", "apply_to_tensors"]


def apply_to_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Rebuild `obj` (tensor, tuple, list, dict, HF ModelOutput) with `fn` applied to each tensor."""
    if torch.is_tensor(obj):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(apply_to_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(apply_to_tensors(v, fn) for v in obj)
    if isinstance(obj, dict):
        for key in list(obj.keys()):
            obj[key] = apply_to_tensors(obj[key], fn)
        return obj
    return obj


def _grad_tensors(obj: Any) -> List[torch.Tensor]:
    found: List[torch.Tensor] = []
    apply_to_tensors(obj, lambda t: found.append(t) or t)
    return [t for t in found if t.requires_grad]


class _BackwardHook(torch.autograd.Function):
    """Identity on some tensors; its backward calls `callback()` before passing gradients on.

    On a module's outputs it runs before autograd reaches the module
    (pre-backward); on its inputs, after the module's backward (post-backward).
    """

    @staticmethod
    def forward(ctx, callback, *tensors):
        ctx.callback = callback
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        ctx.callback()
        return (None, ) + grads


def _wrap(callback: Callable[[], None], obj: Any) -> Any:
    tensors = _grad_tensors(obj)
    if not tensors or not torch.is_grad_enabled():
        return obj
    wrapped = dict(zip(map(id, tensors), _BackwardHook.apply(callback, *tensors)))
    return apply_to_tensors(obj, lambda t: wrapped.get(id(t), t))


class DeepSpeedZeRoOffload:
    """Installs and owns the ZeRO-3 hooks of one model (spec §5: `forward_hooks`, `backward_hooks`)."""

    def __init__(self, module: torch.nn.Module, coordinator: PartitionedParameterCoordinator) -> None:
        self.module = module
        self.coordinator = coordinator
        self.forward_hooks: List[Any] = []
        self.backward_hooks: List[Any] = []
        #: run at the end of every backward (the stage-3 optimizer flushes its reductions here)
        self.backward_end_callbacks: List[Callable[[], None]] = []
        self._callback_queued = False
        #: set by unwrap_model_for_generation: parameters are gathered, hooks do nothing
        self.suspended = False
        for p in module.parameters():
            if hasattr(p, "ds_state"):
                p.ds_state.coordinator = coordinator
        module._ds_zero_offload = self
        self._register(module)

    # ---------------------------------------------------------- set-up
    def _register(self, root: torch.nn.Module) -> None:
        root_pre = root.register_forward_pre_hook(self._root_pre_forward)
        self.forward_hooks.append(root_pre)
        for module in root.modules():
            self.forward_hooks.append(module.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            self.forward_hooks.append(module.register_forward_hook(self._post_forward))
        self.forward_hooks.append(root.register_forward_hook(self._root_post_forward))

    # TRL removes and re-adds the hooks around generation through these names.
    def _register_deepspeed_module(self, module: torch.nn.Module, count=None) -> None:
        self._register(module)

    @property
    def param_coordinator(self) -> PartitionedParameterCoordinator:
        return self.coordinator

    def remove_hooks(self) -> None:
        for handle in self.forward_hooks + self.backward_hooks:
            handle.remove()
        self.forward_hooks, self.backward_hooks = [], []

    # ---------------------------------------------------------- forward
    def _root_pre_forward(self, module, args) -> None:
        if self.suspended:
            return
        self.coordinator.reset_step(module.training)
        self._callback_queued = False
        for p in module.parameters():
            if hasattr(p, "ds_state"):
                p.ds_state.grad_done = False

    def _pre_forward(self, module, args, kwargs):
        if self.suspended:
            return None
        self.coordinator.fetch_sub_module(module)
        if not module_params(module) or not torch.is_grad_enabled():
            return None
        done = functools.partial(self.post_backward, module)
        return _wrap(done, args), _wrap(done, kwargs)

    def _post_forward(self, module, args, output):
        if self.suspended:
            return None
        self.coordinator.release_sub_module(module)
        if not torch.is_grad_enabled() or not module_params(module):
            return None
        return _wrap(functools.partial(self.pre_backward, module), output)

    def _root_post_forward(self, module, args, output) -> None:
        if self.suspended:
            return
        if not (torch.is_grad_enabled() and _grad_tensors(output)):
            # No backward can follow: the iteration ends here.
            self.coordinator.end_iteration()

    # --------------------------------------------------------- backward
    def pre_backward(self, module: torch.nn.Module) -> None:
        self._queue_backward_end()
        self.coordinator.fetch_sub_module(module)

    def post_backward(self, module: torch.nn.Module) -> None:
        self.coordinator.release_sub_module(module, backward=True)

    def _queue_backward_end(self) -> None:
        if not self._callback_queued:
            self._callback_queued = True
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_end)

    def _backward_end(self) -> None:
        for callback in self.backward_end_callbacks:
            callback()
        self.coordinator.end_iteration()
        self._callback_queued = False
