"""A clean-room, DeepSpeed-compatible training runtime.

`import deepspeed` only defines names: no process group is created, no CUDA
context is touched and no op is built. Heavy submodules (the engine, ZeRO-3,
the hybrid engine) are imported on first use.
"""
import importlib
from typing import Any

__version__ = "0.19.6"
__version_major__, __version_minor__, __version_patch__ = (int(x) for x in __version__.split("."))

__all__ = [
    "initialize",
    "init_distributed",
    "add_config_arguments",
    "comm",
    "zero",
    "ops",
    "DeepSpeedEngine",
    "DeepSpeedConfig",
    "__version__",
]

# Submodules and names resolved lazily, so that importing the package stays
# cheap and free of side effects.
_LAZY = {
    "comm": ("deepspeed.comm", None),
    "zero": ("deepspeed.zero", None),
    "ops": ("deepspeed.ops", None),
    "accelerator": ("deepspeed.accelerator", None),
    "runtime": ("deepspeed.runtime", None),
    "monitor": ("deepspeed.monitor", None),
    "initialize": ("deepspeed.runtime.initialize", "initialize"),
    "add_config_arguments": ("deepspeed.runtime.initialize", "add_config_arguments"),
    "init_distributed": ("deepspeed.comm", "init_distributed"),
    "DeepSpeedEngine": ("deepspeed.runtime.engine", "DeepSpeedEngine"),
    "DeepSpeedConfig": ("deepspeed.runtime.config", "DeepSpeedConfig"),
}


def __getattr__(name: str) -> Any:
    try:
        module_name, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'deepspeed' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attr is None else getattr(module, attr)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))
