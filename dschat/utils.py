"""Small helpers shared by the DS-Chat steps (spec §4 "Helpers").

Everything distributed goes through `deepspeed.comm` and every ZeRO-3 gather
through `deepspeed.zero.GatheredParameters`, the public API a user script
would use. The ZeRO-3 branch is taken only when a parameter carries `ds_id`
(the attribute a partitioned parameter has), and `deepspeed.zero` is looked
up at call time, so this code runs today on ZeRO 0/1/2 and picks up ZeRO-3
unchanged once it exists.
"""
from __future__ import annotations

import contextlib
import importlib
import random
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch
import transformers

import deepspeed
from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
# Re-exported for DS-Chat scripts, which import it from their utils module.
from dschat.data.tokenizer import load_hf_tokenizer

__all__ = [
    "print_rank_0",
    "is_rank_0",
    "to_device",
    "set_random_seed",
    "get_all_reduce_mean",
    "moving_average",
    "ExponentialMovingAverage",
    "get_optimizer",
    "get_lr_scheduler",
    "position_ids_from_mask",
    "is_zero3_param",
    "gathered_parameters",
    "unwrap_model",
    "load_hf_tokenizer",
]


def is_rank_0() -> bool:
    """True on global rank 0, and in a process without a process group."""
    return not dist.is_initialized() or dist.get_rank() == 0


def print_rank_0(msg: Any, rank: Optional[int] = None) -> None:
    """Print once per job: on `rank` <= 0 when given, else on global rank 0."""
    if rank is not None:
        if rank <= 0:
            print(msg, flush=True)
    elif is_rank_0():
        print(msg, flush=True)


def to_device(batch: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """Move every tensor value of `batch` to `device`; other values are kept as they are."""
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def set_random_seed(seed: Optional[int]) -> None:
    """Seed python, numpy, torch and the accelerator; `None` leaves every RNG alone (spec §4)."""
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    get_accelerator().manual_seed_all(seed)


def get_all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over all ranks (sum all-reduce / world size).

    Unlike the original, the argument is left untouched: the reduction runs on
    a copy, so a caller's loss tensor is not silently turned into a sum.
    """
    if not dist.is_initialized():
        return tensor.clone()
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced / dist.get_world_size()


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: `cumsum(mask) - 1`, pads set to 1.

    attention_mask: (B, L), 1 for real tokens. Returns (B, L) long.
    With left-padded prompts (step 3) a model fed `arange(L)` would see a
    prompt's first token at a position that depends on how much padding its
    batch needed. HF `generate` derives positions from the mask this way, so
    the actor, critic and reward forwards should too; the pad value 1 only
    has to be a valid index (pads are masked out of attention).
    """
    mask = attention_mask.long()
    positions = mask.cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 1)


# --------------------------------------------------------------------------
# ZeRO-3 aware access to parameters.
# --------------------------------------------------------------------------


def is_zero3_param(param: torch.Tensor) -> bool:
    """True for a parameter partitioned by ZeRO-3 (it carries `ds_id`)."""
    return hasattr(param, "ds_id")


