"""LRRangeTest and OneCycle: DeepSpeed's exploratory and cyclic schedules.

Both index their shape by ``k = last_batch_iteration + 1`` (the number of
optimizer steps already taken), so a freshly built schedule (-1) sits at k = 0;
see [Note: schedule iteration convention] in ``lr_schedules_base``.
"""

import logging
import math
from typing import Any, Dict, List, Optional

from deepspeed.runtime.lr_schedules_base import (LRScheduleBase, ScalarOrList, check_float, check_int,
                                                 check_param_groups, per_group_values)

__all__ = ["LRRangeTest", "OneCycle"]

_log = logging.getLogger(__name__)


class LRRangeTest(LRScheduleBase):
    """Grow the lr without bound to find the largest lr that still trains.

    With ``k = last_batch_iteration + 1`` steps taken::

        interval = k / step_size            (continuous)
        interval = floor(k / step_size)     (staircase)
        lr       = min_lr * (1 + step_rate * interval)

    so the lr starts at ``min_lr`` and gains ``min_lr * step_rate`` every
    ``step_size`` steps, either smoothly or in jumps.
    """

    def __init__(self,
                 optimizer: Any,
                 lr_range_test_min_lr: ScalarOrList = 1e-3,
                 lr_range_test_step_size: int = 2000,
                 lr_range_test_step_rate: float = 1.0,
                 lr_range_test_staircase: bool = False,
                 last_batch_iteration: int = -1) -> None:
        name = type(self).__name__
        self.optimizer = optimizer
        groups = check_param_groups(optimizer, name)
        # Per-group starting lrs; one scalar is shared by all groups.
        self.min_lr = per_group_values(lr_range_test_min_lr, groups, name, "lr_range_test_min_lr")
        step_size = check_float(lr_range_test_step_size, name, "lr_range_test_step_size")
        if step_size <= 0:
            raise ValueError(f"{name}: lr_range_test_step_size must be > 0, got {lr_range_test_step_size}")
        # Steps per unit of growth; a float is fine, only the ratio k/step_size matters.
        self.step_size = step_size
        # Growth per unit interval, as a multiple of min_lr.
        self.step_rate = check_float(lr_range_test_step_rate, name, "lr_range_test_step_rate")
        if not isinstance(lr_range_test_staircase, bool):
            raise TypeError(f"{name}: lr_range_test_staircase must be a bool, got {lr_range_test_staircase!r}")
        # Whether the interval is floored, giving flat stairs instead of a ramp.
        self.staircase = lr_range_test_staircase
        self._start(last_batch_iteration)

    def _interval(self) -> float:
        steps_taken = self.last_batch_iteration + 1
        if self.staircase:
            return float(math.floor(steps_taken / self.step_size))
        return steps_taken / self.step_size

    def get_lr(self) -> List[float]:
        """Learning rate of each param group at ``last_batch_iteration``."""
        growth = 1.0 + self.step_rate * self._interval()
        return [lr * growth for lr in self.min_lr]


def _momentum_key(group: Dict[str, Any]) -> Optional[str]:
    """Which entry of a param group holds its first-moment coefficient, if any.

    Adam-style optimizers keep it as ``betas[0]``; SGD-style ones as ``momentum``.
    """
    if "betas" in group:
        return "betas"
    if "momentum" in group:
        return "momentum"
    return None


