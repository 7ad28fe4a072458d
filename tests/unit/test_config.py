"""ds_config parsing: section defaults, "auto", errors, aliases, batch arithmetic, sources."""
import base64
import json
import logging
import sys

import pytest
import torch

from deepspeed.monitor.config import DeepSpeedMonitorConfig, get_monitor_config
from deepspeed.runtime.activation_checkpointing_config import DeepSpeedActivationCheckpointingConfig
from deepspeed.runtime.config import (
    DeepSpeedConfig,
    OptimizerConfig,
    load_config_source,
    resolve_batch_sizes,
)
from deepspeed.runtime.config_utils import DeepSpeedConfigError, drop_auto
from deepspeed.runtime.hybrid_engine_config import HybridEngineConfig
from deepspeed.runtime.precision.config import DeepSpeedBF16Config, DeepSpeedFP16Config
from deepspeed.runtime.zero.config import DeepSpeedZeroConfig
from deepspeed.runtime.zero.offload_config import (
    DeepSpeedZeroOffloadOptimizerConfig,
    DeepSpeedZeroOffloadParamConfig,
    OffloadDeviceEnum,
)
from deepspeed.utils.logging import logger as ds_logger


@pytest.fixture
def ds_log(caplog):
    """caplog wired to the package logger, which does not propagate to root."""
    ds_logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        ds_logger.removeHandler(caplog.handler)


def _cfg(extra=None, world_size=1, **kw):
    base = {"train_batch_size": 8 * world_size}
    base.update(extra or {})
    return DeepSpeedConfig(base, world_size=world_size, **kw)


# ---------------------------------------------------------------- defaults


def test_fp16_defaults():
    c = DeepSpeedFP16Config()
    assert (c.enabled, c.auto_cast, c.loss_scale, c.initial_scale_power) == (False, False, 0.0, 16)
    assert (c.loss_scale_window, c.hysteresis, c.consecutive_hysteresis, c.min_loss_scale) == (1000, 2, False, 1)
    assert c.fp16_master_weights_and_grads is False
    assert c.dynamic_loss_scale is True
    assert c.initial_dynamic_scale == 65536
    assert DeepSpeedFP16Config(loss_scale=128).dynamic_loss_scale is False
    assert DeepSpeedFP16Config(initial_scale_power=8).initial_dynamic_scale == 256


def test_bf16_defaults():
    c = DeepSpeedBF16Config()
    assert c.model_dump() == {
        "enabled": False,
        "immediate_grad_update": False,
        "check_grad_overflow": True,
        "bf16_master_weights_and_grads": False,
        "bf16_optimizer_states": False,
    }


def test_zero_defaults():
    z = DeepSpeedZeroConfig()
    expected = {
        "stage": 0,
        "contiguous_gradients": True,
        "reduce_scatter": True,
        "reduce_bucket_size": 500_000_000,
        "allgather_partitions": True,
        "allgather_bucket_size": 500_000_000,
        "overlap_comm": False,
        "load_from_fp32_weights": True,
        "elastic_checkpoint": False,
        "sub_group_size": 1_000_000_000,
        "ignore_unused_parameters": True,
        "round_robin_gradients": False,
        "prefetch_bucket_size": 50_000_000,
        "param_persistence_threshold": 100_000,
        "model_persistence_threshold": sys.maxsize,
        "max_live_parameters": 1_000_000_000,
        "max_reuse_distance": 1_000_000_000,
        "gather_16bit_weights_on_model_save": False,
        "module_granularity_threshold": 0,
        "use_all_reduce_for_fetch_params": False,
        "zero_hpz_partition_size": 1,
        "zero_quantized_weights": False,
        "zero_quantized_nontrainable_weights": False,
        "zero_quantized_gradients": False,
        "zeropp_loco_param": None,
        "memory_efficient_linear": True,
        "mics_shard_size": -1,
        "mics_hierarchical_params_gather": False,
        "enable_sanity_checks": False,
    }
    dumped = z.model_dump()
    for key, value in expected.items():
        assert dumped[key] == value, key
    assert z.offload_param_device == "none" and z.offload_optimizer_device == "none"