def gathered_parameters(params: Iterable[torch.nn.Parameter],
                        modifier_rank: Optional[int] = None) -> contextlib.AbstractContextManager:
    """Context in which every parameter of `params` holds its full data.

    A no-op unless one of them is ZeRO-3 partitioned; then it is
    `deepspeed.zero.GatheredParameters(params, modifier_rank=...)`, a
    collective that every rank must enter. With `modifier_rank` set, the
    values that rank writes inside the context are what the partitions keep.
    """
    params = list(params)
    if not any(is_zero3_param(p) for p in params):
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The user module inside a DeepSpeed engine (or `model` itself)."""
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, torch.nn.Module) else model


# --------------------------------------------------------------------------
# Averages.
# --------------------------------------------------------------------------


def moving_average(model: torch.nn.Module, model_ema: torch.nn.Module, beta: float = 0.992,
                   device: Any = None, zero_stage: int = 0) -> None:
    """`ema = beta * ema + (1 - beta) * param` for each parameter pair (spec §4).

    Parameters are paired by name (both models carry the same LoRA layers when
    the actor has them, spec §7), and a mismatch is an error instead of a
    silent mis-pairing. Under ZeRO-3 each pair is gathered, and the EMA is
    written back with `modifier_rank=0`: every rank computes the same update,
    and without a modifier rank the write would be dropped on release.
    `zero_stage` is accepted for DS-Chat's signature; partitioning is detected
    from the parameters themselves.
    """
    del zero_stage  # detected per parameter, see docstring
    pairs = list(zip(unwrap_model(model).named_parameters(), unwrap_model(model_ema).named_parameters()))
    with torch.no_grad():
        for (name, param), (ema_name, param_ema) in pairs:
            if name != ema_name:
                raise ValueError(f"moving_average: parameter {name!r} pairs with EMA parameter {ema_name!r}; "
                                 "the EMA model must have the same structure (and LoRA layers) as the model")
            with gathered_parameters([param, param_ema], modifier_rank=0):
                data = param.data if device is None else param.data.to(device)
                param_ema.data.copy_(torch.lerp(data.to(param_ema.dtype), param_ema.data, beta))


class ExponentialMovingAverage:
    """Scalar EMA for logging: the first value is taken as is, then `ema = alpha * ema + (1 - alpha) * x`."""

    def __init__(self, alpha: float = 0.9) -> None:
        self.alpha = alpha
        # None until the first update, so the first value is not pulled towards 0.
        self.ema: Optional[float] = None

    def update(self, value: float) -> float:
        """Fold `value` in and return the new average."""
        value = float(value)
        self.ema = value if self.ema is None else self.alpha * self.ema + (1.0 - self.alpha) * value
        return self.ema

    def get(self) -> Optional[float]:
        """The current average (None before the first update)."""
        return self.ema

    def state_dict(self) -> dict[str, Any]:
        """Picklable state, so a resumed run continues the same average."""
        return {"alpha": self.alpha, "ema": self.ema}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.alpha = float(state["alpha"])
        self.ema = None if state["ema"] is None else float(state["ema"])


# --------------------------------------------------------------------------
# Optimizer and schedule (spec §5 "Optimizer and scheduler").
# --------------------------------------------------------------------------


def _adam_ops() -> Any:
    """`deepspeed.ops.adam` when this runtime build has it, else None (the ops land in their own issue)."""
    try:
        return importlib.import_module("deepspeed.ops.adam")
    except ImportError:
        return None


def get_optimizer(param_groups: Sequence[Mapping[str, Any]] | Iterator[torch.nn.Parameter], lr: float,
                  offload: bool = False, betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay over `param_groups`, as DS-Chat builds it.

    DS-Chat uses `DeepSpeedCPUAdam` when offloading and `FusedAdam` otherwise.
    Those are used when this runtime provides them (FusedAdam only on an
    accelerator that can run it); otherwise `torch.optim.AdamW`, which applies
    the same update. Groups keep their own `lr` (the LoRA group, spec §5).
    """
    ops = _adam_ops()
    if offload and ops is not None and hasattr(ops, "DeepSpeedCPUAdam"):
        return ops.DeepSpeedCPUAdam(param_groups, lr=lr, betas=betas)
    if not offload and ops is not None and hasattr(ops, "FusedAdam") and get_accelerator().device_name() != "cpu":
        return ops.FusedAdam(param_groups, lr=lr, betas=betas)
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas)


def get_lr_scheduler(name: str, optimizer: torch.optim.Optimizer, num_warmup_steps: int,
                     num_training_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """HF `get_scheduler` (linear, cosine, ...): a multiplier on each group's own lr, so ratios between groups hold."""
    return transformers.get_scheduler(name=name, optimizer=optimizer, num_warmup_steps=num_warmup_steps,
                                      num_training_steps=num_training_steps)
