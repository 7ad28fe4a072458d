"""The ds_config dicts DS-Chat trains and evaluates with (spec §6).

The batch keys are placeholders (32 / 4): callers overwrite
`train_micro_batch_size_per_gpu` with their per-device batch and
`train_batch_size` with micro * world * gradient_accumulation_steps. Engines
without an optimizer (ref, reward, EMA) still get batch sizes so the config
checks pass.

`dtype` is "fp16" (an `fp16` section with `loss_scale_window` 100), "bf16"
(a `bfloat16` section, DeepSpeed's legacy spelling, as DS-Chat writes it) or
"fp32", our addition for CPU runs: no precision section at all.
"""
from __future__ import annotations

from typing import Any

from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator

__all__ = ["get_train_ds_config", "get_eval_ds_config", "GLOBAL_BATCH_SIZE", "MICRO_BATCH_SIZE", "DTYPES"]

GLOBAL_BATCH_SIZE = 32
MICRO_BATCH_SIZE = 4
DTYPES = ("fp16", "bf16", "fp32")


def _precision_section(dtype: str, fp16_extra: dict[str, Any]) -> dict[str, Any]:
    """`{section_name: section}` for `dtype`, empty for fp32."""
    if dtype == "fp16":
        return {"fp16": {"enabled": True, **fp16_extra}}
    if dtype == "bf16":
        return {"bfloat16": {"enabled": True}}
    if dtype == "fp32":
        return {}
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def _offload_device(offload: bool) -> str:
    return "cpu" if offload else "none"


def get_train_ds_config(offload: bool, dtype: str, stage: int = 2, enable_hybrid_engine: bool = False,
                        inference_tp_size: int = 1, release_inference_cache: bool = False,
                        pin_parameters: bool = True, tp_gather_partition_size: int = 8, max_out_tokens: int = 512,
                        enable_tensorboard: bool = False, enable_mixed_precision_lora: bool = False,
                        tb_path: str = "", tb_name: str = "") -> dict[str, Any]:
    """ds_config for a trained model (actor, critic, step-1/2 models)."""
    device = _offload_device(offload)
    zero_opt_dict: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "offload_param": {"device": device},
        "offload_optimizer": {"device": device},
        "stage3_param_persistence_threshold": 10_000,
        "stage3_max_live_parameters": 30_000_000,
        "stage3_prefetch_bucket_size": 30_000_000,
        "memory_efficient_linear": False,
    }
    if enable_mixed_precision_lora:
        zero_opt_dict["zero_quantized_nontrainable_weights"] = True
        local_devices = get_accelerator().device_count()
        if dist.is_initialized() and dist.get_world_size() != local_devices:
            # Multi-node: keep the secondary (hpZ) partition inside a node.
            zero_opt_dict["zero_hpz_partition_size"] = local_devices
    return {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": zero_opt_dict,
        **_precision_section(dtype, {"loss_scale_window": 100}),
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
        "hybrid_engine": {
            "enabled": enable_hybrid_engine,
            "max_out_tokens": max_out_tokens,
            "inference_tp_size": inference_tp_size,
            "release_inference_cache": release_inference_cache,
            "pin_parameters": pin_parameters,
            "tp_gather_partition_size": tp_gather_partition_size,
        },
        "tensorboard": {
            "enabled": enable_tensorboard,
            "output_path": f"{tb_path}/ds_tensorboard_logs/",
            "job_name": f"{tb_name}_tensorboard",
        },
    }


def get_eval_ds_config(offload: bool, dtype: str, stage: int = 0) -> dict[str, Any]:
    """ds_config for a frozen model (ref, reward, EMA): no optimizer, HE or tensorboard sections."""
    return {
        "train_batch_size": GLOBAL_BATCH_SIZE,
        "train_micro_batch_size_per_gpu": MICRO_BATCH_SIZE,
        "steps_per_print": 10,
        "zero_optimization": {
            "stage": stage,
            "stage3_param_persistence_threshold": 10_000,
            "offload_param": {"device": _offload_device(offload)},
            "memory_efficient_linear": False,
        },
        **_precision_section(dtype, {}),
        "gradient_clipping": 1.0,
        "prescale_gradients": False,
        "wall_clock_breakdown": False,
    }
