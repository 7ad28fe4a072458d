"""Optimizer parameter groups with weight-decay exclusions and a separate LoRA learning rate (spec §5).

Three groups, in this order, with empty ones dropped:

1. decay, non-LoRA: ``weight_decay``, the optimizer's lr;
2. decay, LoRA: ``weight_decay`` and ``lr=lora_lr`` (the `--lora_learning_rate`,
   `--actor_lora_learning_rate` and `--critic_lora_learning_rate` flags);
3. no-decay (biases and norm weights): weight decay 0, the optimizer's lr.

Only parameters with `requires_grad` are included, so a LoRA-only model
yields just the LoRA group (plus any forced head). Names are matched
lower-cased. Because group 2 carries its own `lr`, the schedule must scale
each group's lr (HF `get_scheduler`, DeepSpeed's WarmupLR with
`warmup_max_lr` unset, WarmupCosineLR) rather than set one value for all.
"""
from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from dschat.lora.lora import LORA_PARAM_NAMES

__all__ = ["get_optimizer_grouped_parameters", "NO_DECAY_NAME_LIST"]

NO_DECAY_NAME_LIST = ("bias", "layer_norm.weight", "layernorm.weight", "norm.weight", "ln_f.weight")


def get_optimizer_grouped_parameters(model: nn.Module, weight_decay: float, lora_lr: float = 5e-4,
                                     no_decay_name_list: Sequence[str] = NO_DECAY_NAME_LIST,
                                     lora_name_list: Sequence[str] = LORA_PARAM_NAMES) -> list[dict[str, Any]]:
    """Split the trainable parameters of `model` into the groups above; returns torch param-group dicts."""
    decay, decay_lora, no_decay = [], [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if any(part in lowered for part in no_decay_name_list):
            no_decay.append(param)
        elif any(part in lowered for part in lora_name_list):
            decay_lora.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": decay_lora, "weight_decay": weight_decay, "lr": lora_lr},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