class OneCycle(LRScheduleBase):
    """The 1Cycle policy: one triangular lr cycle, then a slow decay.

    Let ``k = last_batch_iteration + 1``, ``S1 = cycle_first_step_size``,
    ``S2 = cycle_second_step_size`` (defaults to S1) and ``T = S1 + S2``.

    Cycle phase (``last_batch_iteration < T``, i.e. ``k <= T``). A scale
    ``s`` rises linearly from 0 to 1 over the first S1 steps and falls back to 0
    over the next S2 steps::

        s = k / S1              for k <= S1
        s = (T - k) / S2        for S1 < k <= T
        lr       = min_lr + (max_lr - min_lr) * s
        momentum = max_mom - (max_mom - min_mom) * s

    Momentum moves against the lr: it is lowest when the lr peaks. With
    ``cycle_first_stair_count = n > 0`` the rising fraction ``k / S1`` is
    floored to a multiple of ``1/n`` (n flat stairs before the peak); likewise
    ``cycle_second_stair_count`` (defaults to the first) for the falling side.
    A count of 0 gives a plain linear ramp.

    Decay phase (``last_batch_iteration >= T``). With ``d = k - T`` steps past
    the cycle and ``D = decay_step_size``::

        lr       = min_lr / (1 + decay_lr_rate * d / D)
        momentum = max_mom * (1 + decay_mom_rate * d / D)

    A zero ``decay_step_size`` or rate holds the lr at ``min_lr`` (momentum at
    ``max_mom``). Note the momentum decay *raises* momentum for a positive
    rate; that is DeepSpeed's definition and is kept for compatibility.

    Momentum is written into ``betas[0]`` (Adam-style groups, keeping the other
    betas) or ``momentum`` (SGD-style groups). If no group has either, momentum
    cycling is switched off with a warning.
    """

    def __init__(self,
                 optimizer: Any,
                 cycle_min_lr: ScalarOrList,
                 cycle_max_lr: ScalarOrList,
                 decay_lr_rate: float = 0.,
                 cycle_first_step_size: int = 2000,
                 cycle_second_step_size: Optional[int] = None,
                 cycle_first_stair_count: int = 0,
                 cycle_second_stair_count: Optional[int] = None,
                 decay_step_size: int = 0,
                 cycle_momentum: bool = True,
                 cycle_min_mom: float = 0.8,
                 cycle_max_mom: float = 0.9,
                 decay_mom_rate: float = 0.,
                 last_batch_iteration: int = -1) -> None:
        name = type(self).__name__
        self.optimizer = optimizer
        groups = check_param_groups(optimizer, name)

        # --- cycle shape ---
        first = check_float(cycle_first_step_size, name, "cycle_first_step_size")
        second = first if cycle_second_step_size is None else check_float(cycle_second_step_size, name,
                                                                          "cycle_second_step_size")
        if first <= 0 or second <= 0:
            raise ValueError(f"{name}: cycle_first_step_size and cycle_second_step_size must be > 0, "
                             f"got {cycle_first_step_size} and {cycle_second_step_size}")
        # Steps spent rising (S1) and falling (S2); their sum ends the cycle.
        self.first_step_size = first
        self.second_step_size = second
        self.total_size = first + second
        # Number of flat stairs on each side of the peak (0 = smooth ramp).
        self.first_stair_count = check_int(cycle_first_stair_count, name, "cycle_first_stair_count", 0)
        self.second_stair_count = (self.first_stair_count if cycle_second_stair_count is None else check_int(
            cycle_second_stair_count, name, "cycle_second_stair_count", 0))

        # --- lr ---
        self.min_lrs = per_group_values(cycle_min_lr, groups, name, "cycle_min_lr")
        self.max_lrs = per_group_values(cycle_max_lr, groups, name, "cycle_max_lr")
        for low, high in zip(self.min_lrs, self.max_lrs):
            if high < low:
                raise ValueError(f"{name}: cycle_max_lr ({high}) must be >= cycle_min_lr ({low})")
        # Steps per unit of post-cycle decay; 0 disables the decay.
        self.decay_step_size = check_float(decay_step_size, name, "decay_step_size", 0.0)
        self.decay_lr_rate = check_float(decay_lr_rate, name, "decay_lr_rate", 0.0)

        # --- momentum ---
        if not isinstance(cycle_momentum, bool):
            raise TypeError(f"{name}: cycle_momentum must be a bool, got {cycle_momentum!r}")
        self.min_mom = check_float(cycle_min_mom, name, "cycle_min_mom", 0.0)
        self.max_mom = check_float(cycle_max_mom, name, "cycle_max_mom", 0.0)
        self.decay_mom_rate = check_float(decay_mom_rate, name, "decay_mom_rate", 0.0)
        if cycle_momentum and all(_momentum_key(group) is None for group in groups):
            _log.warning("%s: cycle_momentum disabled: no param group has 'betas' or 'momentum'", name)
            cycle_momentum = False
        # Whether momentum is cycled against the lr and written into the groups.
        self.cycle_momentum = cycle_momentum

        self._start(last_batch_iteration)

    def _scale(self, steps_taken: int) -> float:
        """Height of the triangle (0 at the ends, 1 at the peak) after ``steps_taken`` steps."""
        if steps_taken <= self.first_step_size:
            rising = steps_taken / self.first_step_size
            if self.first_stair_count > 0:
                rising = math.floor(rising * self.first_stair_count) / self.first_stair_count
            return rising
        falling = (steps_taken - self.first_step_size) / self.second_step_size
        if self.second_stair_count > 0:
            falling = math.floor(falling * self.second_stair_count) / self.second_stair_count
        return 1.0 - falling

    def _decay_interval(self, rate: float) -> Optional[float]:
        """``d / D`` in the decay phase, or None when the decay is switched off."""
        if self.decay_step_size == 0 or rate == 0:
            return None
        return (self.last_batch_iteration + 1 - self.total_size) / self.decay_step_size

    def _in_cycle(self) -> bool:
        return self.last_batch_iteration < self.total_size

    def get_lr(self) -> List[float]:
        """Learning rate of each param group at ``last_batch_iteration``."""
        if self._in_cycle():
            scale = self._scale(self.last_batch_iteration + 1)
            return [low + (high - low) * scale for low, high in zip(self.min_lrs, self.max_lrs)]
        interval = self._decay_interval(self.decay_lr_rate)
        if interval is None:
            return list(self.min_lrs)
        return [low / (1.0 + self.decay_lr_rate * interval) for low in self.min_lrs]

    def get_mom(self) -> Optional[List[float]]:
        """First-moment coefficient of each param group, or None when not cycling momentum."""
        if not self.cycle_momentum:
            return None
        if self._in_cycle():
            momentum = self.max_mom - (self.max_mom - self.min_mom) * self._scale(self.last_batch_iteration + 1)
        else:
            interval = self._decay_interval(self.decay_mom_rate)
            momentum = self.max_mom if interval is None else self.max_mom * (1.0 + self.decay_mom_rate * interval)
        return [momentum] * len(self.optimizer.param_groups)

    def _apply(self) -> None:
        super()._apply()
        momenta = self.get_mom()
        if momenta is None:
            return
        for group, momentum in zip(self.optimizer.param_groups, momenta):
            key = _momentum_key(group)
            if key == "betas":
                group["betas"] = (momentum, *tuple(group["betas"])[1:])
            elif key == "momentum":
                group["momentum"] = momentum
