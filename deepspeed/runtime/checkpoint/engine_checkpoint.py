"""DeepSpeed-layout checkpoints for stages 0-2, written atomically.

Layout (spec §2)::

    save_dir/latest                                   text: the tag
    save_dir/<tag>/mp_rank_00_model_states.pt         module + engine state (+ client_state)
    save_dir/<tag>/[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt   ZeRO shards
    save_dir/zero_to_fp32.py                          the offline converter (ZeRO stages 1-3)

Stage 3 replaces the single model file with one per rank; see
[Note: stage-3 checkpoint contents] in zero3.py. Stages 1/2 add the bucket
layout (`param_layout`) to each optimizer shard so zero_to_fp32 can undo the
bucket interleaving (see [Note: bucket-interleaved partitioning]).

[Note: atomic checkpoints]
Every rank writes into `save_dir/.tmp-<tag>/`. After a barrier, rank 0 moves
the old `<tag>` (if any) aside, renames the temporary folder to `<tag>`,
rewrites `latest` through a temporary file and `os.replace`, and only then
deletes the old folder. A crash at any point leaves `latest` naming a
complete checkpoint.
"""
import os
import pickle
import shutil
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch

from deepspeed import comm as dist
from deepspeed.runtime.checkpoint import zero3
from deepspeed.utils.logging import log_dist, logger

__all__ = ["save_checkpoint", "load_checkpoint", "save_16bit_model", "CheckpointError", "safe_torch_load",
           "atomic_torch_save", "model_state_filename", "optim_state_filename"]

_ENGINE_KEYS = ("module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "shared_params",
                "lr_scheduler", "skipped_steps", "global_steps", "global_samples", "dp_world_size", "mp_world_size",
                "ds_config", "ds_version", "frozen_param_fragments", "ds_shard_world")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated or inconsistent with this run."""


def model_state_filename(mp_rank: int = 0) -> str:
    return f"mp_rank_{mp_rank:02d}_model_states.pt"


def optim_state_filename(dp_rank: int, bf16: bool, mp_rank: int = 0) -> str:
    return f"{'bf16_' if bf16 else ''}zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_optim_states.pt"


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write `obj` to `path` via a temporary file, so readers never see a partial file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_torch_load(path: str) -> Any:
    """Load with `weights_only=True`; fall back to full unpickling only for non-tensor client objects."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err) or "Unsupported global" not in str(err):
            raise CheckpointError(f"checkpoint file {path} is corrupt or unreadable: {err}") from err
        # The file holds arbitrary Python objects (typically a user's client_state).
        warnings.warn(f"{path} contains non-tensor Python objects; loading it with weights_only=False. "
                      f"Only load checkpoints you trust.")
    except Exception as err:  # truncated zip, bad magic number, EOF ...
        raise CheckpointError(f"checkpoint file {path} is corrupt or unreadable: {err}") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint file {path} is corrupt or unreadable: {err}") from err


def _engine_state(engine, exclude_frozen: bool) -> Dict[str, Any]:
    from_zero = engine.optimizer is not None and engine.optimizer is not engine.basic_optimizer
    params = dict(engine.module.named_parameters())
    if engine.zero_optimization_stage() == 3:
        state = zero3.stage3_model_state(engine, exclude_frozen)
    else:
        state = {
            "module": engine.module_state_dict(exclude_frozen_parameters=exclude_frozen),
            "buffer_names": [n for n, _ in engine.module.named_buffers()],
            # Unwrapped optimizers live here; ZeRO shards go to their own files.
            "optimizer": engine.optimizer.state_dict() if engine.optimizer is not None and not from_zero else None,
            "param_shapes": [{n: p.shape for n, p in params.items() if p.requires_grad}],
            "frozen_param_shapes": {n: p.shape for n, p in params.items() if not p.requires_grad},
        }
    return {
        **state,
        "shared_params": _shared_params(engine.module),
        "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler is not None else None,
        "skipped_steps": engine.skipped_steps,
        "global_steps": engine.global_steps,
        "global_samples": engine.global_samples,
        "dp_world_size": engine.dp_world_size,
        "mp_world_size": 1,
        "ds_config": engine.config,
        "ds_version": _version(),
    }


def _version() -> str:
    import deepspeed
    return deepspeed.__version__


