"""Saving actors and critics in HF format (spec §4 "Saving").

A saved folder holds `config.json` (plus `generation_config.json` for a
causal LM), the weights and the full tokenizer, so it is self-contained:
`AutoModelForCausalLM.from_pretrained(folder)` loads an actor,
`create_critic_model(folder, ...)` a critic or reward model (base model and
`v_head`), and the tokenizer loads from the same folder with no reference
to where the model originally came from (spec §13).

[Note: saved weights format]
Weights go to `model.safetensors` by default (what HF prefers, and memory-
mapped on load); `safe_serialization=False` writes DS-Chat's
`pytorch_model.bin` instead. Writing both would double the disk use of every
checkpoint for the sake of tools that look for one file name, so only one is
written, and a stale file of the other format (or a leftover shard index) is
removed so that a loader can never pick up old weights.
`model_utils.find_weights_file` finds either.

The saved state is the model's `state_dict` (parameters and persistent
buffers) with every LoRA layer fused: a `LinearLayer_LoRA` contributes
`weight + scaling * L^T R^T` under its plain `weight` key and its LoRA
factors are dropped, so the folder is a plain HF model. The model itself is
not modified (training can continue after a mid-run save). Under ZeRO-3
each module's parameters are gathered in turn (all ranks take part) and
rank 0 writes.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch
from torch import nn

from dschat.lora.lora import LORA_PARAM_NAMES, LinearLayer_LoRA
from dschat.models.model_utils import BIN_NAME, SAFETENSORS_NAME
from dschat.utils import gathered_parameters, is_rank_0, unwrap_model

__all__ = ["save_hf_format", "save_zero_three_model", "gather_full_state_dict", "write_weights"]

_STALE = (SAFETENSORS_NAME, BIN_NAME, "model.safetensors.index.json", "pytorch_model.bin.index.json")


def _is_lora_key(key: str) -> bool:
    return any(part in key for part in LORA_PARAM_NAMES)


def gather_full_state_dict(model: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """CPU state dict of `model` with LoRA fused and LoRA factors dropped.

    Under ZeRO-3 this is a collective (one gather per module) that every rank
    enters; ranks passing `keep=False` only take part and return an empty
    dict, so only the writing rank holds a full copy in memory.
    """
    state: dict[str, torch.Tensor] = {}
    persistent = set(model.state_dict().keys())
    for prefix, module in model.named_modules():
        prefix = f"{prefix}." if prefix else ""
        params = dict(module.named_parameters(recurse=False))
        if not params and not any(True for _ in module.named_buffers(recurse=False)):
            continue
        with torch.no_grad(), gathered_parameters(params.values()):
            if not keep:
                continue
            tensors = {name: p.detach() for name, p in params.items()}
            tensors.update({name: b for name, b in module.named_buffers(recurse=False)})
            if isinstance(module, LinearLayer_LoRA):
                tensors["weight"] = module.fused_weight()
            for name, tensor in tensors.items():
                key = prefix + name
                if key in persistent and not _is_lora_key(key):
                    state[key] = tensor.detach().to("cpu", copy=True).contiguous()
    return state


def write_weights(state_dict: dict[str, torch.Tensor], save_dir: str, safe_serialization: bool = True) -> str:
    """Write `state_dict` into `save_dir` as `model.safetensors` (or `pytorch_model.bin`); returns the path.

    See [Note: saved weights format].
    """
    os.makedirs(save_dir, exist_ok=True)
    for name in _STALE:
        stale = os.path.join(save_dir, name)
        if os.path.isfile(stale):
            os.remove(stale)
    if safe_serialization:
        from safetensors.torch import save_file
        path = os.path.join(save_dir, SAFETENSORS_NAME)
        save_file(state_dict, path, metadata={"format": "pt"})
    else:
        path = os.path.join(save_dir, BIN_NAME)
        torch.save(state_dict, path)
    return path


def _write_config(model: nn.Module, save_dir: str) -> None:
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no HF config to save")
    config.save_pretrained(save_dir)
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.save_pretrained(save_dir)


def save_hf_format(model: nn.Module, tokenizer: Any, args: Any, sub_folder: str = "",
                   safe_serialization: bool = True) -> Optional[str]:
    """Save `model` (an HF model, a `RewardModel` or an engine around either) to `args.output_dir/sub_folder`.

    Writes config, weights (LoRA fused) and tokenizer on rank 0; returns the
    folder there and None elsewhere. Safe to call on every rank, and under
    ZeRO-3 every rank must call it (the weights are gathered). Without ZeRO-3
    calling it on rank 0 only, as DS-Chat's scripts do, works too.
    """
    module = unwrap_model(model)
    save_dir = os.path.join(args.output_dir, sub_folder)
    state = gather_full_state_dict(module, keep=is_rank_0())
    if not is_rank_0():
        return None
    write_weights(state, save_dir, safe_serialization)
    _write_config(module, save_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_dir)
    return save_dir


def save_zero_three_model(model_ema: nn.Module, global_rank: int, save_dir: str, zero_stage: int = 0,
                          safe_serialization: bool = True) -> None:
    """Write the weights of `model_ema` (a model or engine) into `save_dir`, gathering under ZeRO-3.

    DS-Chat calls this after `save_hf_format` for ZeRO-3 runs; it rewrites
    the same weights file (see [Note: saved weights format]), here with
    buffers kept and LoRA fused. Every rank must call it when the parameters
    are partitioned; `global_rank` 0 writes. `zero_stage` is accepted for
    DS-Chat's signature; partitioning is detected per parameter.
    """
    del zero_stage  # detected per parameter
    state = gather_full_state_dict(unwrap_model(model_ema), keep=global_rank == 0)
    if global_rank == 0:
        write_weights(state, save_dir, safe_serialization)
