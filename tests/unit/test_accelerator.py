"""Accelerator selection and the CPU / CUDA accelerator surfaces."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import deepspeed.ops.op_builder as op_builder
from deepspeed.accelerator import (CPU_Accelerator, CUDA_Accelerator, DeepSpeedAccelerator, get_accelerator,
                                   is_current_accelerator_supported, set_accelerator)

_HAS_CUDA = torch.cuda.is_available() and torch.cuda.device_count() > 0

# The methods user scripts and our runtime call (spec §1 and §7).
_METHODS = [
    "device_name", "current_device_name", "current_device", "set_device", "device_count", "is_available",
    "synchronize", "empty_cache", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats",
    "total_memory", "manual_seed", "manual_seed_all", "get_rng_state", "set_rng_state", "stream", "current_stream",
    "default_stream", "communication_backend_name", "is_bf16_supported", "is_fp16_supported", "supported_dtypes",
    "is_synchronized_device", "pin_memory", "is_pinned", "on_accelerator", "device", "amp", "visible_devices_envs",
    "export_envs", "set_visible_devices_envs", "random", "create_op_builder", "get_op_builder"
]


@pytest.fixture(autouse=True)
def fresh_accelerator(monkeypatch):
    """Each test selects from scratch and leaves no cached choice behind."""
    monkeypatch.delenv("DS_ACCELERATOR", raising=False)
    set_accelerator(None)
    yield
    set_accelerator(None)


@pytest.mark.skipif(_HAS_CUDA, reason="auto-detection picks cuda on a GPU machine")
def test_auto_selects_cpu_without_gpu():
    acc = get_accelerator()
    assert isinstance(acc, CPU_Accelerator)
    assert acc is get_accelerator()  # cached
    assert is_current_accelerator_supported()


@pytest.mark.parametrize("value", ["cpu", "CPU", " cpu "])
def test_ds_accelerator_cpu(monkeypatch, value):
    monkeypatch.setenv("DS_ACCELERATOR", value)
    assert isinstance(get_accelerator(), CPU_Accelerator)


def test_ds_accelerator_invalid_value_raises(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "tpu")
    with pytest.raises(ValueError, match=r"'tpu'.*supported: cpu, cuda"):
        get_accelerator()


@pytest.mark.skipif(_HAS_CUDA, reason="needs a machine without CUDA")
def test_ds_accelerator_cuda_without_device_raises(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        get_accelerator()


def test_set_accelerator_overrides_and_validates():
    custom = CPU_Accelerator()
    set_accelerator(custom)
    assert get_accelerator() is custom
    with pytest.raises(TypeError):
        set_accelerator("cpu")


@pytest.mark.parametrize("cls", [CPU_Accelerator, CUDA_Accelerator])
def test_methods_exist(cls):
    acc = cls()
    assert isinstance(acc, DeepSpeedAccelerator)
    for name in _METHODS:
        assert callable(getattr(acc, name)), name
    assert acc.Stream is not None and acc.Event is not None


def test_cpu_accelerator_behaviour(monkeypatch):
    acc = CPU_Accelerator()
    assert acc.device_name() == acc.device_name(3) == acc.current_device_name() == "cpu"
    assert acc.communication_backend_name() in ("gloo", "ccl")
    assert acc.is_synchronized_device() and acc.is_available()
    assert acc.is_bf16_supported() and acc.is_fp16_supported()
    assert {torch.float, torch.bfloat16, torch.float16} <= set(acc.supported_dtypes())
    assert acc.synchronize() is None and acc.empty_cache() is None
    used = acc.memory_allocated()
    assert 0 < used <= acc.max_memory_allocated() <= acc.total_memory()
    acc.reset_peak_memory_stats()
    assert acc.max_memory_allocated() > 0
    monkeypatch.setenv("LOCAL_SIZE", "3")
    assert acc.device_count() == 3
    t = torch.ones(4)
    assert acc.on_accelerator(t) and acc.pin_memory(t) is t and acc.is_pinned(t) is False
    assert acc.device() == torch.device("cpu")


def test_cpu_rng_and_streams():
    acc = CPU_Accelerator()
    acc.manual_seed(1234)
    state = acc.get_rng_state()
    first = torch.randn(5)
    acc.set_rng_state(state)
    assert torch.equal(first, torch.randn(5))
    torch.manual_seed(1234)
    assert torch.equal(first, torch.randn(5))
    assert acc.random() is torch.random
    stream = acc.Stream()
    with acc.stream(stream):
        x = torch.ones(2) + 1
    acc.current_stream().wait_stream(stream)
    event = acc.Event(enable_timing=True)
    event.record()
    event.synchronize()
    assert event.query() and torch.equal(x, torch.full((2,), 2.0))


def test_visible_devices_envs():
    env = {}
    CUDA_Accelerator().set_visible_devices_envs(env, [2, 5])
    assert env == {"CUDA_VISIBLE_DEVICES": "2,5"}
    assert CUDA_Accelerator().visible_devices_envs() == ["CUDA_VISIBLE_DEVICES"]
    assert CUDA_Accelerator().export_envs() == ["NCCL"]


def test_op_builder_lookup(monkeypatch):
    acc = CPU_Accelerator()
    assert acc.get_op_builder("NoSuchBuilder") is None and acc.create_op_builder("no_such_op") is None

    class FakeBuilder:
        NAME = "fake_op"

    monkeypatch.setitem(op_builder.ALL_OPS, "fake_op", FakeBuilder)
    assert acc.get_op_builder("fake_op") is FakeBuilder
    assert acc.get_op_builder("FakeBuilder") is FakeBuilder
    assert isinstance(acc.create_op_builder("FakeBuilder"), FakeBuilder)


def test_cuda_accelerator_is_lazy():
    acc = CUDA_Accelerator()
    assert acc.device_name() == "cuda" and acc.device_name(1) == "cuda:1"
    assert acc.communication_backend_name() == "nccl"
    assert not acc.is_synchronized_device()
    if not _HAS_CUDA:
        assert not torch.cuda.is_initialized()


def test_import_and_selection_do_not_initialise_cuda():
    # A fresh interpreter where any CUDA initialisation raises: importing the
    # packages and building both accelerators must not trigger it.
    script = textwrap.dedent("""
        import torch
        def forbidden(*a, **k):
            raise AssertionError("CUDA was initialised")
        torch.cuda._lazy_init = forbidden
        torch.cuda.init = forbidden
        import deepspeed, deepspeed.accelerator, deepspeed.comm, deepspeed.utils.groups
        from deepspeed.accelerator import CUDA_Accelerator, get_accelerator
        CUDA_Accelerator()
        get_accelerator().device_name()
        assert not torch.cuda.is_initialized()
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