def _shared_params(module: torch.nn.Module) -> Dict[str, str]:
    """Map each alias name of a tied parameter to the first name that holds it."""
    first: Dict[int, str] = {}
    shared: Dict[str, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            shared[name] = first[id(p)]
        else:
            first[id(p)] = name
    return shared


def _has_zero_shards(engine) -> bool:
    return engine.optimizer is not None and engine.optimizer is not engine.basic_optimizer \
        and (engine.zero_optimization_stage() > 0 or engine.bfloat16_enabled())


def save_checkpoint(engine, save_dir: str, tag: Optional[str], client_state: Dict[str, Any], save_latest: bool,
                    exclude_frozen_parameters: bool) -> bool:
    """Collective: every rank must call it. See [Note: atomic checkpoints]."""
    tag = str(tag) if tag is not None else f"global_step{engine.global_steps}"
    if os.sep in tag or tag.startswith("."):
        raise ValueError(f"checkpoint tag {tag!r} must be a plain folder name")
    rank = dist.get_rank()
    dp_rank = dist.get_rank(group=engine.data_parallel_group)
    tmp_dir = os.path.join(save_dir, f".tmp-{tag}")
    if rank == 0:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        os.makedirs(tmp_dir)
    dist.barrier()
    stage3 = engine.zero_optimization_stage() == 3
    clash = sorted(set(client_state) & set(_ENGINE_KEYS))
    if clash:
        raise ValueError(f"client_state keys {clash} collide with DeepSpeed's checkpoint keys")
    if dp_rank == 0 or stage3:
        # Stage 3: every rank writes its own shards (and a copy of client_state).
        state = _engine_state(engine, exclude_frozen_parameters)
        state.update(client_state)
        name = zero3.zero3_model_state_filename(dp_rank) if stage3 else model_state_filename()
        atomic_torch_save(state, os.path.join(tmp_dir, name))
    if _has_zero_shards(engine):
        shard = {"optimizer_state_dict": engine.optimizer.state_dict(), "ds_config": engine.config,
                 "ds_version": _version()}
        layout = _param_layout(engine)
        if layout is not None:
            shard["param_layout"] = layout
        atomic_torch_save(shard, os.path.join(tmp_dir, optim_state_filename(dp_rank, engine.bfloat16_enabled())))
    dist.barrier()
    if rank == 0:
        if engine.zero_optimization_stage() > 0:
            _copy_converter(save_dir)
        _publish(save_dir, tmp_dir, tag, save_latest)
    dist.barrier()
    log_dist(f"saved checkpoint {os.path.join(save_dir, tag)}", ranks=[0])
    return True


def _param_layout(engine) -> Optional[List[List[Dict[str, Any]]]]:
    """Stages 0-2: per group, each bucket's parameter names, shapes and offsets (for zero_to_fp32).

    A rank's master is the concatenation of its chunk of every bucket, so
    the converter needs the bucket boundaries to put the chunks back.
    """
    layouts = getattr(engine.optimizer, "layouts", None)
    if layouts is None:
        return None
    names = {id(p): n for n, p in engine.module.named_parameters()}
    return [[{"names": [names[id(p)] for p in b.params], "shapes": [tuple(p.shape) for p in b.params],
              "offsets": list(b.offsets), "padded_numel": b.padded_numel, "chunk_numel": b.chunk_numel,
              "partition_offset": b.partition_offset} for b in layout.buckets] for layout in layouts]


def _copy_converter(save_dir: str) -> None:
    """Put zero_to_fp32.py next to the tags, as users expect (written atomically)."""
    from deepspeed.utils import zero_to_fp32
    dst = os.path.join(save_dir, "zero_to_fp32.py")
    tmp = f"{dst}.tmp.{os.getpid()}"
    shutil.copyfile(zero_to_fp32.__file__, tmp)
    os.replace(tmp, dst)


def _publish(save_dir: str, tmp_dir: str, tag: str, save_latest: bool) -> None:
    final = os.path.join(save_dir, tag)
    old = os.path.join(save_dir, f".old-{tag}")
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp_dir, final)
    if save_latest:
        latest_tmp = os.path.join(save_dir, ".latest.tmp")
        with open(latest_tmp, "w") as f:
            f.write(tag)
            f.flush()
            os.fsync(f.fileno())
        os.replace(latest_tmp, os.path.join(save_dir, "latest"))
    shutil.rmtree(old, ignore_errors=True)


def _resolve_tag(load_dir: str, tag: Optional[str]) -> Optional[str]:
    if tag is not None:
        return str(tag)
    latest = os.path.join(load_dir, "latest")
    if not os.path.isfile(latest):
        logger.warning(f"no 'latest' file in {load_dir}; pass tag= to load_checkpoint to pick a checkpoint. "
                       f"Nothing was loaded.")
        return None
    with open(latest) as f:
        return f.read().strip()


def load_checkpoint(engine, load_dir: str, tag: Optional[str], load_module_strict: bool,
                    load_optimizer_states: bool, load_lr_scheduler_states: bool, load_module_only: bool,
                    custom_load_fn=None) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    tag = _resolve_tag(load_dir, tag)
    if tag is None:
        return None, None
    ckpt_dir = os.path.join(load_dir, tag)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"checkpoint folder {ckpt_dir} does not exist (tag {tag!r})")
    if engine.zero_optimization_stage() == 3:
        return _load_stage3(engine, ckpt_dir, load_module_strict, load_optimizer_states, load_lr_scheduler_states,
                            load_module_only)
    path = os.path.join(ckpt_dir, model_state_filename())
    state = safe_torch_load(path)
    if custom_load_fn is not None:
        custom_load_fn(src=state["module"], dst=engine.module)
    else:
        result = engine.module.load_state_dict(state["module"], strict=load_module_strict)
        if not load_module_strict and (result.missing_keys or result.unexpected_keys):
            logger.warning(f"non-strict load of {path}: missing {result.missing_keys}, "
                           f"unexpected {result.unexpected_keys}")
    if not load_module_only:
        _load_optimizer(engine, ckpt_dir, state, load_optimizer_states)
        _restore_counters(engine, state, load_lr_scheduler_states)
    elif _has_zero_shards(engine):
        engine.optimizer.refresh_fp32_from_params()
    client_state = {k: v for k, v in state.items() if k not in _ENGINE_KEYS}
    return path, client_state


