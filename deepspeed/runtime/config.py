"""The parsed ds_config: `DeepSpeedConfig`, built once and passed down.

[Note: ds_config parsing]
JSON is read in exactly one place, `load_config_source`. `DeepSpeedConfig`
then drops every ``"auto"`` value, renames the legacy ``bfloat16`` key, parses
each section into its pydantic model (which rejects unknown keys), validates
the top-level scalars and settles the batch-size triple. The top level itself
stays lenient like DeepSpeed's: unknown top-level keys are only logged. The
engine and everything below it read attributes of this object, never raw keys.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field, field_validator

from deepspeed.monitor.config import MONITOR_SECTIONS, DeepSpeedMonitorConfig, get_monitor_config
from deepspeed.runtime.activation_checkpointing_config import DeepSpeedActivationCheckpointingConfig
from deepspeed.runtime.config_utils import (
    DeepSpeedConfigError,
    DeepSpeedConfigModel,
    closest_key,
    drop_auto,
)
from deepspeed.runtime.hybrid_engine_config import HybridEngineConfig
from deepspeed.runtime.precision.config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
from deepspeed.utils.logging import logger

__all__ = [
    "DeepSpeedConfig",
    "DeepSpeedConfigError",
    "OptimizerConfig",
    "SchedulerConfig",
    "CheckpointConfig",
    "load_config_source",
    "resolve_batch_sizes",
]

TRAIN_BATCH_SIZE = "train_batch_size"
TRAIN_MICRO_BATCH_SIZE_PER_GPU = "train_micro_batch_size_per_gpu"
GRADIENT_ACCUMULATION_STEPS = "gradient_accumulation_steps"
BF16 = "bf16"
BF16_LEGACY = "bfloat16"

_COMM_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


# --------------------------------------------------------------------------
# Loading: dict, JSON/hjson file, or base64-encoded JSON.
# --------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: a repeated key is almost always a copy-paste mistake."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DeepSpeedConfigError(f"duplicate key {key!r} in ds_config")
        result[key] = value
    return result


def _copy_tree(value: Any) -> Any:
    """Copy nested dicts/lists so later edits never reach the caller's object."""
    if isinstance(value, Mapping):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _parse_text(text: str, origin: str) -> dict[str, Any]:
    # Strict JSON first so numbers keep their JSON types; hjson (a superset
    # allowing comments and unquoted keys) only when that fails.
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError:
        import hjson  # a declared dependency; imported here to keep `import deepspeed` light

        try:
            data = hjson.loads(text, object_pairs_hook=_no_duplicate_keys)
        except hjson.HjsonDecodeError as err:
            raise DeepSpeedConfigError(f"cannot parse ds_config {origin}: {err}") from None
    if not isinstance(data, dict):
        raise DeepSpeedConfigError(f"ds_config {origin} must hold a JSON object, got {type(data).__name__}")
    return data


def _try_base64(text: str) -> dict[str, Any] | None:
    """The decoded config if `text` is base64 JSON, else None."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    try:
        data = json.loads(decoded, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def load_config_source(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """Return a ds_config dict from a dict, a JSON/hjson file path or a base64 JSON string.

    The result is a fresh copy: parsing drops "auto" values and must not edit
    the caller's dict (HF keeps filling its own copy).
    """
    if isinstance(config, Mapping):
        return _copy_tree(config)
    if isinstance(config, os.PathLike) or isinstance(config, str):
        path = os.fspath(config)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                return _parse_text(handle.read(), f"file {path!r}")
        if isinstance(config, str):
            decoded = _try_base64(config)
            if decoded is not None:
                return decoded
        if os.path.isdir(path):
            raise DeepSpeedConfigError(f"ds_config path {path!r} is a directory, not a JSON file")
        raise DeepSpeedConfigError(
            f"ds_config file not found: {path!r} (it is not a base64-encoded JSON string either)"
        )
    raise DeepSpeedConfigError(
        f"ds_config must be a dict, a path to a JSON file or a base64 JSON string, got {type(config).__name__}"
    )


# --------------------------------------------------------------------------
# Small sections that live with the top-level config.
# --------------------------------------------------------------------------


class OptimizerConfig(DeepSpeedConfigModel):
    """``optimizer`` section: which optimizer the engine builds and its kwargs."""

    _section: ClassVar[str] = "optimizer"

    type: str
    """Optimizer name as written ("Adam", "AdamW", "Lamb", or a torch.optim class)."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the optimizer constructor."""
    legacy_fusion: bool = False
    """Kept for DeepSpeed configs that still set it; has no effect."""

    @field_validator("params", mode="before")
    @classmethod
    def _reject_max_grad_norm(cls, params: Any) -> Any:
        if params is None:
            return {}
        if isinstance(params, Mapping) and "max_grad_norm" in params:
            raise ValueError("'max_grad_norm' is not an optimizer param; set top-level 'gradient_clipping' instead")
        return params

    @property
    def name(self) -> str:
        """Lower-cased type, the key used to pick the optimizer class."""
        return self.type.lower()


