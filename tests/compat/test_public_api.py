"""Pins the public names real clients (HF, DS-Chat, TRL, user scripts) import from us."""
import subprocess
import sys

import pytest


def test_import_deepspeed_has_no_side_effects():
    code = ("import sys, torch; import deepspeed; import torch.distributed as d; "
            "assert not d.is_initialized(); assert not torch.cuda.is_initialized(); "
            "print(len([m for m in sys.modules if m.startswith('deepspeed')]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) <= 3  # the package itself; everything else is lazy


def test_top_level_names():
    import deepspeed
    for name in ("initialize", "init_distributed", "add_config_arguments", "comm", "ops", "DeepSpeedEngine",
                 "DeepSpeedConfig", "__version__"):
        assert hasattr(deepspeed, name), name
    assert deepspeed.__version__.count(".") == 2


@pytest.mark.parametrize("name", [
    "init_distributed", "is_initialized", "get_rank", "get_world_size", "get_local_rank", "get_global_rank",
    "get_world_group", "new_group", "barrier", "monitored_barrier", "broadcast", "broadcast_object_list",
    "all_reduce", "all_reduce_coalesced", "inference_all_reduce", "reduce", "all_gather", "all_gather_object",
    "all_gather_into_tensor", "allgather_fn", "all_gather_coalesced", "reduce_scatter", "reduce_scatter_tensor",
    "reduce_scatter_fn", "all_to_all_single", "all_to_all", "send", "recv", "isend", "irecv", "gather", "scatter",
    "destroy_process_group", "has_all_gather_into_tensor", "has_reduce_scatter_tensor", "log_summary", "ReduceOp"])
def test_comm_names(name):
    from deepspeed import comm
    assert hasattr(comm, name)


def test_reduce_op_values():
    from deepspeed.comm import ReduceOp
    assert [op.name for op in ReduceOp] == ["SUM", "PRODUCT", "MIN", "MAX", "BAND", "BOR", "BXOR", "AVG", "UNUSED"]
    assert ReduceOp.SUM.value == 0


@pytest.mark.parametrize("name", [
    "device_name", "current_device_name", "current_device", "set_device", "device_count", "is_available",
    "synchronize", "empty_cache", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats",
    "total_memory", "manual_seed", "manual_seed_all", "get_rng_state", "set_rng_state", "Stream", "stream",
    "current_stream", "default_stream", "Event", "communication_backend_name", "is_bf16_supported",
    "is_fp16_supported", "supported_dtypes"])
def test_accelerator_methods(name):
    from deepspeed.accelerator import get_accelerator
    assert hasattr(get_accelerator(), name)


def test_lr_schedule_names():
    from deepspeed.runtime import lr_schedules
    assert lr_schedules.VALID_LR_SCHEDULES == ["LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR",
                                               "WarmupCosineLR"]


def test_engine_methods():
    from deepspeed.runtime.engine import DeepSpeedEngine
    for name in ("forward", "backward", "step", "train", "eval", "gradient_accumulation_steps", "train_batch_size",
                 "train_micro_batch_size_per_gpu", "zero_optimization", "zero_optimization_stage", "fp16_enabled",
                 "bfloat16_enabled", "gradient_clipping", "get_lr", "get_mom", "get_global_grad_norm",
                 "was_step_applied", "deepspeed_io", "empty_partition_cache", "destroy", "save_checkpoint",
                 "load_checkpoint", "save_16bit_model", "save_fp16_model", "is_gradient_accumulation_boundary",
                 "set_gradient_accumulation_boundary"):
        assert callable(getattr(DeepSpeedEngine, name)), name
    assert not hasattr(DeepSpeedEngine, "bf16_enabled")  # DeepSpeed has only bfloat16_enabled


def test_optimizer_wrapper_surface():
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    for name in ("overflow", "skip_step", "cur_scale", "check_overflow", "step", "backward", "zero_grad",
                 "state_dict", "load_state_dict", "param_groups"):
        assert hasattr(DeepSpeedZeroOptimizer, name) or name in ("overflow", "skip_step"), name


def test_private_group_helpers_used_by_hf():
    from deepspeed.utils import groups
    for name in ("_get_data_parallel_group", "_get_data_parallel_world_size", "_get_data_parallel_rank"):
        assert callable(getattr(groups, name))
