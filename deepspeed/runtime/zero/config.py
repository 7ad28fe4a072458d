"""Config model for the ``zero_optimization`` section.

Python field names are the un-prefixed names (``prefetch_bucket_size``); the
documented ds_config spellings (``stage3_prefetch_bucket_size``) are pydantic
aliases, so both are accepted and neither warns. Keys that DeepSpeed itself
deprecated (``cpu_offload``, ``cpu_offload_param``, ``cpu_offload_use_pin_memory``,
``stage3_gather_fp16_weights_on_model_save``) are translated with a warning.
"""
from __future__ import annotations

import sys
from typing import Any, ClassVar, Iterable

from pydantic import Field, model_validator

from deepspeed.runtime.config_utils import DeepSpeedConfigModel, validator_error
from deepspeed.runtime.zero.offload_config import (
    DeepSpeedZeroOffloadOptimizerConfig,
    DeepSpeedZeroOffloadParamConfig,
    OffloadDeviceEnum,
)
from deepspeed.utils.logging import logger

__all__ = ["DeepSpeedZeroConfig", "ZeroStageEnum"]


class ZeroStageEnum:
    """ZeRO stage numbers, named (plain ints so configs compare with ``==``)."""

    disabled = 0
    optimizer_states = 1
    gradients = 2
    weights = 3
    max_stage = 3


# Legacy boolean switches that predate the offload_* sub-sections.
_CPU_OFFLOAD = "cpu_offload"
_CPU_OFFLOAD_PARAM = "cpu_offload_param"
_CPU_OFFLOAD_PIN = "cpu_offload_use_pin_memory"


