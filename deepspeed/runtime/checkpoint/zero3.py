"""The ZeRO stage-3 checkpoint layout: per-rank model states, restore, and 16-bit gathering.

Layout (spec §2), one pair of files per data-parallel rank ``r``::

    <tag>/zero_pp_rank_{r}_mp_rank_00_model_states.pt
    <tag>/[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt

[Note: stage-3 checkpoint contents]
No rank ever holds a full parameter, so nothing full is written. The model
file carries what is needed to put the shards back together without this
process group:

* ``param_shapes``: per optimizer group, ``{name: full shape}`` in master
  order. Parameter j of group i owns ``ceil(numel_j / world)`` elements at a
  running offset of rank r's ``fp32_flat_groups[i]`` (optim file), so
  concatenating the ranks' slices and dropping the tail padding gives the
  full fp32 tensor;
* ``frozen_param_shapes`` and ``frozen_param_fragments``: the same for
  parameters the optimizer does not own, whose only copy is their 16-bit
  shard (``ds_tensor``);
* ``module``: the persistent buffers, which every rank holds whole;
* ``ds_shard_world``: the shard count, so readers need not know the world
  size of the run that saved.

`deepspeed/utils/zero_to_fp32.py` reads exactly these keys; keep them in sync.
"""
import os
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import torch

from deepspeed import comm as dist
from deepspeed.runtime.zero.collectives import gather_params
from deepspeed.runtime.zero.param import ZeroParamStatus, is_zero_param
from deepspeed.runtime.zero.partition_parameters import GatheredParameters

__all__ = ["zero3_model_state_filename", "trainable_groups", "stage3_model_state", "load_stage3_model_state",
           "gather_16bit_state_dict", "persistent_buffers", "warn_not_gathered"]


def zero3_model_state_filename(dp_rank: int, mp_rank: int = 0) -> str:
    return f"zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_model_states.pt"


def trainable_groups(engine) -> List[List[torch.nn.Parameter]]:
    """The optimizer's parameters per group, in master order (empty without an optimizer)."""
    return [list(g) for g in getattr(engine.optimizer, "group_params", [])]


def _first_names(module: torch.nn.Module) -> Dict[int, str]:
    """id(param) -> the first name `named_parameters` gives it (tied aliases excluded)."""
    return {id(p): n for n, p in module.named_parameters()}


def persistent_buffers(module: torch.nn.Module) -> "OrderedDict[str, torch.Tensor]":
    """The buffers `module.state_dict()` would contain, by their state-dict names."""
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for mod_name, mod in module.named_modules(remove_duplicate=False):
        for name, buf in mod._buffers.items():
            if buf is not None and name not in mod._non_persistent_buffers_set:
                out[f"{mod_name}.{name}" if mod_name else name] = buf
    return out


def stage3_model_state(engine, exclude_frozen: bool) -> Dict[str, Any]:
    """This rank's model-state file contents minus the engine counters (see the note above)."""
    names = _first_names(engine.module)
    groups = trainable_groups(engine)
    owned = {id(p) for g in groups for p in g}
    frozen = [(n, p) for n, p in engine.module.named_parameters() if id(p) not in owned]
    world = next((p.ds_state.world for _, p in engine.module.named_parameters() if is_zero_param(p)), 1)
    return {
        "module": OrderedDict((k, v.detach().clone()) for k, v in persistent_buffers(engine.module).items()),
        "buffer_names": [n for n, _ in engine.module.named_buffers()],
        "optimizer": None,
        "param_shapes": [OrderedDict((names[id(p)], p.ds_shape) for p in g) for g in groups],
        "frozen_param_shapes": OrderedDict((n, p.ds_shape) for n, p in frozen) if not exclude_frozen else {},
        "frozen_param_fragments": OrderedDict((n, p.ds_tensor.detach().cpu().clone()) for n, p in frozen)
                                  if not exclude_frozen else {},
        "ds_shard_world": world,
    }


