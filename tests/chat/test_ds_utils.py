"""DS-Chat's train/eval ds_config dicts (spec §6) and that the runtime parses them."""
import itertools

import pytest

from deepspeed.runtime.config import DeepSpeedConfig
from dschat.ds_utils import get_eval_ds_config, get_train_ds_config


def _as_caller_sets_it(config, micro, world, gas):
    """What the step scripts do: micro = per-device batch, global = micro * world * GAS."""
    config = dict(config)
    config["train_micro_batch_size_per_gpu"] = micro
    config["train_batch_size"] = micro * world * gas
    return config


@pytest.mark.parametrize("dtype,offload,stage", itertools.product(["fp16", "bf16", "fp32"], [False, True],
                                                                  [0, 1, 2, 3]))
def test_train_config_parses(dtype, offload, stage):
    raw = get_train_ds_config(offload, dtype, stage, enable_tensorboard=True, tb_path="runs/step1",
                              tb_name="step1_model")
    parsed = DeepSpeedConfig(_as_caller_sets_it(raw, micro=2, world=2, gas=3), world_size=2)
    assert (parsed.train_batch_size, parsed.train_micro_batch_size_per_gpu, parsed.gradient_accumulation_steps) == \
        (12, 2, 3)
    assert parsed.zero_optimization_stage == stage
    assert parsed.fp16_enabled == (dtype == "fp16") and parsed.bfloat16_enabled == (dtype == "bf16")
    assert parsed.zero_config.offload_optimizer_device == parsed.zero_config.offload_param_device == \
        ("cpu" if offload else "none")
    assert parsed.gradient_clipping == 1.0 and parsed.steps_per_print == 10
    assert parsed.monitor_config.tensorboard.enabled
    assert parsed.monitor_config.tensorboard.output_path == "runs/step1/ds_tensorboard_logs/"
    assert parsed.monitor_config.tensorboard.job_name == "step1_model_tensorboard"


@pytest.mark.parametrize("dtype,offload,stage", itertools.product(["fp16", "bf16", "fp32"], [False, True],
                                                                  [0, 3]))
def test_eval_config_parses(dtype, offload, stage):
    raw = get_eval_ds_config(offload, dtype, stage)
    assert "hybrid_engine" not in raw and "tensorboard" not in raw and "optimizer" not in raw
    parsed = DeepSpeedConfig(_as_caller_sets_it(raw, micro=4, world=2, gas=1), world_size=2)
    assert parsed.zero_optimization_stage == stage
    assert parsed.zero_config.offload_param_device == ("cpu" if offload else "none")
    assert parsed.fp16_enabled == (dtype == "fp16") and parsed.bfloat16_enabled == (dtype == "bf16")


def test_train_config_values_match_the_spec():
    raw = get_train_ds_config(offload=True, dtype="fp16", stage=3, enable_hybrid_engine=True, inference_tp_size=2,
                              release_inference_cache=True, pin_parameters=False, tp_gather_partition_size=4,
                              max_out_tokens=96)
    assert raw["train_batch_size"] == 32 and raw["train_micro_batch_size_per_gpu"] == 4
    assert raw["steps_per_print"] == 10
    assert raw["fp16"] == {"enabled": True, "loss_scale_window": 100}
    assert raw["zero_optimization"] == {
        "stage": 3, "overlap_comm": True, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"},
        "stage3_param_persistence_threshold": 1e4, "stage3_max_live_parameters": 3e7,
        "stage3_prefetch_bucket_size": 3e7, "memory_efficient_linear": False}
    assert raw["hybrid_engine"] == {"enabled": True, "max_out_tokens": 96, "inference_tp_size": 2,
                                    "release_inference_cache": True, "pin_parameters": False,
                                    "tp_gather_partition_size": 4}
    assert raw["tensorboard"] == {"enabled": False, "output_path": "/ds_tensorboard_logs/",
                                  "job_name": "_tensorboard"}
    assert raw["gradient_clipping"] == 1.0 and raw["prescale_gradients"] is False
    assert raw["wall_clock_breakdown"] is False
    parsed = DeepSpeedConfig(raw, world_size=8)
    assert parsed.hybrid_engine.inference_tp_size == 2 and parsed.hybrid_engine.max_out_tokens == 96
    assert parsed.zero_config.param_persistence_threshold == 10_000
    assert parsed.zero_config.max_live_parameters == parsed.zero_config.prefetch_bucket_size == 30_000_000


def test_precision_sections():
    assert get_train_ds_config(False, "bf16")["bfloat16"] == {"enabled": True}
    assert "fp16" not in get_train_ds_config(False, "bf16")
    fp32 = get_train_ds_config(False, "fp32")
    assert not {"fp16", "bf16", "bfloat16"} & set(fp32)
    assert get_eval_ds_config(False, "fp16")["fp16"] == {"enabled": True}
    with pytest.raises(ValueError, match="dtype"):
        get_train_ds_config(False, "fp8")
    with pytest.raises(ValueError, match="dtype"):
        get_eval_ds_config(False, "half")


def test_mixed_precision_lora_sets_quantized_frozen_weights():
    raw = get_train_ds_config(False, "bf16", stage=3, enable_mixed_precision_lora=True)
    assert raw["zero_optimization"]["zero_quantized_nontrainable_weights"] is True
    assert DeepSpeedConfig(raw, world_size=1).zero_config.zero_quantized_nontrainable_weights


def test_configs_are_fresh_dicts():
    first = get_train_ds_config(False, "fp16")
    first["zero_optimization"]["stage"] = 1
    assert get_train_ds_config(False, "fp16")["zero_optimization"]["stage"] == 2