def test_offload_defaults():
    p = DeepSpeedZeroOffloadParamConfig()
    assert (p.device, p.nvme_path, p.buffer_count, p.buffer_size, p.max_in_cpu, p.pin_memory) == (
        "none", None, 5, 100_000_000, 1_000_000_000, True)
    o = DeepSpeedZeroOffloadOptimizerConfig()
    assert (o.device, o.nvme_path, o.buffer_count, o.pin_memory, o.ratio) == ("none", None, 4, True, 1.0)
    assert (o.pipeline_read, o.pipeline_write, o.fast_init, o.pipeline) == (False, False, False, False)
    assert [m.value for m in OffloadDeviceEnum] == ["none", "cpu", "nvme"]


def test_offload_pin_memory_default_true_when_device_given():
    z = DeepSpeedZeroConfig(stage=3, offload_param={"device": "cpu"}, offload_optimizer={"device": "nvme",
                                                                                        "nvme_path": "/tmp"})
    assert z.offload_param.pin_memory is True and z.offload_optimizer.pin_memory is True
    assert z.offload_param_device == "cpu" and z.offload_optimizer_device == "nvme"
    # Spellings users write: upper case and JSON null.
    assert DeepSpeedZeroConfig(offload_optimizer={"device": "CPU"}).offload_optimizer_device == "cpu"
    assert DeepSpeedZeroConfig(offload_param={"device": None}).offload_param_device == "none"
    assert DeepSpeedZeroConfig(offload_param=None).offload_param_device == "none"


def test_other_section_defaults():
    assert HybridEngineConfig().model_dump() == {
        "enabled": False,
        "max_out_tokens": 512,
        "inference_tp_size": 1,
        "release_inference_cache": False,
        "pin_parameters": True,
        "tp_gather_partition_size": 8,
        "enable_cuda_graph": False,
    }
    assert DeepSpeedActivationCheckpointingConfig().model_dump() == {
        "partition_activations": False,
        "contiguous_memory_optimization": False,
        "synchronize_checkpoint_boundary": False,
        "profile": False,
        "cpu_checkpointing": False,
        "number_checkpoints": None,
    }
    m = DeepSpeedMonitorConfig()
    for section in (m.tensorboard, m.csv_monitor):
        assert (section.enabled, section.output_path, section.job_name) == (False, "", "DeepSpeedJobName")
    assert (m.wandb.enabled, m.wandb.group, m.wandb.team, m.wandb.project) == (False, None, None, "deepspeed")
    assert m.comet.enabled is False and m.enabled is False


def test_monitor_enabled_is_any():
    assert get_monitor_config({"csv_monitor": {"enabled": True}}).enabled is True
    assert get_monitor_config({"wandb": {"enabled": True}, "train_batch_size": 4}).enabled is True
    assert get_monitor_config({"tensorboard": {"enabled": False}}).enabled is False


def test_top_level_defaults():
    c = _cfg()
    assert c.gradient_clipping == 1.0
    assert c.steps_per_print is None
    assert c.wall_clock_breakdown is False and c.prescale_gradients is False
    assert c.gradient_predivide_factor == 1.0 and c.gradient_allreduce_op == "mean"
    assert c.communication_data_type is None
    assert c.zero_allow_untested_optimizer is False and c.zero_force_ds_cpu_optimizer is True
    assert c.dataloader_drop_last is False and c.memory_breakdown is False
    assert c.checkpoint_tag_validation == "WARN"
    assert c.optimizer_config is None and c.optimizer_name is None and c.optimizer_params is None
    assert c.scheduler_config is None and c.scheduler_name is None and c.scheduler_params is None
    assert c.zero_enabled is False and c.zero_optimization_stage == 0
    assert c.fp16_enabled is False and c.bfloat16_enabled is False and c.fp16_auto_cast is False
    assert isinstance(c.zero_config, DeepSpeedZeroConfig)
    assert isinstance(c.hybrid_engine, HybridEngineConfig)
    assert isinstance(c.monitor_config, DeepSpeedMonitorConfig)
    assert isinstance(c.activation_checkpointing_config, DeepSpeedActivationCheckpointingConfig)


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_communication_data_type(name, dtype):
    assert _cfg({"communication_data_type": name}).communication_data_type is dtype


# ---------------------------------------------------------------- "auto"


