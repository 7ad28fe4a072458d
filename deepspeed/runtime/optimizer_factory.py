"""Builds the basic (unwrapped) optimizer named by the config's `optimizer` section.

"Adam" means AdamW unless `adam_w_mode: false`; "AdamW" is always AdamW.
Any other name is looked up in `torch.optim`. The ops issue swaps the torch
Adam for FusedAdam / DeepSpeedCPUAdam here.
"""
from typing import Any, Dict, Iterable

import torch

from deepspeed.runtime.lion import Lion

__all__ = ["build_optimizer", "ZERO_SUPPORTED_OPTIMIZERS", "DEEPSPEED_OPTIMIZERS"]

ADAM, ADAMW, ADAGRAD, LION = "adam", "adamw", "adagrad", "lion"
#: names DeepSpeed reserves for its own optimizers
DEEPSPEED_OPTIMIZERS = [ADAM, ADAMW, "lamb", "onebitadam", "zerooneadam", "onebitlamb", ADAGRAD, LION, "muon"]
#: optimizers the ZeRO wrapper is known to drive correctly
ZERO_SUPPORTED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.SGD, Lion)


def _adam(params: Iterable, name: str, kwargs: Dict[str, Any]) -> torch.optim.Optimizer:
    kwargs = dict(kwargs)
    kwargs.pop("torch_adam", None)
    adam_w_mode = kwargs.pop("adam_w_mode", True)
    kwargs.setdefault("weight_decay", 0.0)  # DeepSpeed's default, unlike torch AdamW's 0.01
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    if name == ADAMW or adam_w_mode:
        return torch.optim.AdamW(params, **kwargs)
    return torch.optim.Adam(params, **kwargs)


def build_optimizer(name: str, params: Dict[str, Any], model_parameters: Iterable) -> torch.optim.Optimizer:
    """Instantiate the optimizer `name` (case-insensitive for DeepSpeed's names)."""
    lowered = name.lower()
    params = dict(params or {})
    try:
        if lowered in (ADAM, ADAMW):
            return _adam(model_parameters, lowered, params)
        if lowered == ADAGRAD:
            return torch.optim.Adagrad(model_parameters, **params)
        if lowered == LION:
            if "betas" in params:
                params["betas"] = tuple(params["betas"])
            return Lion(model_parameters, **params)
    except TypeError as err:
        raise ValueError(f"optimizer '{name}': bad parameter in optimizer.params {sorted(params)}: {err}") from None
    if lowered in DEEPSPEED_OPTIMIZERS:
        raise ValueError(f"optimizer '{name}' is not available in this build; use one of "
                         f"Adam, AdamW, Adagrad, Lion or a torch.optim class name")
    cls = getattr(torch.optim, name, None)
    if cls is None:
        matches = [n for n in dir(torch.optim) if n.lower() == lowered]
        cls = getattr(torch.optim, matches[0]) if matches else None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"unknown optimizer type '{name}': expected Adam, AdamW, Adagrad, Lion or a "
                         f"torch.optim class name such as SGD or RMSprop")
    try:
        return cls(model_parameters, **params)
    except TypeError as err:
        raise ValueError(f"optimizer '{name}': bad parameter in optimizer.params {sorted(params)}: {err}") from None
