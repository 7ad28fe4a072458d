"""The shared face of the SIMD CPU optimizers (DeepSpeedCPUAdam, DeepSpeedCPUAdagrad, DeepSpeedCPULion).

Each subclass names its op builder, its state tensors and how to call its
kernel; this base owns what they share:

- loading the op (once per process and SIMD level) with a fallback to the
  pure-torch reference, and a single warning, when it cannot be built;
- a C++ optimizer object per instance, keyed by an id from a per-class
  counter and destroyed in ``__del__``;
- state creation (fp32 states, or the parameter's 16-bit dtype when
  ``fp32_optimizer_states=False``), the device check, and
  ``load_state_dict`` that keeps that state dtype (torch's would cast states
  to the parameter dtype and lose fp32 master precision);
- ``step_with_copy``: the step that also writes each updated parameter into a
  second 16-bit tensor in the same pass over memory, for ZeRO-Offload.

Hyperparameters are read from each param group at every step, so LR
schedulers and edits to ``param_groups`` take effect like in torch.
"""
import functools
import itertools
import types
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Type

import torch

from deepspeed.ops.op_builder import OpBuilder
from deepspeed.utils.logging import logger

__all__ = ["CPUOptimizer", "load_cpu_op"]

# Dtypes the kernels read and write natively; others are rejected (params) or
# widened to fp32 first (grads).
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_COPY_DTYPES = (torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=None)
def load_cpu_op(builder_cls: Type[OpBuilder], simd: Optional[str] = None) -> Optional[types.ModuleType]:
    """The compiled op of ``builder_cls`` at SIMD level ``simd`` (None: detect), or None if it cannot be built.

    Cached, so each op is built/imported once per process and a failure is
    warned about once, not at every optimizer construction.
    """
    try:
        return builder_cls(simd=simd).load()
    except Exception as err:  # noqa: BLE001  (any build failure must degrade to the reference, not stop training)
        logger.warning(f"op {builder_cls.NAME} could not be built or loaded ({err}); "
                       f"falling back to its pure-torch reference, which is several times slower")
        return None


