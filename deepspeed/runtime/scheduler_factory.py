"""Turn a configured scheduler name, or a client's scheduler, into a scheduler object.

The engine calls ``build_lr_scheduler`` with the parsed ``scheduler.type`` and
``scheduler.params`` of the config, and ``resolve_client_scheduler`` with the
``lr_scheduler`` argument of ``deepspeed.initialize``. Keeping the lookup here
lets the engine stay free of name tables and error wording.
"""

import inspect
from typing import Any, Callable, Mapping, Optional, Union

import torch

from deepspeed.runtime import lr_schedules

__all__ = ["build_lr_scheduler", "resolve_client_scheduler"]


def _deepspeed_schedule(name: str) -> Optional[type]:
    """DeepSpeed's own schedule called exactly ``name``, if there is one."""
    if name in lr_schedules.VALID_LR_SCHEDULES:
        return getattr(lr_schedules, name)
    return None


def _torch_schedule(name: str) -> Optional[type]:
    """``torch.optim.lr_scheduler.<name>`` if it names a scheduler class.

    The module also re-exports helpers (Optimizer, Counter, ...); only classes
    deriving from a torch scheduler base count, so a name like 'Optimizer'
    is reported as unknown instead of being constructed.
    """
    candidate = getattr(torch.optim.lr_scheduler, name, None)
    bases = tuple(getattr(torch.optim.lr_scheduler, base)
                  for base in ("LRScheduler", "ReduceLROnPlateau")
                  if hasattr(torch.optim.lr_scheduler, base))
    if isinstance(candidate, type) and issubclass(candidate, bases):
        return candidate
    return None


def _torch_optimizer(optimizer: Any) -> Any:
    """The object a torch scheduler should drive.

    torch schedulers insist on a ``torch.optim.Optimizer``; a wrapper (such as
    the ZeRO optimizer) that holds one as ``.optimizer`` hands over that inner
    optimizer, whose param groups are the ones the update reads.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    inner = getattr(optimizer, "optimizer", None)
    if isinstance(inner, torch.optim.Optimizer):
        return inner
    return optimizer


def build_lr_scheduler(name: str, params: Optional[Mapping[str, Any]], optimizer: Any) -> Any:
    """Build the scheduler ``name`` with keyword ``params`` over ``optimizer``.

    DeepSpeed's schedules (``VALID_LR_SCHEDULES``) are matched by exact name
    first, then ``torch.optim.lr_scheduler`` classes. Errors name the schedule
    and the parameter at fault so a config typo is obvious from the message.
    """
    params = dict(params or {})
    schedule = _deepspeed_schedule(name)
    target = optimizer
    if schedule is None:
        schedule = _torch_schedule(name)
        target = _torch_optimizer(optimizer)
    if schedule is None:
        raise ValueError(f"Unknown LR scheduler {name!r}. DeepSpeed schedules: {lr_schedules.VALID_LR_SCHEDULES}; "
                         "any class in torch.optim.lr_scheduler is also accepted, by its exact name.")

    # Binding first separates "wrong parameter name / missing parameter" from
    # failures inside the constructor, and lets us list what is accepted.
    signature = inspect.signature(schedule)
    accepted = [p.name for p in list(signature.parameters.values())[1:]
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    # Unknown names are reported before missing ones: a misspelt key usually
    # causes both, and the misspelling is the thing to fix.
    unknown = [key for key in params if key not in accepted]
    if unknown and not takes_any:
        raise TypeError(f"LR scheduler {name!r}: unknown parameter(s) {unknown}; accepted parameters: {accepted}")
    try:
        signature.bind(target, **params)
    except TypeError as err:
        raise TypeError(f"LR scheduler {name!r}: {err}; accepted parameters: {accepted}") from err

    try:
        return schedule(target, **params)
    except (TypeError, ValueError) as err:
        message = str(err)
        if name not in message:
            message = f"LR scheduler {name!r}: {message}"
        # Re-raise as the plain builtin: subclasses may not take a single message.
        kind = TypeError if isinstance(err, TypeError) else ValueError
        raise kind(message) from err


SchedulerOrFactory = Union[Any, Callable[[Any], Any]]


def resolve_client_scheduler(lr_scheduler: Optional[SchedulerOrFactory], optimizer: Any) -> Any:
    """Return the scheduler a client passed to ``initialize``, building it if needed.

    A client may hand over a ready scheduler or a callable ``f(optimizer)``
    that builds one over the engine's optimizer (the only way a client can
    schedule an optimizer the engine created). Anything with a ``step`` method
    is taken to be a scheduler already; ``None`` stays ``None``.
    """
    if lr_scheduler is None:
        return None
    if callable(getattr(lr_scheduler, "step", None)):
        return lr_scheduler
    if not callable(lr_scheduler):
        raise TypeError(f"lr_scheduler must be a scheduler (with a step() method) or a callable "
                        f"f(optimizer) -> scheduler, got {type(lr_scheduler).__name__}")
    scheduler = lr_scheduler(optimizer)
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(f"lr_scheduler callable returned {type(scheduler).__name__}, which has no step() method")
    return scheduler
