#!/usr/bin/env python
"""Rebuild a full fp32 state dict from a ZeRO checkpoint, offline, with any number of processes.

Usage, from the folder that holds ``latest`` (a copy of this file is put there
by ``engine.save_checkpoint``)::

    python zero_to_fp32.py . pytorch_model.bin
    python zero_to_fp32.py . model.safetensors -t global_step100 --exclude_frozen_parameters

This file is copied into every checkpoint folder, so it must keep working on
its own: it imports only the standard library, torch and (for .safetensors)
safetensors. It reads files with ``weights_only=True``.

How the pieces fit back together (the writer is deepspeed/runtime/checkpoint):

* Stage 3: rank r's optimizer file holds ``fp32_flat_groups[i]``, the
  concatenation over group i's parameters (in the order of the model file's
  ``param_shapes[i]``) of rank r's ``ceil(numel / world)``-element shard of
  each. Concatenating the ranks' shards and dropping the tail padding gives
  the full tensor. Parameters without an optimizer (frozen) come from the
  16-bit ``frozen_param_fragments`` of each rank's model file, the same way.
* Stages 1/2: each group is cut into buckets, each padded to a multiple of
  the world size, and rank r's master is the concatenation of its r-th equal
  chunk of every bucket. ``param_layout`` (in every optimizer file) gives the
  buckets; everything else (frozen parameters, buffers) comes from the single
  ``mp_rank_00_model_states.pt``.

The world size that saved is the number of optimizer files; nothing here
needs a process group.
"""
import argparse
import glob
import os
import re
from collections import OrderedDict
from typing import Dict, List, Optional

import torch

__all__ = ["get_fp32_state_dict_from_zero_checkpoint", "convert_zero_checkpoint_to_fp32_state_dict",
           "load_state_dict_from_zero_checkpoint"]

_RANK_RE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_00_(model|optim)_states\.pt$")


def _load(path: str) -> Dict:
    # mmap: the optimizer files also hold Adam moments, which are never touched here.
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise RuntimeError(f"cannot read {path} with weights_only=True ({err}). Files holding arbitrary Python "
                           f"objects (e.g. in client_state) are not loaded by this script.") from err


def _resolve_tag(checkpoint_dir: str, tag: Optional[str]) -> str:
    if tag is not None:
        return str(tag)
    latest = os.path.join(checkpoint_dir, "latest")
    if not os.path.isfile(latest):
        raise FileNotFoundError(f"no 'latest' file in {checkpoint_dir}; pass the tag (e.g. -t global_step10)")
    with open(latest) as f:
        return f.read().strip()


def _rank_files(ckpt_dir: str, kind: str) -> List[str]:
    """Per-rank files of `kind` ('model' or 'optim'), in rank order; checks none is missing."""
    found = {}
    for path in glob.glob(os.path.join(ckpt_dir, f"*zero_pp_rank_*_mp_rank_00_{kind}_states.pt")):
        match = _RANK_RE.search(os.path.basename(path))
        if match:
            found[int(match.group(1))] = path
    if sorted(found) != list(range(len(found))):
        raise FileNotFoundError(f"{ckpt_dir}: {kind} state files for ranks {sorted(found)}; some rank is missing")
    return [found[r] for r in range(len(found))]


def _unshard(shards: List[torch.Tensor], shape) -> torch.Tensor:
    """Concatenate equal per-rank shards and drop the padding. Returns an fp32 tensor of `shape`."""
    numel = 1
    for d in shape:
        numel *= int(d)
    return torch.cat([s.reshape(-1).float() for s in shards])[:numel].clone().view(tuple(shape))


def _add_aliases(out: "OrderedDict[str, torch.Tensor]", shared: Dict[str, str]) -> None:
    # Tied weights: every name `module.state_dict()` has, pointing at one tensor.
    for alias, first in shared.items():
        if first in out:
            out[alias] = out[first]


def _stage3_state(ckpt_dir: str, exclude_frozen: bool) -> "OrderedDict[str, torch.Tensor]":
    model_files = _rank_files(ckpt_dir, "model")
    optim_files = _rank_files(ckpt_dir, "optim")
    world = len(model_files)
    models = [_load(p) for p in model_files]
    head = models[0]
    if head.get("ds_shard_world", world) != world:
        raise ValueError(f"{ckpt_dir}: {world} model files but shards were cut for {head['ds_shard_world']} ranks")
    if optim_files and len(optim_files) != world:
        raise ValueError(f"{ckpt_dir}: {world} model files but {len(optim_files)} optimizer files")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict(head["module"])  # buffers, whole on every rank
    if optim_files:
        flats = [_load(p)["optimizer_state_dict"]["fp32_flat_groups"] for p in optim_files]
        for gi, shapes in enumerate(head["param_shapes"]):
            offset = 0
            for name, shape in shapes.items():
                numel = 1
                for d in shape:
                    numel *= int(d)
                size = (numel + world - 1) // world
                out[name] = _unshard([f[gi].narrow(0, offset, size) for f in flats], shape)
                offset += size
            for f in flats:
                if f[gi].numel() != offset:
                    raise ValueError(f"{ckpt_dir}: group {gi} has {f[gi].numel()} master elements, the shapes "
                                     f"account for {offset}")
    if not exclude_frozen:
        for name, shape in head.get("frozen_param_shapes", {}).items():
            out[name] = _unshard([m["frozen_param_fragments"][name] for m in models], shape)
    _add_aliases(out, head.get("shared_params", {}))
    return out