def test_auto_dropped_everywhere():
    c = _cfg({
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "fp16": {"enabled": "auto", "loss_scale_window": 100},
        "zero_optimization": {"stage": 3, "reduce_bucket_size": "auto",
                              "stage3_prefetch_bucket_size": "auto", "offload_param": {"device": "auto"}},
        "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": [0.9, 0.95]}},
    })
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == (4, 4, 1)
    assert c.gradient_clipping == 1.0
    assert c.fp16_enabled is False and c.fp16_config.loss_scale_window == 100
    assert c.zero_config.reduce_bucket_size == 500_000_000 and c.zero_config.prefetch_bucket_size == 50_000_000
    assert c.zero_config.offload_param_device == "none"
    assert c.optimizer_params == {"betas": [0.9, 0.95]}
    assert "train_batch_size" not in c._param_dict and "lr" not in c._param_dict["optimizer"]["params"]


def test_auto_dropped_by_section_models_and_helper():
    assert DeepSpeedFP16Config(enabled=True, loss_scale="auto").loss_scale == 0.0
    assert drop_auto({"a": "auto", "b": {"c": "auto", "d": 1}, "e": ["auto"]}) == {"b": {"d": 1}, "e": ["auto"]}


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("section,bad,hint", [
    ({"zero_optimization": {"stage": 2, "overlap_com": True}}, "overlap_com", "overlap_comm"),
    ({"zero_optimization": {"stage3_prefetch_bucket_sise": 1}}, "stage3_prefetch_bucket_sise",
     "stage3_prefetch_bucket_size"),
    ({"zero_optimization": {"offload_param": {"device": "cpu", "pin_mem": True}}}, "pin_mem", "pin_memory"),
    ({"fp16": {"enabled": True, "loss_scale_windows": 10}}, "loss_scale_windows", "loss_scale_window"),
    ({"bf16": {"enable": True}}, "enable", "enabled"),
    ({"hybrid_engine": {"max_out_token": 4}}, "max_out_token", "max_out_tokens"),
    ({"tensorboard": {"job_nam": "x"}}, "job_nam", "job_name"),
])
def test_unknown_section_key_names_key_and_closest(section, bad, hint):
    with pytest.raises(DeepSpeedConfigError) as info:
        _cfg(section)
    msg = str(info.value)
    assert f"unknown key {bad!r}" in msg and f"did you mean {hint!r}" in msg
    assert "\n" not in msg and next(iter(section)) in msg


def test_nested_unknown_key_names_full_path():
    with pytest.raises(DeepSpeedConfigError, match=r"^zero_optimization\.offload_optimizer: unknown key 'ratioo'"):
        DeepSpeedZeroConfig(stage=3, offload_optimizer={"ratioo": 0.5})


@pytest.mark.parametrize("extra,where,expected", [
    ({"zero_optimization": {"stage": "three"}}, "zero_optimization.stage", "int"),
    ({"zero_optimization": {"reduce_bucket_size": 1.5}}, "zero_optimization.reduce_bucket_size", "int"),
    ({"zero_optimization": {"offload_param": {"device": "gpu"}}}, "zero_optimization.offload_param.device",
     "'cpu'"),
    ({"fp16": {"enabled": "maybe"}}, "fp16.enabled", "bool"),
    ({"gradient_clipping": "big"}, "gradient_clipping", "float"),
    ({"steps_per_print": "often"}, "steps_per_print", "int"),
    ({"wall_clock_breakdown": [1]}, "wall_clock_breakdown", "bool"),
])
def test_wrong_type_names_key_and_type(extra, where, expected):
    with pytest.raises(DeepSpeedConfigError) as info:
        _cfg(extra)
    msg = str(info.value)
    assert msg.startswith(where + ":") and "expected" in msg and expected in msg and "\n" not in msg


def test_section_must_be_a_dict():
    with pytest.raises(DeepSpeedConfigError, match="^fp16: expected a dict"):
        _cfg({"fp16": True})


def test_stage_out_of_range_and_assignment_validated():
    with pytest.raises(DeepSpeedConfigError, match="zero_optimization.stage"):
        DeepSpeedZeroConfig(stage=4)
    z = DeepSpeedZeroConfig(stage=1)
    with pytest.raises(DeepSpeedConfigError, match="zero_optimization.stage"):
        z.stage = -1


