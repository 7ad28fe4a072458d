"""Loss scaling for fp16 training: a fixed scale or one that adapts to overflows.

fp16 gradients underflow to zero for small values, so the loss is multiplied
by a large factor before backward and the gradients are divided by it again
before the optimizer step. A static scaler uses one factor for the whole run.
The dynamic scaler starts high, shrinks the factor when gradients overflow
(the step is then skipped by the caller) and grows it again after a window of
clean steps, so the scale hovers just below the overflow threshold.

[Note: dynamic loss-scale schedule]
`DynamicLossScaler.update_scale(overflow)` is called once per optimizer step
(at the gradient-accumulation boundary) and is the only place the scale
changes. With ``delayed_shift`` (ds_config ``hysteresis``) = h:

* overflow: if the remaining hysteresis budget is 1 (or h == 1) the scale is
  divided by ``scale_factor`` (never below ``min_scale``; already at the
  floor with ``raise_error_at_min_scale`` -> `LossScaleUnderflowError`);
  otherwise the budget is decremented and the scale kept. Either way the
  iteration is remembered as ``last_overflow_iter``.
* clean step: with ``consecutive_hysteresis`` the budget is refilled to h,
  so only back-to-back overflows are counted. When
  ``(cur_iter - last_overflow_iter) % scale_window == 0`` the scale is
  multiplied by ``scale_factor``, and without ``consecutive_hysteresis`` this
  growth is the moment the budget is refilled.
* ``cur_iter`` advances after every call. ``last_overflow_iter`` starts at -1,
  so the first growth happens after ``scale_window`` clean steps.
"""
from __future__ import annotations

from typing import Any

import torch

from deepspeed.utils.logging import log_dist

__all__ = [
    "LossScalerBase",
    "LossScaler",
    "DynamicLossScaler",
    "LossScaleUnderflowError",
    "CreateLossScaler",
    "loss_scaler_from_config",
    "INITIAL_LOSS_SCALE",
    "SCALE_WINDOW",
    "DELAYED_SHIFT",
    "CONSECUTIVE_HYSTERESIS",
    "MIN_LOSS_SCALE",
]

# Keys of the `dynamic_loss_args` dict accepted by `CreateLossScaler`; they are
# the keyword names of `DynamicLossScaler`, as in DeepSpeed.
INITIAL_LOSS_SCALE = "init_scale"
SCALE_WINDOW = "scale_window"
DELAYED_SHIFT = "delayed_shift"
CONSECUTIVE_HYSTERESIS = "consecutive_hysteresis"
MIN_LOSS_SCALE = "min_scale"


class LossScaleUnderflowError(RuntimeError):
    """An overflow happened while the dynamic scale was already at its floor.

    Shrinking further is not allowed, so training has diverged; continuing
    would only skip every remaining step.
    """


