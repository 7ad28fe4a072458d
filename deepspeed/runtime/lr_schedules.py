"""DeepSpeed's learning-rate schedules, under DeepSpeed's import path.

Clients import the schedule classes, the schedule-name constants and
``add_tuning_arguments`` from here (``VALID_LR_SCHEDULES`` in particular is read
by HF integrations), so this module is the public face. The warmup family
lives here; LRRangeTest and OneCycle live in ``lr_schedules_range`` and the
shared counter/write-back logic in ``lr_schedules_base``.

All warmup schedules share one ramp. With ``N = max(2, warmup_num_steps)``
and ``it = last_batch_iteration`` (-1 counts as 0)::

    gamma = ln(it + 1) / ln(N)     warmup_type 'log'
    gamma = it / N                 warmup_type 'linear'
    gamma = 1                      once it >= N

N is clamped to 2 because ln(1) = 0 would divide by zero.
"""

import argparse
import math
from typing import Any, List, Optional

from deepspeed.runtime.lr_schedules_base import (LRScheduleBase, ScalarOrList, check_float, check_int,
                                                 check_param_groups, per_group_values, warmup_fraction)
from deepspeed.runtime.lr_schedules_range import LRRangeTest, OneCycle

__all__ = [
    "LR_RANGE_TEST", "ONE_CYCLE", "WARMUP_LR", "WARMUP_DECAY_LR", "WARMUP_COSINE_LR", "VALID_LR_SCHEDULES",
    "WARMUP_LOG_RATE", "WARMUP_LINEAR_RATE", "LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR",
    "WarmupCosineLR", "add_tuning_arguments"
]

LR_RANGE_TEST = "LRRangeTest"
ONE_CYCLE = "OneCycle"
WARMUP_LR = "WarmupLR"
WARMUP_DECAY_LR = "WarmupDecayLR"
WARMUP_COSINE_LR = "WarmupCosineLR"
VALID_LR_SCHEDULES = [LR_RANGE_TEST, ONE_CYCLE, WARMUP_LR, WARMUP_DECAY_LR, WARMUP_COSINE_LR]

WARMUP_LOG_RATE = "log"
WARMUP_LINEAR_RATE = "linear"
_WARMUP_TYPES = (WARMUP_LOG_RATE, WARMUP_LINEAR_RATE)


def _check_warmup(schedule: str, warmup_num_steps: Any, warmup_type: Any) -> int:
    """Validate the shared warmup arguments and return the clamped step count N."""
    steps = check_int(warmup_num_steps, schedule, "warmup_num_steps", 0)
    if warmup_type not in _WARMUP_TYPES:
        raise ValueError(f"{schedule}: warmup_type must be one of {list(_WARMUP_TYPES)}, got {warmup_type!r}")
    return max(2, steps)


def _check_total(schedule: str, total_num_steps: Any, warmup_num_steps: Any) -> int:
    """Validate ``total_num_steps``: a schedule that ends inside its warmup is a config mistake."""
    total = check_int(total_num_steps, schedule, "total_num_steps", 1)
    warmup_num_steps = check_int(warmup_num_steps, schedule, "warmup_num_steps", 0)
    if total < warmup_num_steps:
        raise ValueError(f"{schedule}: total_num_steps ({total}) must be >= warmup_num_steps ({warmup_num_steps})")
    return total