def load_stage3_model_state(engine, state: Dict[str, Any], path: str, strict: bool) -> None:
    """Restore buffers and frozen shards from this rank's model file; masters come from the optim file."""
    from deepspeed.runtime.checkpoint.engine_checkpoint import CheckpointError
    params = dict(engine.module.named_parameters())
    world = next((p.ds_state.world for p in params.values() if is_zero_param(p)), 1)
    if state.get("ds_shard_world", world) != world:
        raise CheckpointError(f"{path} holds shards for {state['ds_shard_world']} ranks but this run has {world}; "
                              f"convert it with zero_to_fp32.py and load the full state dict instead")
    buffers = persistent_buffers(engine.module)
    missing = sorted(set(buffers) - set(state["module"]))
    unexpected = sorted(set(state["module"]) - set(buffers))
    if strict and (missing or unexpected):
        raise CheckpointError(f"{path}: buffers missing {missing}, unexpected {unexpected}")
    for name, value in state["module"].items():
        if name in buffers:
            buffers[name].data.copy_(value)
    refresh = []
    for name, shard in state.get("frozen_param_fragments", {}).items():
        p = params.get(name)
        if p is None or not is_zero_param(p):
            if strict:
                raise CheckpointError(f"{path}: frozen parameter {name!r} is not a ZeRO-3 parameter of this model")
            continue
        if shard.numel() != p.ds_tensor.numel():
            raise CheckpointError(f"{path}: shard of {name!r} has {shard.numel()} elements, expected "
                                  f"{p.ds_tensor.numel()}")
        p.ds_tensor.data.copy_(shard)
        if p.ds_persist:
            refresh.append(p)
        elif p.ds_status == ZeroParamStatus.AVAILABLE:
            p.ds_state.release()  # stale full value; gathered again on next use
    _regather(refresh)


def _regather(params: List[torch.nn.Parameter]) -> None:
    """Refresh the full value of persistent parameters from their (new) shards, one group at a time."""
    by_group: Dict[int, List[torch.nn.Parameter]] = {}
    for p in sorted(params, key=lambda q: q.ds_id):
        by_group.setdefault(id(p.ds_process_group), []).append(p)
    for group in by_group.values():
        gather_params(group, async_op=False)


def gather_16bit_state_dict(engine, exclude_frozen: bool) -> Optional["OrderedDict[str, torch.Tensor]"]:
    """Collective: the module's state dict in its training dtype, on rank 0's CPU (None elsewhere).

    Parameters are gathered one module at a time (its own parameters only),
    so no rank holds more than one module's full weights beyond what rank 0
    accumulates on the CPU. Keys and order are those of
    `module.state_dict()`; a tied parameter appears under each of its names
    with the same tensor, as `state_dict()` gives it.
    """
    is_writer = dist.get_rank() == 0
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    copies: Dict[int, torch.Tensor] = {}

    def visit(module: torch.nn.Module, prefix: str) -> None:
        own = [p for p in module._parameters.values() if p is not None]
        with GatheredParameters(own, modifier_rank=None):
            for name, p in module._parameters.items():
                if p is None or (exclude_frozen and not p.requires_grad):
                    continue
                if is_writer:
                    if id(p) not in copies:
                        copies[id(p)] = p.detach().to("cpu", copy=True)
                    out[prefix + name] = copies[id(p)]
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set and is_writer:
                out[prefix + name] = buf.detach().to("cpu", copy=True)
        for name, child in module._modules.items():
            if child is not None:
                visit(child, f"{prefix}{name}.")

    visit(engine.module, "")
    return out if is_writer else None


def warn_not_gathered() -> None:
    warnings.warn("save_16bit_model under ZeRO stage 3 needs \"stage3_gather_16bit_weights_on_model_save\": true "
                  "in zero_optimization; nothing was saved. Use zero_to_fp32.py on a checkpoint instead.")
