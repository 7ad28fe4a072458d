"""Builds the basic (unwrapped) optimizer named by the config's `optimizer` section.

"Adam" means AdamW unless `adam_w_mode: false`; "AdamW" is always AdamW.
Adam/AdamW become `FusedAdam`, or `DeepSpeedCPUAdam` when the optimizer is
offloaded to the CPU (`torch_adam: true` keeps torch's own); Lion becomes
`FusedLion` / `DeepSpeedCPULion`, Adagrad torch's / `DeepSpeedCPUAdagrad`.
Any other name is looked up in `torch.optim`.
"""
from typing import Any, Dict, Iterable

import torch

from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad
from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
from deepspeed.ops.lion import DeepSpeedCPULion, FusedLion
from deepspeed.runtime.lion import Lion

__all__ = ["build_optimizer", "ZERO_SUPPORTED_OPTIMIZERS", "DEEPSPEED_OPTIMIZERS", "DS_CPU_OPTIMIZERS"]

ADAM, ADAMW, ADAGRAD, LION = "adam", "adamw", "adagrad", "lion"
#: names DeepSpeed reserves for its own optimizers
DEEPSPEED_OPTIMIZERS = [ADAM, ADAMW, "lamb", "onebitadam", "zerooneadam", "onebitlamb", ADAGRAD, LION, "muon"]
#: optimizers the ZeRO wrapper is known to drive correctly
ZERO_SUPPORTED_OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad, torch.optim.SGD, Lion, FusedAdam,
                             FusedLion, DeepSpeedCPUAdam, DeepSpeedCPUAdagrad, DeepSpeedCPULion)
#: what `zero_force_ds_cpu_optimizer` requires under optimizer offload
DS_CPU_OPTIMIZERS = (DeepSpeedCPUAdam, DeepSpeedCPUAdagrad, DeepSpeedCPULion)


def _adam(params: Iterable, name: str, kwargs: Dict[str, Any], offload: bool) -> torch.optim.Optimizer:
    kwargs = dict(kwargs)
    torch_adam = kwargs.pop("torch_adam", False)
    adam_w_mode = name == ADAMW or kwargs.pop("adam_w_mode", True)
    kwargs.pop("adam_w_mode", None)
    kwargs.setdefault("weight_decay", 0.0)  # DeepSpeed's default, unlike torch AdamW's 0.01
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    if torch_adam:
        return (torch.optim.AdamW if adam_w_mode else torch.optim.Adam)(params, **kwargs)
    if offload:
        return DeepSpeedCPUAdam(params, adamw_mode=adam_w_mode, **kwargs)
    return FusedAdam(params, adam_w_mode=adam_w_mode, **kwargs)


def build_optimizer(name: str, params: Dict[str, Any], model_parameters: Iterable,
                    offload: bool = False) -> torch.optim.Optimizer:
    """Instantiate the optimizer `name` (case-insensitive for DeepSpeed's names).

    `offload`: the optimizer state lives on the CPU (ZeRO-Offload), so the
    SIMD CPU kernels are used.
    """
    lowered = name.lower()
    params = dict(params or {})
    try:
        if lowered in (ADAM, ADAMW):
            return _adam(model_parameters, lowered, params, offload)
        if lowered == ADAGRAD:
            return (DeepSpeedCPUAdagrad if offload else torch.optim.Adagrad)(model_parameters, **params)
        if lowered == LION:
            if "betas" in params:
                params["betas"] = tuple(params["betas"])
            return (DeepSpeedCPULion if offload else FusedLion)(model_parameters, **params)
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