class WarmupLR(LRScheduleBase):
    """Ramp each group's lr from ``warmup_min_lr`` to ``warmup_max_lr``, then hold it.

    ``lr = min_lr + (max_lr - min_lr) * gamma`` with gamma from the module
    docstring. ``warmup_max_lr=None`` warms up to each group's lr as it was when
    the schedule was built. Either bound may be a list with one value per
    param group.
    """

    def __init__(self,
                 optimizer: Any,
                 warmup_min_lr: ScalarOrList = 0.0,
                 warmup_max_lr: Optional[ScalarOrList] = None,
                 warmup_num_steps: int = 1000,
                 warmup_type: str = WARMUP_LOG_RATE,
                 last_batch_iteration: int = -1) -> None:
        name = type(self).__name__
        self.optimizer = optimizer
        groups = check_param_groups(optimizer, name)
        # Read the target lrs before anything is written: None means "the lr
        # the optimizer was configured with", which _start is about to overwrite.
        self.min_lrs = per_group_values(warmup_min_lr, groups, name, "warmup_min_lr")
        self.max_lrs = per_group_values(warmup_max_lr, groups, name, "warmup_max_lr")
        self.delta_lrs = [high - low for low, high in zip(self.min_lrs, self.max_lrs)]
        # Clamped to >= 2 so that the log ramp's ln(N) is never 0.
        self.warmup_num_steps = _check_warmup(name, warmup_num_steps, warmup_type)
        self.warmup_type = warmup_type
        self._start(last_batch_iteration)

    def _get_gamma(self) -> float:
        """Fraction of (max_lr - min_lr) to add at ``last_batch_iteration``."""
        return warmup_fraction(self.last_batch_iteration, self.warmup_num_steps, self.warmup_type)

    def get_lr(self) -> List[float]:
        """Learning rate of each param group at ``last_batch_iteration``."""
        gamma = self._get_gamma()
        return [low + delta * gamma for low, delta in zip(self.min_lrs, self.delta_lrs)]


class WarmupDecayLR(WarmupLR):
    """WarmupLR followed by a linear decay that reaches its floor at ``total_num_steps``.

    After the warmup (``it >= N``)::

        gamma = max(0, (total_num_steps - it) / max(1, total_num_steps - N))
        lr    = min_lr + (max_lr - min_lr) * gamma

    so the lr falls from ``warmup_max_lr`` at it = N to ``warmup_min_lr`` (0 by
    default) at it = ``total_num_steps`` and stays there.
    """

    def __init__(self,
                 optimizer: Any,
                 total_num_steps: int,
                 warmup_min_lr: ScalarOrList = 0.0,
                 warmup_max_lr: Optional[ScalarOrList] = None,
                 warmup_num_steps: int = 1000,
                 warmup_type: str = WARMUP_LOG_RATE,
                 last_batch_iteration: int = -1) -> None:
        # Set before super().__init__, which applies the first lr and so needs it.
        self.total_num_steps = _check_total(type(self).__name__, total_num_steps, warmup_num_steps)
        super().__init__(optimizer, warmup_min_lr, warmup_max_lr, warmup_num_steps, warmup_type,
                         last_batch_iteration)

    def _get_gamma(self) -> float:
        if self.last_batch_iteration < self.warmup_num_steps:
            return super()._get_gamma()
        remaining = self.total_num_steps - self.last_batch_iteration
        return max(0.0, remaining / max(1, self.total_num_steps - self.warmup_num_steps))