class LossScalerBase:
    """Common interface of the static and dynamic scalers.

    The engine multiplies the loss by `loss_scale` before backward
    (`scale_loss` / `backward`) and reports each optimizer step's overflow
    status through `update_scale`.
    """

    def __init__(self, cur_scale: float) -> None:
        # The factor currently applied to the loss (and removed from the grads).
        self.cur_scale = float(cur_scale)
        # Whether the scale reacts to overflows; optimizers read this to decide
        # whether an overflow check is needed at all.
        self.dynamic = False

    @property
    def loss_scale(self) -> float:
        """The factor applied to the loss for the current step."""
        return self.cur_scale

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Return ``loss * loss_scale`` (same shape and dtype as `loss`)."""
        return loss * self.loss_scale

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Run backward on the scaled loss, so gradients carry the scale."""
        self.scale_loss(loss).backward(retain_graph=retain_graph)

    def scale_gradient(self, module: Any, grad_in: tuple, grad_out: tuple) -> tuple:
        """Backward-hook helper: multiply each incoming gradient by the scale."""
        return tuple(None if g is None else self.loss_scale * g for g in grad_in)

    def update_scale(self, overflow: bool) -> None:
        """Record one optimizer step; a static scale ignores it."""

    def state_dict(self) -> dict[str, Any]:
        """The running state needed to resume with the same scale."""
        return {"dynamic": self.dynamic, "cur_scale": self.cur_scale}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the running state saved by `state_dict`.

        The schedule settings (window, factor, floor) come from the current
        config, not the checkpoint, so a resumed run may change them.
        """
        self.cur_scale = float(state_dict["cur_scale"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cur_scale={self.cur_scale})"


class LossScaler(LossScalerBase):
    """A fixed loss scale (ds_config ``fp16.loss_scale`` > 0, or 1.0 for bf16/fp32)."""

    def __init__(self, scale: float = 1) -> None:
        if scale <= 0:
            raise ValueError(f"static loss scale must be positive, got {scale}")
        super().__init__(scale)


class DynamicLossScaler(LossScalerBase):
    """A loss scale that shrinks on overflow and grows after clean windows.

    See [Note: dynamic loss-scale schedule] at the top of this module.

    Args:
        init_scale: starting scale (ds_config ``2**initial_scale_power``).
        scale_factor: multiplier used to grow and divisor used to shrink.
        scale_window: clean steps after the last overflow before growing.
        min_scale: the scale never drops below this floor.
        delayed_shift: overflows tolerated before shrinking (``hysteresis``).
        consecutive_hysteresis: refill the tolerance on every clean step,
            so only consecutive overflows count towards a shrink.
        raise_error_at_min_scale: raise instead of staying at the floor when
            an overflow happens there.
        dtype: the training dtype; only used to word log messages.
    """

    def __init__(
        self,
        init_scale: float = 2**32,
        scale_factor: float = 2.0,
        scale_window: int = 1000,
        min_scale: float = 1,
        delayed_shift: int = 1,
        consecutive_hysteresis: bool = False,
        raise_error_at_min_scale: bool = True,
        dtype: torch.dtype = torch.half,
    ) -> None:
        if init_scale <= 0 or min_scale <= 0:
            raise ValueError(f"loss scales must be positive, got init_scale={init_scale}, min_scale={min_scale}")
        if scale_factor <= 1:
            raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
        if scale_window < 1 or delayed_shift < 1:
            raise ValueError(f"scale_window and delayed_shift must be >= 1, got {scale_window}, {delayed_shift}")
        super().__init__(init_scale)
        self.dynamic = True
        self.scale_factor = float(scale_factor)
        self.scale_window = int(scale_window)
        self.min_scale = float(min_scale)
        self.delayed_shift = int(delayed_shift)
        self.consecutive_hysteresis = bool(consecutive_hysteresis)
        self.raise_error_at_min_scale = bool(raise_error_at_min_scale)
        self.dtype = dtype
        # Number of update_scale calls so far (optimizer steps, skipped or not).
        self.cur_iter = 0
        # Iteration of the latest overflow; -1 so that the first growth comes
        # after exactly `scale_window` clean steps.
        self.last_overflow_iter = -1
        # Overflows still tolerated before the next shrink.
        self.cur_hysteresis = self.delayed_shift

    def update_scale(self, overflow: bool) -> None:
        """Advance the schedule by one optimizer step."""
        if overflow:
            self._on_overflow()
        else:
            self._on_clean_step()
        self.cur_iter += 1

    def _on_overflow(self) -> None:
        if self.delayed_shift == 1 or self.cur_hysteresis == 1:
            if self.cur_scale <= self.min_scale and self.raise_error_at_min_scale:
                raise LossScaleUnderflowError(
                    f"Gradient overflow at the minimum loss scale ({self.min_scale}): training has diverged. "
                    "Lower the learning rate, check the data, or set a smaller fp16.min_loss_scale."
                )
            new_scale = max(self.cur_scale / self.scale_factor, self.min_scale)
            # Logged on rank 0 only: every rank takes the same decision.
            log_dist(f"Gradient overflow, skipping step. Loss scale {self.cur_scale} -> {new_scale}", ranks=[0])
            self.cur_scale = new_scale
        else:
            log_dist(
                f"Gradient overflow, skipping step. Loss scale kept at {self.cur_scale}, "
                f"hysteresis {self.cur_hysteresis} -> {self.cur_hysteresis - 1}",
                ranks=[0],
            )
            self.cur_hysteresis -= 1
        self.last_overflow_iter = self.cur_iter

    def _on_clean_step(self) -> None:
        if self.consecutive_hysteresis:
            self.cur_hysteresis = self.delayed_shift
        if (self.cur_iter - self.last_overflow_iter) % self.scale_window == 0:
            if not self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            self.cur_scale *= self.scale_factor

    def state_dict(self) -> dict[str, Any]:
        """Scale plus the counters that decide the next shrink or growth."""
        state = super().state_dict()
        state.update(
            cur_iter=self.cur_iter,
            last_overflow_iter=self.last_overflow_iter,
            cur_hysteresis=self.cur_hysteresis,
        )
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore scale and counters; missing counters keep a fresh schedule."""
        super().load_state_dict(state_dict)
        self.cur_iter = int(state_dict.get("cur_iter", self.cur_iter))
        self.last_overflow_iter = int(state_dict.get("last_overflow_iter", self.last_overflow_iter))
        self.cur_hysteresis = int(state_dict.get("cur_hysteresis", self.delayed_shift))

    def __repr__(self) -> str:
        return (
            f"DynamicLossScaler(cur_scale={self.cur_scale}, scale_factor={self.scale_factor}, "
            f"scale_window={self.scale_window}, min_scale={self.min_scale}, delayed_shift={self.delayed_shift}, "
            f"cur_hysteresis={self.cur_hysteresis}, consecutive_hysteresis={self.consecutive_hysteresis})"
        )