def _restore_counters(engine, state: Dict[str, Any], load_lr_scheduler_states: bool) -> None:
    if load_lr_scheduler_states and engine.lr_scheduler is not None and state.get("lr_scheduler") is not None:
        engine.lr_scheduler.load_state_dict(state["lr_scheduler"])
    engine.global_steps = state["global_steps"]
    engine.global_samples = state.get("global_samples", engine.global_steps * engine.train_batch_size())
    engine.skipped_steps = state["skipped_steps"]
    engine.micro_steps = engine.global_steps * engine.gradient_accumulation_steps()


def _load_stage3(engine, ckpt_dir: str, strict: bool, load_optimizer_states: bool, load_lr_scheduler_states: bool,
                 load_module_only: bool) -> Tuple[str, Dict[str, Any]]:
    """Every rank reads its own model and optimizer files; the masters are published into the shards."""
    dp_rank = dist.get_rank(group=engine.data_parallel_group)
    path = os.path.join(ckpt_dir, zero3.zero3_model_state_filename(dp_rank))
    state = safe_torch_load(path)
    zero3.load_stage3_model_state(engine, state, path, strict)
    if _has_zero_shards(engine):
        shard_path = os.path.join(ckpt_dir, optim_state_filename(dp_rank, engine.bfloat16_enabled()))
        shard = safe_torch_load(shard_path)["optimizer_state_dict"]
        if load_module_only:
            # Weights only: keep this run's optimizer state and loss scale.
            shard = {**shard, "loss_scaler": None}
        with_state = load_optimizer_states and not load_module_only
        try:
            engine.optimizer.load_state_dict(shard, load_optimizer_states=with_state, load_from_fp32_weights=True)
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"cannot load ZeRO-3 optimizer shard {shard_path}: {err}") from err
    if not load_module_only:
        _restore_counters(engine, state, load_lr_scheduler_states)
    client_state = {k: v for k, v in state.items() if k not in _ENGINE_KEYS}
    return path, client_state


def _load_optimizer(engine, ckpt_dir: str, state: Dict[str, Any], load_optimizer_states: bool) -> None:
    if engine.optimizer is None:
        return
    if _has_zero_shards(engine):
        dp_rank = dist.get_rank(group=engine.data_parallel_group)
        shard_path = os.path.join(ckpt_dir, optim_state_filename(dp_rank, engine.bfloat16_enabled()))
        shard = safe_torch_load(shard_path)
        saved = engine.config.get("zero_optimization", {}).get("stage", 0)
        try:
            engine.optimizer.load_state_dict(shard["optimizer_state_dict"], load_optimizer_states=load_optimizer_states,
                                             load_from_fp32_weights=engine._config.zero_config.load_from_fp32_weights)
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"cannot load ZeRO optimizer shard {shard_path} (saved at stage {saved}): "
                                  f"{err}") from err
    elif load_optimizer_states and state.get("optimizer") is not None:
        engine.optimizer.load_state_dict(state["optimizer"])


def save_16bit_model(engine, save_dir: str, save_filename: str, exclude_frozen_parameters: bool) -> bool:
    """Collective. Rank 0 writes the module's weights in their training dtype, atomically.

    Under ZeRO-3 the weights are gathered module by module, and only when
    `stage3_gather_16bit_weights_on_model_save` is set (otherwise: False).
    A `.safetensors` filename writes safetensors, keeping one name per tied
    tensor (the first, as HF's `save_pretrained` does).
    """
    if engine.zero_optimization_stage() == 3:
        if not engine._config.zero_config.gather_16bit_weights_on_model_save:
            zero3.warn_not_gathered()
            return False
        state = zero3.gather_16bit_state_dict(engine, exclude_frozen_parameters)
    elif dist.get_rank() == 0:
        state = engine.module_state_dict(exclude_frozen_parameters=exclude_frozen_parameters)
        state = {k: v.detach().clone() for k, v in state.items()}  # drop views into flat buffers
    if dist.get_rank() == 0:
        os.makedirs(save_dir, exist_ok=True)
        path = os.path.join(save_dir, save_filename)
        if save_filename.endswith(".safetensors"):
            _atomic_safetensors_save(state, path, _shared_params(engine.module))
        else:
            atomic_torch_save(state, path)
    dist.barrier()
    return True


def _atomic_safetensors_save(state: Dict[str, torch.Tensor], path: str, shared: Dict[str, str]) -> None:
    """safetensors refuses tensors that share memory, so tied aliases are dropped (loaders re-tie them)."""
    from safetensors.torch import save_file
    tensors = {k: v.contiguous() for k, v in state.items() if k not in shared}
    tmp = f"{path}.tmp.{os.getpid()}"
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
