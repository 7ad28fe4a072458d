"""The tokenized-dataset cache under `--data_output_path`.

[Note: dataset cache] A cache file is named by a hash of *everything* that
changes its tokens: the sources' content fingerprints (file hashes, not
names), the split, phase, seed, the tokenizer's own fingerprint, the length
limit, the end token and the SFT-only sources. A changed input therefore
maps to a different file, and a stale cache can never be picked up
(DS-Chat keyed on names only and kept serving old local json, #10 of the
pain points). The key is also stored inside the file and checked on load.

Files are safetensors (plain tensors, no pickled objects), written to a
temporary name and renamed into place, so a reader never sees a partial
file. Under `deepspeed.comm`, global rank 0 builds first; then the local
rank 0 of any node that still cannot see the file (no shared filesystem)
builds its own copy. Each round ends in an all-reduce of a failure flag, so
a build error on one rank stops every rank instead of leaving them waiting
at a barrier.
"""
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import deepspeed.comm as dist
from deepspeed.accelerator import get_accelerator

__all__ = ["CACHE_FORMAT_VERSION", "cache_key", "cache_path", "save_tensors_atomic", "load_tensors",
           "is_valid_cache", "build_once"]

# Bump when the stored layout changes.
CACHE_FORMAT_VERSION = 1
_KEY_FIELD = "dschat_cache_key"


def cache_key(parts: Mapping[str, Any]) -> str:
    """Hash of the JSON-serialisable description of a cache entry."""
    payload = json.dumps({"format": CACHE_FORMAT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def cache_path(output_path: str, train_phase: int, key: str) -> Path:
    return Path(output_path) / f"dschat_phase{train_phase}_{key}.safetensors"


def save_tensors_atomic(path: Path, tensors: Dict[str, torch.Tensor], key: str,
                        metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write `tensors` (and `key`, checked on load) to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**(metadata or {}), _KEY_FIELD: key}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def is_valid_cache(path: Path, key: str) -> bool:
    """The file exists, is readable safetensors and carries `key`."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(_KEY_FIELD) == key
    except Exception:  # a truncated or foreign file: rebuild it
        return False


def load_tensors(path: Path, key: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """The tensors and metadata of a cache file; ValueError if it is not for `key`."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    if metadata.get(_KEY_FIELD) != key:
        raise ValueError(f"{path} holds cache key {metadata.get(_KEY_FIELD)!r}, expected {key!r}")
    return load_file(str(path)), metadata


def _any_rank_failed(failed: bool) -> bool:
    flag = torch.tensor([1.0 if failed else 0.0], device=get_accelerator().current_device_name())
    dist.all_reduce(flag)
    return bool(flag.item() > 0)


def _build_round(should_build: bool, build: Callable[[], None], who: str) -> None:
    error: Optional[BaseException] = None
    if should_build:
        try:
            build()
        except Exception as err:  # reported to every rank below, then re-raised here
            error = err
    if _any_rank_failed(error is not None):
        if error is not None:
            raise error
        raise RuntimeError(f"building the dataset cache failed on {who}; see that rank's error")


def build_once(path: Path, key: str, build: Callable[[], None], local_rank: int, reload: bool = False) -> None:
    """Make sure a valid cache file for `key` exists at `path` on every rank.

    `build()` must write it (with `save_tensors_atomic`). See [Note: dataset
    cache] for who builds when. `reload` forces one rebuild by the first
    builder; `local_rank` < 0 means "ask deepspeed.comm".
    """
    if not dist.is_initialized():
        if reload or not is_valid_cache(path, key):
            build()
        return
    local = local_rank if local_rank >= 0 else dist.get_local_rank()
    _build_round(dist.get_rank() == 0 and (reload or not is_valid_cache(path, key)), build, "global rank 0")
    _build_round(local == 0 and not is_valid_cache(path, key), build, "a node's local rank 0")