class WarmupCosineLR(LRScheduleBase):
    """Scale each group's original lr by a ratio: warm up, then cosine-anneal.

    ``org_lr`` is each group's lr when the schedule is built; the applied lr is
    ``org_lr * ratio``. During warmup (``it < N``)::

        ratio = warmup_min_ratio + (1 - warmup_min_ratio) * gamma

    After it, with ``p = (it - N + 1) / (total_num_steps - N)`` clamped to [0, 1]::

        ratio = cos_min_ratio + (1 - cos_min_ratio) * (1 + cos(pi * p)) / 2

    The ratio reaches ``cos_min_ratio`` at ``it = total_num_steps - 1`` and stays
    there (the clamp keeps the cosine from climbing back up if training runs
    past ``total_num_steps``).
    """

    def __init__(self,
                 optimizer: Any,
                 total_num_steps: int,
                 warmup_min_ratio: float = 0.0,
                 warmup_num_steps: int = 1000,
                 cos_min_ratio: float = 0.0001,
                 warmup_type: str = WARMUP_LOG_RATE,
                 last_batch_iteration: int = -1) -> None:
        name = type(self).__name__
        self.optimizer = optimizer
        groups = check_param_groups(optimizer, name)
        self.total_num_steps = _check_total(name, total_num_steps, warmup_num_steps)
        self.warmup_num_steps = _check_warmup(name, warmup_num_steps, warmup_type)
        self.warmup_type = warmup_type
        # Ratio of org_lr at the first step, and the floor the cosine settles on.
        self.warmup_min_ratio = check_float(warmup_min_ratio, name, "warmup_min_ratio", 0.0)
        self.cos_min_ratio = check_float(cos_min_ratio, name, "cos_min_ratio", 0.0)
        # The configured lrs the ratios scale; captured before _start rewrites them.
        self.org_lrs = [float(group["lr"]) for group in groups]
        self._start(last_batch_iteration)

    def get_lr_ratio(self) -> float:
        """The multiplier applied to every group's original lr at ``last_batch_iteration``."""
        it = self.last_batch_iteration
        if it < self.warmup_num_steps:
            gamma = warmup_fraction(it, self.warmup_num_steps, self.warmup_type)
            return self.warmup_min_ratio + (1.0 - self.warmup_min_ratio) * gamma
        decay_steps = self.total_num_steps - self.warmup_num_steps
        progress = 1.0 if decay_steps <= 0 else min(1.0, (it - self.warmup_num_steps + 1) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.cos_min_ratio + (1.0 - self.cos_min_ratio) * cosine

    def get_lr(self) -> List[float]:
        """Learning rate of each param group at ``last_batch_iteration``."""
        ratio = self.get_lr_ratio()
        return [lr * ratio for lr in self.org_lrs]


def _str_to_bool(text: str) -> bool:
    """argparse type for booleans: ``type=bool`` would turn the string 'False' into True."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def add_tuning_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DeepSpeed's schedule flags (one argument group) to ``parser`` and return it.

    Flag names and defaults follow DeepSpeed so existing launch scripts parse
    unchanged. Boolean flags accept both ``--flag`` and ``--flag true|false``.
    """
    group = parser.add_argument_group("Convergence Tuning", "Learning-rate schedule settings")
    group.add_argument("--lr_schedule", type=str, default=None, help="Name of the LR schedule to train with.")

    group.add_argument("--lr_range_test_min_lr", type=float, default=0.001, help="LRRangeTest: starting lr.")
    group.add_argument("--lr_range_test_step_rate", type=float, default=1.0,
                       help="LRRangeTest: lr growth per interval, as a multiple of the starting lr.")
    group.add_argument("--lr_range_test_step_size", type=int, default=1000,
                       help="LRRangeTest: training steps per interval.")
    group.add_argument("--lr_range_test_staircase", type=_str_to_bool, nargs="?", const=True, default=False,
                       help="LRRangeTest: grow the lr in steps instead of continuously.")

    group.add_argument("--cycle_first_step_size", type=int, default=1000,
                       help="OneCycle: steps from the minimum lr up to the peak.")
    group.add_argument("--cycle_first_stair_count", type=int, default=0,
                       help="OneCycle: stairs on the way up (0 = smooth).")
    group.add_argument("--cycle_second_step_size", type=int, default=None,
                       help="OneCycle: steps from the peak back down (default: the first step size).")
    group.add_argument("--cycle_second_stair_count", type=int, default=None,
                       help="OneCycle: stairs on the way down (default: the first stair count).")
    group.add_argument("--decay_step_size", type=int, default=1000,
                       help="OneCycle: steps per decay interval after the cycle.")
    group.add_argument("--cycle_min_lr", type=float, default=0.01, help="OneCycle: lr at both ends of the cycle.")
    group.add_argument("--cycle_max_lr", type=float, default=0.1, help="OneCycle: lr at the peak of the cycle.")
    group.add_argument("--decay_lr_rate", type=float, default=0.0, help="OneCycle: lr decay rate after the cycle.")
    group.add_argument("--cycle_momentum", type=_str_to_bool, nargs="?", const=True, default=False,
                       help="OneCycle: cycle momentum against the lr.")
    group.add_argument("--cycle_min_mom", type=float, default=0.8, help="OneCycle: momentum at the lr peak.")
    group.add_argument("--cycle_max_mom", type=float, default=0.9, help="OneCycle: momentum at the cycle ends.")
    group.add_argument("--decay_mom_rate", type=float, default=0.0,
                       help="OneCycle: momentum decay rate after the cycle.")

    group.add_argument("--warmup_min_lr", type=float, default=0.0, help="Warmup: lr at the first step.")
    group.add_argument("--warmup_max_lr", type=float, default=0.001, help="Warmup: lr at the end of warmup.")
    group.add_argument("--warmup_num_steps", type=int, default=1000, help="Warmup: number of warmup steps.")
    group.add_argument("--warmup_type", type=str, default=WARMUP_LOG_RATE, choices=list(_WARMUP_TYPES),
                       help="Warmup: shape of the ramp, 'log' or 'linear'.")
    return parser