def _stage012_state(ckpt_dir: str, exclude_frozen: bool) -> "OrderedDict[str, torch.Tensor]":
    model = _load(os.path.join(ckpt_dir, "mp_rank_00_model_states.pt"))
    # Start from the saved module (buffers, frozen parameters, 16-bit weights) ...
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict(model["module"])
    frozen = set(model.get("frozen_param_shapes", {}))
    params = frozen.union(*[set(g) for g in model.get("param_shapes", [])])
    for name in params:
        if exclude_frozen and name in frozen:
            out.pop(name, None)
        elif name in out and out[name].is_floating_point():
            out[name] = out[name].float()
    optim_files = _rank_files(ckpt_dir, "optim")
    if optim_files:
        # ... and overwrite the trainable ones with the fp32 masters.
        optims = [_load(p) for p in optim_files]
        layout = optims[0].get("param_layout")
        if layout is None:
            raise ValueError(f"{ckpt_dir}: the optimizer files have no 'param_layout' (saved by an older version); "
                             f"the 16-bit weights in mp_rank_00_model_states.pt are all that can be recovered")
        flats = [o["optimizer_state_dict"]["fp32_flat_groups"] for o in optims]
        world = len(flats) if optims[0]["optimizer_state_dict"].get("partition_count", len(flats)) > 1 else 1
        for gi, buckets in enumerate(layout):
            for b in buckets:
                chunks = [f[gi].narrow(0, b["partition_offset"], b["chunk_numel"]) for f in flats[:world]]
                bucket = torch.cat(chunks).float()
                for name, shape, off in zip(b["names"], b["shapes"], b["offsets"]):
                    numel = 1
                    for d in shape:
                        numel *= int(d)
                    out[name] = bucket.narrow(0, off, numel).clone().view(tuple(shape))
    _add_aliases(out, model.get("shared_params", {}))
    return out


def get_fp32_state_dict_from_zero_checkpoint(
        checkpoint_dir: str, tag: Optional[str] = None,
        exclude_frozen_parameters: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """The full fp32 state dict (CPU) of the checkpoint `checkpoint_dir/<tag>`; tag defaults to `latest`.

    Keys are those of `model.state_dict()`, tied weights included under each
    name (sharing one tensor). Floating parameters are fp32; buffers keep
    their saved dtype.
    """
    ckpt_dir = os.path.join(checkpoint_dir, _resolve_tag(checkpoint_dir, tag))
    if not os.path.isdir(ckpt_dir):
        raise FileNotFoundError(f"checkpoint folder {ckpt_dir} does not exist")
    if _rank_files(ckpt_dir, "model"):
        return _stage3_state(ckpt_dir, exclude_frozen_parameters)
    return _stage012_state(ckpt_dir, exclude_frozen_parameters)


def _dedupe_shared(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Keep the first name of each tensor: safetensors rejects tensors sharing memory."""
    seen, out = set(), {}
    for name, t in state.items():
        if id(t) not in seen:
            seen.add(id(t))
            out[name] = t.contiguous()
    return out


def convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir: str, output_file: str, tag: Optional[str] = None,
                                               exclude_frozen_parameters: bool = False,
                                               safe_serialization: bool = False) -> None:
    """Write the fp32 state dict to `output_file` (safetensors if it ends in .safetensors or if asked)."""
    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag, exclude_frozen_parameters)
    out_dir = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(out_dir, exist_ok=True)
    tmp = f"{output_file}.tmp.{os.getpid()}"
    if safe_serialization or output_file.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(_dedupe_shared(state), tmp, metadata={"format": "pt"})
    else:
        torch.save(state, tmp)
    os.replace(tmp, output_file)


def load_state_dict_from_zero_checkpoint(model: torch.nn.Module, checkpoint_dir: str,
                                         tag: Optional[str] = None) -> torch.nn.Module:
    """Load the fp32 weights into `model` (moved to the CPU) and return it; not for a live ZeRO-3 engine."""
    state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag)
    model = model.cpu()
    model.load_state_dict(state, strict=False)
    return model


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a ZeRO checkpoint into one fp32 state dict file.")
    parser.add_argument("checkpoint_dir", help="folder holding 'latest' and the tag folders, e.g. ./checkpoints")
    parser.add_argument("output_file", help="e.g. pytorch_model.bin or model.safetensors")
    parser.add_argument("-t", "--tag", default=None, help="checkpoint tag (default: the 'latest' file)")
    parser.add_argument("--exclude_frozen_parameters", action="store_true", help="skip requires_grad=False params")
    parser.add_argument("--safe_serialization", action="store_true", help="write safetensors")
    args = parser.parse_args(argv)
    convert_zero_checkpoint_to_fp32_state_dict(args.checkpoint_dir, args.output_file, tag=args.tag,
                                               exclude_frozen_parameters=args.exclude_frozen_parameters,
                                               safe_serialization=args.safe_serialization)
    print(f"wrote {args.output_file}")


if __name__ == "__main__":
    main()
