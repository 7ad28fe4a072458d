"""Shared machinery for DeepSpeed's step-indexed learning-rate schedules.

Every DeepSpeed schedule is a pure function of one integer, the index of the
last optimizer step taken (``last_batch_iteration``). The base class here owns
that counter and the act of writing the function's value into
``optimizer.param_groups``; subclasses only say what the value is.

[Note: schedule iteration convention]
``last_batch_iteration == -1`` means "no optimizer step taken yet", and every
schedule defines its value there as its starting lr. Building a schedule with
-1 writes that value into the optimizer straight away, so the very first
optimizer step already runs at the starting lr. ``step()`` then advances the
counter to 0, 1, 2, ... after each optimizer step. The warmup schedules map -1
and 0 to the same lr (so the starting lr serves two optimizer steps, as in
DeepSpeed); LRRangeTest and OneCycle index by ``last_batch_iteration + 1``, so
-1 is their step 0.

The schedules deliberately do not require a ``torch.optim.Optimizer``: the
ZeRO optimizer wrapper is a plain object that exposes ``param_groups``, and the
schedules must drive it the same way.
"""

import math
from typing import Any, Dict, List, Optional, Sequence, Union

__all__ = [
    "LRScheduleBase", "ScalarOrList", "check_float", "check_int", "check_param_groups", "per_group_values",
    "warmup_fraction"
]

ScalarOrList = Union[float, Sequence[float]]


def check_param_groups(optimizer: Any, schedule: str) -> List[Dict[str, Any]]:
    """Return ``optimizer.param_groups`` after checking it looks like one.

    Failing here, at construction, gives a far clearer message than a KeyError
    on the first ``step()`` deep inside a training loop.
    """
    groups = getattr(optimizer, "param_groups", None)
    if not isinstance(groups, list) or not groups:
        raise TypeError(
            f"{schedule}: optimizer must expose a non-empty list `param_groups` "
            f"(got {type(optimizer).__name__})"
        )
    for index, group in enumerate(groups):
        if not isinstance(group, dict) or "lr" not in group:
            raise TypeError(f"{schedule}: optimizer.param_groups[{index}] must be a dict with an 'lr' entry")
    return groups


def per_group_values(value: Optional[ScalarOrList], groups: List[Dict[str, Any]], schedule: str,
                     name: str) -> List[float]:
    """Expand a scalar-or-list schedule argument into one float per param group.

    ``None`` means "use each group's current lr", which is how DeepSpeed lets a
    schedule warm up to whatever lr the optimizer was built with.
    """
    if value is None:
        return [float(group["lr"]) for group in groups]
    if isinstance(value, (list, tuple)):
        if len(value) != len(groups):
            raise ValueError(f"{schedule}: {name} has {len(value)} values but the optimizer has "
                             f"{len(groups)} param groups")
        values = [float(v) for v in value]
    else:
        values = [float(value)] * len(groups)
    for v in values:
        if not math.isfinite(v) or v < 0.0:
            raise ValueError(f"{schedule}: {name} must be finite and >= 0, got {v}")
    return values


def check_int(value: Any, schedule: str, name: str, minimum: int) -> int:
    """Validate an integer schedule argument (bools are rejected: True is not a step count)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise TypeError(f"{schedule}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{schedule}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_float(value: Any, schedule: str, name: str, minimum: Optional[float] = None) -> float:
    """Validate a real-valued schedule argument, optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{schedule}: {name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{schedule}: {name} must be >= {minimum}, got {value}")
    return float(value)


class LRScheduleBase:
    """Counter plus write-back shared by every DeepSpeed schedule.

    Subclasses set ``self.optimizer`` and their own fields, call
    ``_start(last_batch_iteration)`` last, and implement ``get_lr()`` for the
    current ``last_batch_iteration`` (which may be -1; see the note above).
    """

    def _start(self, last_batch_iteration: int) -> None:
        """Record the counter and, for a fresh run, apply the iteration-0 values."""
        self.last_batch_iteration = check_int(last_batch_iteration, type(self).__name__, "last_batch_iteration",
                                              -1)
        # Only a fresh run (-1) touches the optimizer at construction. A caller
        # that passes a later iteration is resuming and will either call step()
        # or load_state_dict(), both of which write the lr themselves.
        self._last_lr: Optional[List[float]] = None
        if self.last_batch_iteration == -1:
            self._apply()

    def get_lr(self) -> List[float]:
        """Learning rate of each param group at ``last_batch_iteration``."""
        raise NotImplementedError

    def _apply(self) -> None:
        """Write the current values into the optimizer; subclasses may add momentum."""
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def step(self, last_batch_iteration: Optional[int] = None) -> None:
        """Advance to the next iteration (or jump to the given one) and apply it."""
        if last_batch_iteration is None:
            last_batch_iteration = self.last_batch_iteration + 1
        self.last_batch_iteration = check_int(last_batch_iteration, type(self).__name__, "last_batch_iteration",
                                              -1)
        self._apply()

    def get_last_lr(self) -> List[float]:
        """The lrs most recently written into the optimizer, one per param group."""
        if self._last_lr is None:
            raise RuntimeError(f"{type(self).__name__}.get_last_lr() called before any lr was applied; "
                               "call step() first")
        return list(self._last_lr)

    def state_dict(self) -> Dict[str, int]:
        """Everything needed to resume: the schedule is a function of the counter alone."""
        return {"last_batch_iteration": self.last_batch_iteration}

    def load_state_dict(self, sd: Dict[str, Any]) -> None:
        """Restore the counter and re-apply its values.

        Re-applying matters: without it the first optimizer step after a resume
        would run at whatever lr the freshly built schedule wrote (iteration 0),
        not at the resumed iteration's lr.
        """
        if "last_batch_iteration" not in sd:
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing 'last_batch_iteration'")
        self.last_batch_iteration = check_int(sd["last_batch_iteration"], type(self).__name__,
                                              "last_batch_iteration", -1)
        self._apply()


def warmup_fraction(iteration: int, warmup_num_steps: int, warmup_type: str) -> float:
    """Fraction of the warmup completed at ``iteration`` (0 at the start, 1 once done).

    log:    ln(it + 1) / ln(N)
    linear: it / N
    with N = ``warmup_num_steps`` (already clamped to >= 2 so ln(N) > 0).
    Iterations before the first step (-1) count as 0, and from N on the
    fraction is exactly 1.
    """
    it = max(iteration, 0)
    if it >= warmup_num_steps:
        return 1.0
    if warmup_type == "log":
        return math.log(it + 1) / math.log(warmup_num_steps)
    return it / warmup_num_steps