class DeepSpeedZeroConfig(DeepSpeedConfigModel):
    """``zero_optimization`` section: ZeRO stage, buckets, stage-3 tuning, ZeRO++ and offload."""

    _section: ClassVar[str] = "zero_optimization"
    _deprecated_keys: ClassVar[dict[str, str]] = {
        "stage3_gather_fp16_weights_on_model_save": "gather_16bit_weights_on_model_save",
    }

    # ---- stages 1 and 2 -------------------------------------------------
    stage: int = Field(0, ge=ZeroStageEnum.disabled, le=ZeroStageEnum.max_stage)
    """0 disables ZeRO; 1 shards optimizer states, 2 also gradients, 3 also parameters."""
    contiguous_gradients: bool = True
    """Copy reduced gradients into one contiguous buffer to avoid fragmentation."""
    reduce_scatter: bool = True
    """Reduce gradients with reduce-scatter rather than all-reduce."""
    reduce_bucket_size: int = Field(500_000_000, ge=0)
    """Elements reduced per bucket."""
    allgather_partitions: bool = True
    """Gather updated partitions with all-gather rather than broadcasts."""
    allgather_bucket_size: int = Field(500_000_000, ge=0)
    """Elements all-gathered per bucket."""
    overlap_comm: bool | None = None
    """Overlap gradient reduction with backward; defaults to ``stage == 3``."""
    load_from_fp32_weights: bool = True
    """Restore fp32 master weights from the checkpoint instead of the 16-bit model."""
    elastic_checkpoint: bool = False
    """Allow loading optimizer state saved at a different data-parallel size."""
    sub_group_size: int = Field(1_000_000_000, ge=1)
    """Elements per optimizer sub-group stepped at a time (bounds offload memory)."""
    ignore_unused_parameters: bool = True
    """Tolerate parameters that get no gradient (stage 2/3)."""
    round_robin_gradients: bool = False
    """Spread gradient copies across ranks round-robin (stage 1/2 with offload)."""

    # ---- stage 3 (each also accepted with the stage3_ prefix) -----------
    prefetch_bucket_size: int = Field(50_000_000, ge=0, alias="stage3_prefetch_bucket_size")
    """Elements prefetched ahead of use along the recorded trace."""
    param_persistence_threshold: int = Field(100_000, ge=0, alias="stage3_param_persistence_threshold")
    """Parameters at most this large stay gathered (persist)."""
    model_persistence_threshold: int = Field(sys.maxsize, ge=0, alias="stage3_model_persistence_threshold")
    """Total elements allowed to persist across the model."""
    max_live_parameters: int = Field(1_000_000_000, ge=0, alias="stage3_max_live_parameters")
    """Upper bound on gathered elements at any time."""
    max_reuse_distance: int = Field(1_000_000_000, ge=0, alias="stage3_max_reuse_distance")
    """Keep a parameter gathered if it is reused within this many elements."""
    gather_16bit_weights_on_model_save: bool = Field(False, alias="stage3_gather_16bit_weights_on_model_save")
    """Gather the full 16-bit model in ``save_16bit_model``."""
    module_granularity_threshold: int = Field(0, ge=0, alias="stage3_module_granularity_threshold")
    """Hook leaf groups instead of tiny modules when their size is below this (0 = off)."""
    use_all_reduce_for_fetch_params: bool = Field(False, alias="stage3_use_all_reduce_for_fetch_params")
    """Fetch parameters with all-reduce instead of all-gather."""

    # ---- ZeRO++ ---------------------------------------------------------
    zero_hpz_partition_size: int = Field(1, ge=1)
    """hpZ: ranks per secondary-partition group (1 disables the secondary shard)."""
    zero_quantized_weights: bool = False
    """qwZ: all-gather weights as int8 with per-group scales."""
    zero_quantized_nontrainable_weights: bool = False
    """MixZ++: store frozen parameter shards in int8."""
    zero_quantized_gradients: bool = False
    """qgZ: quantized gradient reduce-scatter."""
    zeropp_loco_param: dict[str, Any] | None = None
    """LoCo error-feedback settings for qgZ (None disables)."""

    # ---- other ----------------------------------------------------------
    memory_efficient_linear: bool = True
    """Use a ZeRO-aware linear that does not keep gathered weights for backward."""
    mics_shard_size: int = -1
    """MiCS: ranks per shard group (-1 disables MiCS)."""
    mics_hierarchical_params_gather: bool = False
    """MiCS: gather parameters hierarchically (intra-node first)."""
    enable_sanity_checks: bool = False
    """Extra checks, e.g. that gathered parameters are not modified in place."""

    # ---- offload --------------------------------------------------------
    offload_param: DeepSpeedZeroOffloadParamConfig = Field(default_factory=DeepSpeedZeroOffloadParamConfig)
    """Stage-3 parameter offload; device "none" when absent."""
    offload_optimizer: DeepSpeedZeroOffloadOptimizerConfig = Field(
        default_factory=DeepSpeedZeroOffloadOptimizerConfig
    )
    """Optimizer-state offload; device "none" when absent."""

    @classmethod
    def _extra_legacy_keys(cls) -> Iterable[str]:
        return (_CPU_OFFLOAD, _CPU_OFFLOAD_PARAM, _CPU_OFFLOAD_PIN)

    @classmethod
    def _translate_legacy(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Map the boolean ``cpu_offload*`` switches onto the offload sub-sections."""
        data = super()._translate_legacy(data)
        for key in ("offload_param", "offload_optimizer"):
            if key in data and data[key] is None:
                data.pop(key)  # JSON null means "not configured"
        pin = data.pop(_CPU_OFFLOAD_PIN, None)
        for legacy, target in ((_CPU_OFFLOAD, "offload_optimizer"), (_CPU_OFFLOAD_PARAM, "offload_param")):
            if legacy not in data:
                continue
            enabled = data.pop(legacy)
            logger.warning(
                "zero_optimization.%s is deprecated; use zero_optimization.%s: {\"device\": \"cpu\"}",
                legacy,
                target,
            )
            if not enabled:
                continue
            if target in data:
                raise validator_error(f"both {legacy!r} (deprecated) and {target!r} are set; keep only {target!r}")
            data[target] = {"device": OffloadDeviceEnum.cpu.value}
        if pin is not None:
            logger.warning(
                "zero_optimization.%s is deprecated; set pin_memory in offload_param / offload_optimizer",
                _CPU_OFFLOAD_PIN,
            )
            for target in ("offload_param", "offload_optimizer"):
                section = data.get(target)
                if isinstance(section, dict) and "pin_memory" not in section:
                    data[target] = {**section, "pin_memory": pin}
        return data

    @model_validator(mode="after")
    def _fill_and_check(self) -> "DeepSpeedZeroConfig":
        if self.overlap_comm is None:
            # Written through __dict__: a normal assignment would re-run this
            # validator (validate_assignment) and recurse.
            self.__dict__["overlap_comm"] = self.stage == ZeroStageEnum.weights
        if self.offload_optimizer.ratio < 1.0 and self.stage != ZeroStageEnum.weights:
            raise validator_error(
                f"offload_optimizer.ratio={self.offload_optimizer.ratio} (partial offload) needs stage 3, "
                f"got stage {self.stage}"
            )
        return self

    @property
    def offload_optimizer_device(self) -> str:
        """"none", "cpu" or "nvme"."""
        return str(self.offload_optimizer.device)

    @property
    def offload_param_device(self) -> str:
        """"none", "cpu" or "nvme"."""
        return str(self.offload_param.device)