def test_float_sizes_coerced_to_int():
    z = DeepSpeedZeroConfig(reduce_bucket_size=5e8, stage3_max_live_parameters=3e7, sub_group_size=1e9)
    assert z.reduce_bucket_size == 500_000_000 and type(z.reduce_bucket_size) is int
    assert z.max_live_parameters == 30_000_000 and type(z.max_live_parameters) is int


def test_partial_offload_ratio_needs_stage3():
    assert DeepSpeedZeroConfig(stage=3, offload_optimizer={"device": "cpu", "ratio": 0.3}).offload_optimizer.ratio == 0.3
    with pytest.raises(DeepSpeedConfigError, match="ratio.*stage 3"):
        DeepSpeedZeroConfig(stage=2, offload_optimizer={"device": "cpu", "ratio": 0.3})


def test_max_grad_norm_rejected():
    with pytest.raises(DeepSpeedConfigError, match="gradient_clipping") as info:
        _cfg({"optimizer": {"type": "Adam", "params": {"lr": 1e-3, "max_grad_norm": 1.0}}})
    assert "max_grad_norm" in str(info.value)


def test_optimizer_and_scheduler():
    c = _cfg({"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}},
              "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}}})
    assert c.optimizer_name == "adamw" and c.optimizer_config.type == "AdamW"
    assert c.optimizer_params == {"lr": 1e-3}
    assert c.scheduler_name == "WarmupLR" and c.scheduler_params == {"warmup_num_steps": 10}
    assert OptimizerConfig(type="Lamb").params == {}
    with pytest.raises(DeepSpeedConfigError, match="optimizer.type"):
        _cfg({"optimizer": {"params": {}}})


def test_unknown_top_level_key_is_only_warned(ds_log):
    with ds_log.at_level(logging.WARNING, logger=ds_logger.name):
        c = _cfg({"gradient_clippin": 0.5, "something_else": 1})
    assert c.gradient_clipping == 1.0
    assert "'gradient_clippin'" in ds_log.text and "did you mean 'gradient_clipping'" in ds_log.text
    assert "'something_else'" in ds_log.text


def test_legacy_zero_optimization_bool(ds_log):
    with ds_log.at_level(logging.WARNING, logger=ds_logger.name):
        assert _cfg({"zero_optimization": True}).zero_optimization_stage == 1
    assert "deprecated" in ds_log.text


# ---------------------------------------------------------------- precision


def test_bfloat16_alias():
    c = _cfg({"bfloat16": {"enabled": True}, "fp16": {"enabled": False}})
    assert c.bfloat16_enabled is True and c.bf16_config.enabled is True
    assert "bf16" in c._param_dict and "bfloat16" not in c._param_dict


def test_bf16_key_wins_over_legacy(ds_log):
    with ds_log.at_level(logging.WARNING, logger=ds_logger.name):
        c = _cfg({"bf16": {"enabled": False}, "bfloat16": {"enabled": True}})
    assert c.bfloat16_enabled is False and "bfloat16" in ds_log.text


@pytest.mark.parametrize("bf16_key", ["bf16", "bfloat16"])
def test_fp16_and_bf16_both_enabled_raises(bf16_key):
    with pytest.raises(DeepSpeedConfigError, match="fp16 and bf16"):
        _cfg({"fp16": {"enabled": True}, bf16_key: {"enabled": True}})


def test_fp16_fields_reach_config():
    c = _cfg({"fp16": {"enabled": True, "auto_cast": True, "loss_scale": 0, "initial_scale_power": 12,
                       "hysteresis": 3, "min_loss_scale": 0.5}})
    assert c.fp16_enabled and c.fp16_auto_cast
    assert c.fp16_config.initial_dynamic_scale == 4096 and c.fp16_config.hysteresis == 3


# ---------------------------------------------------------------- batch sizes


@pytest.mark.parametrize("tbs,micro,gas,ws,expected", [
    (32, 4, 2, 4, (32, 4, 2)),        # all three, consistent
    (32, 4, None, 2, (32, 4, 4)),     # gas = tbs // micro // ws
    (32, None, 2, 4, (32, 4, 2)),     # micro = tbs // ws // gas
    (None, 3, 5, 2, (30, 3, 5)),      # tbs = micro * gas * ws
    (24, None, None, 3, (24, 8, 1)),  # tbs alone: gas 1, micro = tbs // ws
    (None, 6, None, 4, (24, 6, 1)),   # micro alone: gas 1, tbs = micro * ws
])
def test_batch_fill_in_rules(tbs, micro, gas, ws, expected):
    assert resolve_batch_sizes(tbs, micro, gas, ws) == expected
    cfg = {k: v for k, v in (("train_batch_size", tbs), ("train_micro_batch_size_per_gpu", micro),
                             ("gradient_accumulation_steps", gas)) if v is not None}
    c = DeepSpeedConfig(cfg, world_size=ws)
    assert (c.train_batch_size, c.train_micro_batch_size_per_gpu, c.gradient_accumulation_steps) == expected
    assert c.world_size == ws


@pytest.mark.parametrize("tbs,micro,gas,ws,rule", [
    (30, 4, 4, 2, "all three given"),
    (30, 4, None, 2, "gradient_accumulation_steps = train_batch_size // micro_batch // world_size"),
    (30, None, 4, 2, "micro_batch = train_batch_size // world_size // gradient_accumulation_steps"),
    (25, None, None, 2, "micro_batch = train_batch_size // world_size"),
    (2, 4, None, 2, "gradient_accumulation_steps = train_batch_size"),  # derives gas = 0
])
def test_inconsistent_batch_triple_message(tbs, micro, gas, ws, rule):
    with pytest.raises(DeepSpeedConfigError) as info:
        resolve_batch_sizes(tbs, micro, gas, ws)
    msg = str(info.value)
    assert f"train_batch_size={tbs}" in msg and f"world_size={ws}" in msg and rule in msg
    if micro is not None:
        assert f"train_micro_batch_size_per_gpu={micro}" in msg
    if gas is not None:
        assert f"gradient_accumulation_steps={gas}" in msg


@pytest.mark.parametrize("cfg", [{}, {"gradient_accumulation_steps": 2}])
def test_batch_needs_tbs_or_micro(cfg):
    with pytest.raises(DeepSpeedConfigError, match="must set train_batch_size or train_micro_batch_size_per_gpu"):
        DeepSpeedConfig(cfg, world_size=1)


@pytest.mark.parametrize("value", [0, -4, 2.5, "8", True])
def test_batch_values_must_be_positive_ints(value):
    with pytest.raises(DeepSpeedConfigError, match="train_batch_size: expected a positive int"):
        DeepSpeedConfig({"train_batch_size": value}, world_size=1)


def test_world_size_sources():
    class _Mpu:
        def get_data_parallel_world_size(self):
            return 4

    assert DeepSpeedConfig({"train_micro_batch_size_per_gpu": 2}, mpu=_Mpu()).train_batch_size == 8
    assert DeepSpeedConfig({"train_micro_batch_size_per_gpu": 2}, mpu=_Mpu(), world_size=3).world_size == 3
    assert DeepSpeedConfig({"train_micro_batch_size_per_gpu": 2}).world_size == 1  # dist not initialised


# ---------------------------------------------------------------- sources


_SAMPLE = {"train_batch_size": 4, "zero_optimization": {"stage": 2}, "fp16": {"enabled": True}}


def test_json_file_source(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(_SAMPLE))
    assert load_config_source(str(path)) == _SAMPLE
    assert load_config_source(path) == _SAMPLE
    c = DeepSpeedConfig(str(path))
    assert c.zero_optimization_stage == 2 and c.fp16_enabled


def test_hjson_file_source(tmp_path):
    path = tmp_path / "ds.hjson"
    path.write_text("{\n  # comment\n  train_batch_size: 4\n  zero_optimization: {stage: 2}\n"
                    "  fp16: {enabled: true}\n}\n")
    assert load_config_source(str(path)) == _SAMPLE


@pytest.mark.parametrize("text", [
    '{"train_batch_size": 4, "train_batch_size": 8}',
    '{"zero_optimization": {"stage": 1, "stage": 2}}',
    "{\n train_batch_size: 4\n train_batch_size: 8\n}",
])
def test_duplicate_keys_raise(tmp_path, text):
    path = tmp_path / "dup.json"
    path.write_text(text)
    with pytest.raises(DeepSpeedConfigError, match="duplicate key"):
        load_config_source(str(path))


def test_base64_source():
    encoded = base64.b64encode(json.dumps(_SAMPLE).encode()).decode()
    assert load_config_source(encoded) == _SAMPLE
    assert DeepSpeedConfig(encoded).zero_optimization_stage == 2


def test_missing_path_is_named(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(DeepSpeedConfigError, match="not found") as info:
        DeepSpeedConfig(missing)
    assert missing in str(info.value)


def test_unparsable_file_and_bad_type(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("[1, 2]")
    with pytest.raises(DeepSpeedConfigError, match="JSON object"):
        load_config_source(str(path))
    with pytest.raises(DeepSpeedConfigError, match="got int"):
        load_config_source(3)


def test_caller_dict_not_modified():
    user = {"train_batch_size": 4, "zero_optimization": {"stage": 1, "reduce_bucket_size": "auto"},
            "bfloat16": {"enabled": True}}
    snapshot = json.loads(json.dumps(user))
    DeepSpeedConfig(user)
    assert user == snapshot


# ---------------------------------------------------------------- ZeRO aliases


_STAGE3_ALIASES = {
    "stage3_prefetch_bucket_size": ("prefetch_bucket_size", 30_000_000),
    "stage3_param_persistence_threshold": ("param_persistence_threshold", 10_000),
    "stage3_model_persistence_threshold": ("model_persistence_threshold", 123),
    "stage3_max_live_parameters": ("max_live_parameters", 30_000_000),
    "stage3_max_reuse_distance": ("max_reuse_distance", 7),
    "stage3_gather_16bit_weights_on_model_save": ("gather_16bit_weights_on_model_save", True),
    "stage3_module_granularity_threshold": ("module_granularity_threshold", 99),
    "stage3_use_all_reduce_for_fetch_params": ("use_all_reduce_for_fetch_params", True),
}


@pytest.mark.parametrize("alias", sorted(_STAGE3_ALIASES))
def test_stage3_aliases(alias):
    field, value = _STAGE3_ALIASES[alias]
    assert getattr(DeepSpeedZeroConfig(stage=3, **{alias: value}), field) == value
    assert getattr(DeepSpeedZeroConfig(stage=3, **{field: value}), field) == value


def test_alias_and_name_conflict():
    with pytest.raises(DeepSpeedConfigError, match="both"):
        DeepSpeedZeroConfig(stage3_max_live_parameters=1, max_live_parameters=2)
    assert DeepSpeedZeroConfig(stage3_max_live_parameters=5, max_live_parameters=5).max_live_parameters == 5


def test_deprecated_gather_fp16_key(ds_log):
    with ds_log.at_level(logging.WARNING, logger=ds_logger.name):
        z = DeepSpeedZeroConfig(stage=3, stage3_gather_fp16_weights_on_model_save=True)
    assert z.gather_16bit_weights_on_model_save is True
    assert "stage3_gather_fp16_weights_on_model_save is deprecated" in ds_log.text


def test_deprecated_cpu_offload(ds_log):
    with ds_log.at_level(logging.WARNING, logger=ds_logger.name):
        z = DeepSpeedZeroConfig(stage=2, cpu_offload=True)
    assert z.offload_optimizer_device == "cpu" and z.offload_param_device == "none"
    assert z.offload_optimizer.pin_memory is True
    assert "cpu_offload is deprecated" in ds_log.text
    assert DeepSpeedZeroConfig(stage=2, cpu_offload=False).offload_optimizer_device == "none"


def test_deprecated_cpu_offload_param_and_pin_memory():
    z = DeepSpeedZeroConfig(stage=3, cpu_offload=True, cpu_offload_param=True, cpu_offload_use_pin_memory=False)
    assert z.offload_optimizer_device == "cpu" and z.offload_param_device == "cpu"
    assert z.offload_optimizer.pin_memory is False and z.offload_param.pin_memory is False
    with pytest.raises(DeepSpeedConfigError, match="cpu_offload"):
        DeepSpeedZeroConfig(stage=2, cpu_offload=True, offload_optimizer={"device": "cpu"})


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_overlap_comm_default_by_stage(stage):
    assert DeepSpeedZeroConfig(stage=stage).overlap_comm is (stage == 3)
    assert DeepSpeedZeroConfig(stage=stage, overlap_comm=True).overlap_comm is True
    assert DeepSpeedZeroConfig(stage=stage, overlap_comm=False).overlap_comm is False
    assert _cfg({"zero_optimization": {"stage": stage}}).zero_config.overlap_comm is (stage == 3)


def test_zero_accepted_keys_snapshot():
    # Changing this list changes the ds_config contract: do it deliberately.
    assert sorted(DeepSpeedZeroConfig.accepted_keys()) == [
        "allgather_bucket_size", "allgather_partitions", "contiguous_gradients", "cpu_offload",
        "cpu_offload_param", "cpu_offload_use_pin_memory", "elastic_checkpoint", "enable_sanity_checks",
        "gather_16bit_weights_on_model_save", "ignore_unused_parameters", "load_from_fp32_weights",
        "max_live_parameters", "max_reuse_distance", "memory_efficient_linear",
        "mics_hierarchical_params_gather", "mics_shard_size", "model_persistence_threshold",
        "module_granularity_threshold", "offload_optimizer", "offload_param", "overlap_comm",
        "param_persistence_threshold", "prefetch_bucket_size", "reduce_bucket_size", "reduce_scatter",
        "round_robin_gradients", "stage", "stage3_gather_16bit_weights_on_model_save",
        "stage3_gather_fp16_weights_on_model_save", "stage3_max_live_parameters", "stage3_max_reuse_distance",
        "stage3_model_persistence_threshold", "stage3_module_granularity_threshold",
        "stage3_param_persistence_threshold", "stage3_prefetch_bucket_size",
        "stage3_use_all_reduce_for_fetch_params", "sub_group_size", "use_all_reduce_for_fetch_params",
        "zero_hpz_partition_size", "zero_quantized_gradients", "zero_quantized_nontrainable_weights",
        "zero_quantized_weights", "zeropp_loco_param",
    ]
    assert sorted(DeepSpeedZeroOffloadParamConfig.accepted_keys()) == [
        "buffer_count", "buffer_size", "device", "max_in_cpu", "nvme_path", "pin_memory"]
    assert sorted(DeepSpeedZeroOffloadOptimizerConfig.accepted_keys()) == [
        "buffer_count", "device", "fast_init", "nvme_path", "pin_memory", "pipeline_read", "pipeline_write",
        "ratio"]


def test_dschat_style_config_parses():
    """The shape DeepSpeed-Chat's get_train_ds_config writes (ZeRO-3, offload, HE, tensorboard)."""
    cfg = {
        "train_batch_size": 32, "train_micro_batch_size_per_gpu": 4, "steps_per_print": 10,
        "zero_optimization": {"stage": 3, "overlap_comm": True, "offload_param": {"device": "cpu"},
                              "offload_optimizer": {"device": "cpu"}, "stage3_param_persistence_threshold": 1e4,
                              "stage3_max_live_parameters": 3e7, "stage3_prefetch_bucket_size": 3e7,
                              "memory_efficient_linear": False},
        "fp16": {"enabled": False, "loss_scale_window": 100}, "bfloat16": {"enabled": True},
        "gradient_clipping": 1.0, "prescale_gradients": False, "wall_clock_breakdown": False,
        "hybrid_engine": {"enabled": True, "max_out_tokens": 512, "inference_tp_size": 1,
                          "release_inference_cache": False, "pin_parameters": True, "tp_gather_partition_size": 8},
        "tensorboard": {"enabled": True, "output_path": "out/ds_tensorboard_logs/", "job_name": "step3_actor"},
    }
    c = DeepSpeedConfig(cfg, world_size=2)
    assert c.gradient_accumulation_steps == 4 and c.steps_per_print == 10
    assert c.zero_config.param_persistence_threshold == 10_000 and c.zero_config.offload_param_device == "cpu"
    assert c.hybrid_engine.enabled and c.monitor_config.tensorboard.job_name == "step3_actor"
    assert c.bfloat16_enabled and not c.fp16_enabled