def CreateLossScaler(
    dtype: torch.dtype,
    static_loss_scale: float,
    dynamic_scaling: bool,
    dynamic_loss_args: dict[str, Any] | None,
) -> LossScalerBase:
    """Pick the scaler for a training dtype.

    Only fp16 can scale dynamically; bf16 and fp32 have fp32's exponent range
    and always get a static scale of 1.0. `dynamic_loss_args` holds
    `DynamicLossScaler` keyword arguments (see the ``*_LOSS_SCALE`` /
    ``SCALE_WINDOW`` / ... key constants).
    """
    if dtype == torch.half and dynamic_scaling:
        return DynamicLossScaler(dtype=dtype, **(dynamic_loss_args or {}))
    return LossScaler(scale=static_loss_scale if dtype == torch.half else 1.0)


def loss_scaler_from_config(fp16_config: Any) -> LossScalerBase | None:
    """Build the scaler described by a parsed ``fp16`` section.

    `fp16_config` is a `deepspeed.runtime.precision.config.DeepSpeedFP16Config`
    (any object with its attributes works). Returns None when fp16 is off, so
    the caller needs no scaler at all. ``loss_scale == 0`` selects dynamic
    scaling starting at ``2**initial_scale_power``; ``hysteresis`` becomes
    the scaler's ``delayed_shift``.
    """
    if fp16_config is None or not fp16_config.enabled:
        return None
    dynamic = fp16_config.loss_scale == 0
    dynamic_args = None
    if dynamic:
        dynamic_args = {
            INITIAL_LOSS_SCALE: float(2**fp16_config.initial_scale_power),
            SCALE_WINDOW: fp16_config.loss_scale_window,
            DELAYED_SHIFT: fp16_config.hysteresis,
            CONSECUTIVE_HYSTERESIS: fp16_config.consecutive_hysteresis,
            MIN_LOSS_SCALE: fp16_config.min_loss_scale,
        }
    return CreateLossScaler(torch.half, fp16_config.loss_scale, dynamic, dynamic_args)