class SchedulerConfig(DeepSpeedConfigModel):
    """``scheduler`` section: LR schedule class name (case kept) and its kwargs."""

    _section: ClassVar[str] = "scheduler"

    type: str
    """Schedule class name, e.g. "WarmupLR" or a torch.optim.lr_scheduler class."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the schedule constructor."""

    @field_validator("params", mode="before")
    @classmethod
    def _null_params(cls, params: Any) -> Any:
        return {} if params is None else params


class CheckpointConfig(DeepSpeedConfigModel):
    """``checkpoint`` section."""

    _section: ClassVar[str] = "checkpoint"

    tag_validation: str = "WARN"
    """Check that all ranks save under the same tag: "IGNORE", "WARN" or "FAIL"."""
    load_universal: bool = False
    """Load a universal (topology-independent) checkpoint."""
    use_node_local_storage: bool = False
    """Each node writes to its own local disk."""
    parallel_write: dict[str, Any] | None = None
    """Pipeline-stage parallel writing options."""
    writer: dict[str, Any] | None = None
    """Checkpoint writer options."""

    @field_validator("tag_validation", mode="before")
    @classmethod
    def _tag_mode(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.upper()
            if value not in ("IGNORE", "WARN", "FAIL"):
                raise ValueError(f"tag_validation must be one of Ignore, Warn, Fail, got {value!r}")
        return value


class _TopLevelScalars(DeepSpeedConfigModel):
    """Top-level scalar keys, validated so that a wrong type names its key."""

    _section: ClassVar[str] = ""

    gradient_clipping: float = Field(1.0, ge=0.0)
    steps_per_print: int | None = Field(None, ge=1)
    wall_clock_breakdown: bool = False
    prescale_gradients: bool = False
    gradient_predivide_factor: float = Field(1.0, gt=0.0)
    gradient_allreduce_op: str = "mean"
    communication_data_type: str | None = None
    zero_allow_untested_optimizer: bool = False
    zero_force_ds_cpu_optimizer: bool = True
    dataloader_drop_last: bool = False
    memory_breakdown: bool = False

    @field_validator("communication_data_type", mode="before")
    @classmethod
    def _known_dtype(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.lower()
            if value not in _COMM_DTYPES:
                raise ValueError(f"communication_data_type must be one of fp32, fp16, bf16, got {value!r}")
        return value


_SCALAR_KEYS = tuple(_TopLevelScalars.model_fields)
_SECTION_KEYS = (
    "optimizer",
    "scheduler",
    "fp16",
    BF16,
    "zero_optimization",
    "hybrid_engine",
    "activation_checkpointing",
    "checkpoint",
    *MONITOR_SECTIONS,
)
_BATCH_KEYS = (TRAIN_BATCH_SIZE, TRAIN_MICRO_BATCH_SIZE_PER_GPU, GRADIENT_ACCUMULATION_STEPS)
# DeepSpeed keys this runtime accepts without acting on them: no warning,
# only a debug line, so that configs written for DeepSpeed load unchanged.
_ACCEPTED_UNUSED_KEYS = (
    "amp", "aio", "autotuning", "comms_logger", "compile", "compression_training", "curriculum_learning",
    "data_efficiency", "data_types", "disable_allgather", "dump_state", "eigenvalue", "elasticity",
    "flops_profiler", "fp32_allreduce", "nebula", "pipeline", "progressive_layer_drop", "quantize_training",
    "seq_parallel_communication_data_type", "sequence_parallel_size", "sparse_attention", "sparse_gradients",
    "timers", "use_data_before_expert_parallelism", "weight_quantization",
)
_KNOWN_TOP_LEVEL = frozenset((*_SCALAR_KEYS, *_SECTION_KEYS, *_BATCH_KEYS, BF16_LEGACY, *_ACCEPTED_UNUSED_KEYS))


# --------------------------------------------------------------------------
# Batch-size arithmetic.
# --------------------------------------------------------------------------


def _positive_int(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DeepSpeedConfigError(f"{key}: expected a positive int, got {value!r} ({type(value).__name__})")
    return value


def resolve_batch_sizes(
    train_batch_size: int | None,
    micro_batch_per_gpu: int | None,
    gradient_accumulation_steps: int | None,
    world_size: int,
) -> tuple[int, int, int]:
    """Fill in and check ``train_batch_size == micro * gas * world_size``.

    Returns ``(train_batch_size, micro_batch_per_gpu, gradient_accumulation_steps)``.
    `world_size` is the data-parallel size. Missing values are derived with
    DeepSpeed's rules (integer division), then the identity is checked, so a
    derivation that does not divide evenly is reported, not rounded away.
    """
    tbs = _positive_int(TRAIN_BATCH_SIZE, train_batch_size)
    micro = _positive_int(TRAIN_MICRO_BATCH_SIZE_PER_GPU, micro_batch_per_gpu)
    gas = _positive_int(GRADIENT_ACCUMULATION_STEPS, gradient_accumulation_steps)
    ws = _positive_int("world_size", world_size)
    assert ws is not None

    if tbs is not None and micro is not None and gas is not None:
        rule = "all three given"
    elif tbs is not None and micro is not None:
        gas, rule = tbs // micro // ws, "gradient_accumulation_steps = train_batch_size // micro_batch // world_size"
    elif tbs is not None and gas is not None:
        micro, rule = tbs // ws // gas, "micro_batch = train_batch_size // world_size // gradient_accumulation_steps"
    elif micro is not None and gas is not None:
        tbs, rule = micro * gas * ws, "train_batch_size = micro_batch * gradient_accumulation_steps * world_size"
    elif tbs is not None:
        gas = 1
        micro, rule = tbs // ws, "gradient_accumulation_steps = 1, micro_batch = train_batch_size // world_size"
    elif micro is not None:
        gas = 1
        tbs, rule = micro * ws, "gradient_accumulation_steps = 1, train_batch_size = micro_batch * world_size"
    else:
        raise DeepSpeedConfigError(
            f"ds_config must set {TRAIN_BATCH_SIZE} or {TRAIN_MICRO_BATCH_SIZE_PER_GPU} "
            f"(got {TRAIN_BATCH_SIZE}={train_batch_size}, {TRAIN_MICRO_BATCH_SIZE_PER_GPU}={micro_batch_per_gpu}, "
            f"{GRADIENT_ACCUMULATION_STEPS}={gradient_accumulation_steps})"
        )

    if micro <= 0 or gas <= 0 or tbs != micro * gas * ws:
        raise DeepSpeedConfigError(
            f"inconsistent batch sizes: {TRAIN_BATCH_SIZE}={tbs} must equal "
            f"{TRAIN_MICRO_BATCH_SIZE_PER_GPU}={micro} * {GRADIENT_ACCUMULATION_STEPS}={gas} * world_size={ws} "
            f"(= {micro * gas * ws}); rule applied: {rule}"
        )
    return tbs, micro, gas


def _data_parallel_world_size(world_size: int | None, mpu: Any, mesh_device: Any) -> int:
    """The size the batch arithmetic divides by: explicit, then mpu, mesh, torch.distributed, 1."""
    if world_size is not None:
        return world_size
    if mpu is not None:
        return int(mpu.get_data_parallel_world_size())
    if mesh_device is not None:
        names = getattr(mesh_device, "mesh_dim_names", None) or ()
        if "data_parallel" in names:
            return int(mesh_device["data_parallel"].size())
        return int(mesh_device.size(0))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


# --------------------------------------------------------------------------
# The top-level config.
# --------------------------------------------------------------------------


def _section(param_dict: dict[str, Any], key: str) -> dict[str, Any]:
    value = param_dict.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DeepSpeedConfigError(f"{key}: expected a dict (section), got {value!r} ({type(value).__name__})")
    return value


def _zero_section(param_dict: dict[str, Any]) -> dict[str, Any]:
    value = param_dict.get("zero_optimization")
    if isinstance(value, bool):
        # Very old configs wrote `"zero_optimization": true` for stage 1.
        logger.warning('"zero_optimization": %s is deprecated; use {"stage": %d}', value, int(value))
        return {"stage": int(value)}
    return _section(param_dict, "zero_optimization")


def _warn_unknown_top_level(param_dict: dict[str, Any]) -> None:
    for key in param_dict:
        if key in _KNOWN_TOP_LEVEL:
            if key in _ACCEPTED_UNUSED_KEYS:
                logger.debug("ds_config key %r is accepted but not used by this runtime", key)
            continue
        match = closest_key(str(key), _KNOWN_TOP_LEVEL)
        hint = f"; did you mean {match!r}?" if match else ""
        logger.warning("ignoring unknown ds_config key %r%s", key, hint)


class DeepSpeedConfig:
    """The whole ds_config, parsed and checked once.

    `config` is a dict, a JSON/hjson path or a base64 JSON string. The batch
    arithmetic divides by the data-parallel world size: `world_size` if given,
    else the mpu's, else the mesh's data-parallel dimension, else the
    initialised torch.distributed world, else 1.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | os.PathLike,
        mpu: Any = None,
        mesh_device: Any = None,
        world_size: int | None = None,
    ) -> None:
        param_dict = drop_auto(load_config_source(config))
        if BF16_LEGACY in param_dict:
            legacy = param_dict.pop(BF16_LEGACY)
            if BF16 in param_dict:
                logger.warning('ds_config has both "bf16" and "bfloat16"; using "bf16"')
            else:
                param_dict[BF16] = legacy
        _warn_unknown_top_level(param_dict)
        # The dict after "auto" removal and the bfloat16 rename; checkpoints store it.
        self._param_dict: dict[str, Any] = param_dict

        self.world_size: int = _data_parallel_world_size(world_size, mpu, mesh_device)
        self.train_batch_size, self.train_micro_batch_size_per_gpu, self.gradient_accumulation_steps = (
            resolve_batch_sizes(
                param_dict.get(TRAIN_BATCH_SIZE),
                param_dict.get(TRAIN_MICRO_BATCH_SIZE_PER_GPU),
                param_dict.get(GRADIENT_ACCUMULATION_STEPS),
                self.world_size,
            )
        )

        self.fp16_config = DeepSpeedFP16Config(**_section(param_dict, "fp16"))
        self.bf16_config = DeepSpeedBF16Config(**_section(param_dict, BF16))
        if self.fp16_config.enabled and self.bf16_config.enabled:
            raise DeepSpeedConfigError("fp16 and bf16 cannot both be enabled; pick one")
        self.fp16_enabled: bool = self.fp16_config.enabled
        self.fp16_auto_cast: bool = self.fp16_config.auto_cast
        self.bfloat16_enabled: bool = self.bf16_config.enabled

        optimizer = param_dict.get("optimizer")
        self.optimizer_config: OptimizerConfig | None = (
            None if optimizer is None else OptimizerConfig(**_section(param_dict, "optimizer"))
        )
        self.optimizer_name: str | None = self.optimizer_config.name if self.optimizer_config else None
        self.optimizer_params: dict[str, Any] | None = (
            dict(self.optimizer_config.params) if self.optimizer_config else None
        )
        scheduler = param_dict.get("scheduler")
        self.scheduler_config: SchedulerConfig | None = (
            None if scheduler is None else SchedulerConfig(**_section(param_dict, "scheduler"))
        )
        self.scheduler_name: str | None = self.scheduler_config.type if self.scheduler_config else None
        self.scheduler_params: dict[str, Any] | None = (
            dict(self.scheduler_config.params) if self.scheduler_config else None
        )

        self.zero_config = DeepSpeedZeroConfig(**_zero_section(param_dict))
        self.zero_optimization_stage: int = self.zero_config.stage
        self.zero_enabled: bool = self.zero_optimization_stage > 0

        self.hybrid_engine = HybridEngineConfig(**_section(param_dict, "hybrid_engine"))
        for key in MONITOR_SECTIONS:
            _section(param_dict, key)  # type check only; the monitor config parses them
        self.monitor_config: DeepSpeedMonitorConfig = get_monitor_config(param_dict)
        self.activation_checkpointing_config = DeepSpeedActivationCheckpointingConfig(
            **_section(param_dict, "activation_checkpointing")
        )
        self.checkpoint_config = CheckpointConfig(**_section(param_dict, "checkpoint"))
        self.checkpoint_tag_validation: str = self.checkpoint_config.tag_validation
        self.checkpoint_tag_validation_enabled: bool = self.checkpoint_tag_validation != "IGNORE"
        self.checkpoint_tag_validation_fail: bool = self.checkpoint_tag_validation == "FAIL"

        scalars = _TopLevelScalars(**{k: param_dict[k] for k in _SCALAR_KEYS if k in param_dict})
        self.gradient_clipping: float = scalars.gradient_clipping
        self.steps_per_print: int | None = scalars.steps_per_print
        self.wall_clock_breakdown: bool = scalars.wall_clock_breakdown
        self.prescale_gradients: bool = scalars.prescale_gradients
        self.gradient_predivide_factor: float = scalars.gradient_predivide_factor
        self.gradient_allreduce_op: str = scalars.gradient_allreduce_op
        self.communication_data_type: torch.dtype | None = (
            None if scalars.communication_data_type is None else _COMM_DTYPES[scalars.communication_data_type]
        )
        self.zero_allow_untested_optimizer: bool = scalars.zero_allow_untested_optimizer
        self.zero_force_ds_cpu_optimizer: bool = scalars.zero_force_ds_cpu_optimizer
        self.dataloader_drop_last: bool = scalars.dataloader_drop_last
        self.memory_breakdown: bool = scalars.memory_breakdown

    def summary(self) -> dict[str, Any]:
        """The parsed values as plain data (for logging and debugging)."""
        out: dict[str, Any] = {}
        for key, value in sorted(vars(self).items()):
            if key.startswith("_"):
                continue
            if isinstance(value, DeepSpeedConfigModel):
                value = value.model_dump()
            elif isinstance(value, torch.dtype):
                value = str(value)
            out[key] = value
        return out

    def print_config(self, name: str = "DeepSpeedConfig") -> None:
        """Log every parsed value, one per line."""
        logger.info("%s:", name)
        for key, value in self.summary().items():
            logger.info("  %s %s %s", key, "." * max(1, 36 - len(key)), value)

    def __repr__(self) -> str:
        return (
            f"DeepSpeedConfig(train_batch_size={self.train_batch_size}, "
            f"micro_batch={self.train_micro_batch_size_per_gpu}, gas={self.gradient_accumulation_steps}, "
            f"world_size={self.world_size}, zero_stage={self.zero_optimization_stage}, "
            f"fp16={self.fp16_enabled}, bf16={self.bfloat16_enabled}, optimizer={self.optimizer_name})"
        )
