"""The record of ops pre-built at install time (``DS_BUILD_OPS`` / ``DS_BUILD_<OP>``).

setup.py writes ``installed_ops.json`` beside this file (so it lands in
``deepspeed/ops/op_builder/`` when installed, or in ``op_builder/`` for an
editable install). ``OpBuilder.load()`` reads it to decide between importing
the pre-built module and JIT-compiling. A missing or unreadable record means
nothing was pre-built, which is the default install.

Each entry records what the pre-built binary is only valid for: the torch
version it was compiled against and its variant (the SIMD level of a CPU
op, ``cuda`` for a CUDA op). A mismatch makes ``load()`` fall back to JIT.
"""
import json
import os
from pathlib import Path
from typing import Dict, Optional

__all__ = ["INSTALLED_OPS_FILE", "read_installed_ops", "write_installed_ops"]

#: Default location of the record, next to the builders.
INSTALLED_OPS_FILE = str(Path(__file__).resolve().parent / "installed_ops.json")

InstalledOps = Dict[str, Dict[str, str]]


def read_installed_ops(path: Optional[str] = None) -> InstalledOps:
    """``{op name: {"module", "torch", "variant"}}``; empty when nothing was pre-built."""
    try:
        with open(path or INSTALLED_OPS_FILE) as handle:
            raw = json.load(handle)
    except (OSError, ValueError):
        return {}
    ops = raw.get("ops") if isinstance(raw, dict) else None
    return {str(k): dict(v) for k, v in ops.items() if isinstance(v, dict)} if isinstance(ops, dict) else {}


def write_installed_ops(ops: InstalledOps, path: Optional[str] = None) -> None:
    """Write the record atomically (the installer may run while a job reads it)."""
    target = path or INSTALLED_OPS_FILE
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w") as handle:
        json.dump({"ops": ops}, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.replace(tmp, target)