class CPUOptimizer(torch.optim.Optimizer):
    """Base of the SIMD CPU optimizers; see the module docstring."""

    #: SIMD level of the op: None picks the CPU's widest; "avx512", "avx2" or
    #: "scalar" force one (tests subclass and set this to compare builds).
    op_simd: ClassVar[Optional[str]] = None
    #: Builder of the op (``CPUAdamBuilder``...).
    BUILDER: ClassVar[Type[OpBuilder]]
    #: State tensors in the order the kernel takes them, e.g. ("exp_avg", "exp_avg_sq").
    STATE_KEYS: ClassVar[Tuple[str, ...]] = ()
    #: Source of optimizer ids; each subclass has its own (ids key the C++ map of its op).
    _ids: ClassVar["itertools.count[int]"]

    def __init__(self, params: Any, defaults: Dict[str, Any], fp32_optimizer_states: bool) -> None:
        super().__init__(params, defaults)
        #: Whether states are fp32 (True) or the parameter's own dtype.
        self.fp32_optimizer_states = bool(fp32_optimizer_states)
        self._attach_op()

    # ---- what a subclass provides -----------------------------------------------

    def _create_op(self) -> None:
        """Register this instance (``self.opt_id``) with the C++ op."""
        raise NotImplementedError

    def _destroy_op(self) -> None:
        raise NotImplementedError

    def _kernel_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                       states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        """Call the op's ``*_update`` (``copy`` None) or ``*_update_copy`` on one tensor."""
        raise NotImplementedError

    def _reference_update(self, group: Dict[str, Any], step: int, param: torch.Tensor, grad: torch.Tensor,
                          states: List[torch.Tensor], copy: Optional[torch.Tensor]) -> None:
        """The same update with the pure-torch reference."""
        raise NotImplementedError

    # ---- op lifetime ----------------------------------------------------------------

    def _attach_op(self) -> None:
        self.opt_id = next(type(self)._ids)
        self._op = load_cpu_op(self.BUILDER, self.op_simd)
        if self._op is not None:
            self._create_op()

    def __del__(self) -> None:
        # getattr: __init__ may have failed before the op was attached.
        if getattr(self, "_op", None) is not None:
            try:
                self._destroy_op()
            except Exception:  # noqa: BLE001  (interpreter shutdown may have torn the module down)
                pass

    def __getstate__(self) -> Dict[str, Any]:
        # A compiled module cannot be pickled or deep-copied; the copy attaches its own.
        state = dict(self.__dict__)
        state.pop("_op", None)
        state.pop("opt_id", None)
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)
        self._attach_op()

    @property
    def simd_width(self) -> int:
        """fp32 lanes per vector of the loaded op (16, 8 or 1); 0 when running the pure-torch reference."""
        return 0 if self._op is None else int(self._op.simd_width())

    # ---- stepping -------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One optimizer step over every parameter that has a gradient."""
        return self._step(closure, None)

    @torch.no_grad()
    def step_with_copy(self, copies: Sequence[Sequence[Optional[torch.Tensor]]],
                       closure: Optional[Callable[[], Any]] = None) -> Any:
        """``step()`` that also writes each updated parameter into ``copies[i][j]``.

        ``copies`` mirrors ``param_groups``: ``copies[i][j]`` belongs to
        ``param_groups[i]["params"][j]`` and is None or a tensor with the same
        number of elements. A contiguous fp16/bf16 CPU tensor is written by
        the kernel in the same pass that updates the parameter (rounded to
        nearest-even, bit-identical to ``param.to(copy.dtype)``), which saves
        re-reading the fp32 parameters; any other tensor (another dtype or
        device) is filled with ``copy_`` after the update. ZeRO-Offload passes
        its 16-bit CPU buffers here and then sends them to the accelerator.
        """
        if len(copies) != len(self.param_groups):
            raise ValueError(f"step_with_copy: got copies for {len(copies)} param groups, "
                             f"the optimizer has {len(self.param_groups)}")
        for i, (group_copies, group) in enumerate(zip(copies, self.param_groups)):
            if len(group_copies) != len(group["params"]):
                raise ValueError(f"step_with_copy: copies[{i}] has {len(group_copies)} entries, "
                                 f"param_groups[{i}] has {len(group['params'])} params")
        return self._step(closure, copies)

    def _step(self, closure: Optional[Callable[[], Any]],
              copies: Optional[Sequence[Sequence[Optional[torch.Tensor]]]]) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        # This loop runs once per parameter per step: with many small tensors
        # its Python cost rivals the kernel's, so it does only cheap checks
        # and builds error messages only when one is raised.
        for gi, group in enumerate(self.param_groups):
            for pi, p in enumerate(group["params"]):
                grad = p.grad
                if grad is None:
                    continue
                if not (p.is_cpu and grad.is_cpu) or grad.is_sparse or p.dtype not in _KERNEL_DTYPES:
                    self._raise_unsupported(p, gi, pi)
                state = self.state[p]
                if not state:
                    self._init_state(p, state)
                state["step"] += 1
                copy = copies[gi][pi] if copies is not None else None
                self._update_one(group, p, grad, state, copy, gi, pi)
        return loss

    def _raise_unsupported(self, p: torch.Tensor, gi: int, pi: int) -> None:
        name = type(self).__name__
        where = f"param_groups[{gi}]['params'][{pi}] (shape {tuple(p.shape)}, dtype {p.dtype})"
        # AssertionError, as DeepSpeed's CPU optimizers raise, so code that
        # catches that keeps working; the message says what to do instead.
        if not p.is_cpu:
            raise AssertionError(f"{name} updates CPU tensors only, but {where} is on {p.device}. Keep the "
                                 f"parameters on the CPU (ZeRO-Offload does this), or use FusedAdam / a torch "
                                 f"optimizer for accelerator tensors")
        if not p.grad.is_cpu:
            raise AssertionError(f"{name}: the gradient of {where} is on {p.grad.device}; it must be on the CPU")
        if p.grad.is_sparse:
            raise RuntimeError(f"{name} does not support sparse gradients ({where})")
        raise TypeError(f"{name} supports float32, float16 and bfloat16 parameters; {where} is {p.dtype}")

    def _state_dtype(self, p: torch.Tensor) -> torch.dtype:
        return torch.float32 if self.fp32_optimizer_states else p.dtype

    def _init_state(self, p: torch.Tensor, state: Dict[str, Any]) -> None:
        state["step"] = 0
        for key in self.STATE_KEYS:
            state[key] = torch.zeros(p.shape, dtype=self._state_dtype(p), device="cpu")

    def _update_one(self, group: Dict[str, Any], p: torch.Tensor, grad: torch.Tensor, state: Dict[str, Any],
                    copy: Optional[torch.Tensor], gi: int, pi: int) -> None:
        # The kernel walks flat memory: give it contiguous buffers and write back if needed.
        work = p if p.is_contiguous() else p.detach().contiguous()
        if grad.dtype not in _KERNEL_DTYPES:
            grad = grad.float()
        if not grad.is_contiguous():
            grad = grad.contiguous()
        if grad.numel() != p.numel():
            raise ValueError(f"{type(self).__name__}: the gradient of param_groups[{gi}]['params'][{pi}] has "
                             f"{grad.numel()} elements, the parameter {p.numel()}")
        fused_copy = None
        if copy is not None:
            if copy.numel() != p.numel():
                raise ValueError(f"step_with_copy: copies[{gi}][{pi}] has {copy.numel()} elements, the parameter "
                                 f"{p.numel()}")
            if copy.dtype in _COPY_DTYPES and copy.is_cpu and copy.is_contiguous():
                fused_copy = copy
        states = [state[key] for key in self.STATE_KEYS]
        if not all(s.is_cpu and s.is_contiguous() for s in states):
            # Only a state loaded or edited from outside can be like this.
            states = [s.to(device="cpu", memory_format=torch.contiguous_format) for s in states]
            state.update(zip(self.STATE_KEYS, states))
        if self._op is not None:
            self._kernel_update(group, state["step"], work, grad, states, fused_copy)
        else:
            self._reference_update(group, state["step"], work.detach(), grad, states, fused_copy)
        if work is not p:
            p.detach().copy_(work)
        if copy is not None and fused_copy is None:
            copy.copy_(p.detach().reshape(copy.shape))

    # ---- checkpoints ---------------------------------------------------------------

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """torch's load, then each state tensor restored, as an owned contiguous CPU copy, in the state dtype.

        torch would cast states to the parameter dtype: fp32 states of a bf16
        parameter would come back as bf16, and the resumed run would differ.
        """
        super().load_state_dict(state_dict)
        saved_state = state_dict["state"]
        for group, saved_group in zip(self.param_groups, state_dict["param_groups"]):
            for p, saved_id in zip(group["params"], saved_group["params"]):
                saved = saved_state.get(saved_id)
                if not saved:
                    continue
                state = self.state[p]
                if "step" in saved:
                    step = saved["step"]
                    state["step"] = int(step.item() if torch.is_tensor(step) else step)
                for key in self.STATE_KEYS:
                    if key in saved:
                        state[key] = saved[key].to(device="cpu", dtype=self._state_dtype(p),
                                                   copy=True).contiguous().view(p.shape)
