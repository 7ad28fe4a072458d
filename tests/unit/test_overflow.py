"""inf/NaN detection: every position, every floating dtype, exact near the dtype maximum."""
import types

import pytest
import torch

from deepspeed.runtime.precision import overflow
from deepspeed.runtime.precision.overflow import global_overflow, has_inf_or_nan, local_overflow

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
BAD = [float("inf"), float("-inf"), float("nan")]


def reference(tensors):
    """Plain-torch oracle: any element that is not finite."""
    return any(t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 16, 33, 65, 1000])
def test_every_position_and_value(dtype, n):
    gen = torch.Generator().manual_seed(n)
    base = torch.randn(n, generator=gen).to(dtype)
    assert has_inf_or_nan(base) is False
    # Covers the head, the vectorised body and the scalar tail of the reduction.
    for pos in sorted({0, n // 2, n - 1, max(n - 2, 0)}):
        for bad in BAD:
            t = base.clone()
            t[pos] = bad
            assert has_inf_or_nan(t) is True, (dtype, n, pos, bad)
            assert local_overflow([base, t]).item() == 1.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_large_tensor(dtype):
    t = torch.randn(1 << 22).to(dtype)
    assert not has_inf_or_nan(t)
    t[-1] = float("nan")
    assert has_inf_or_nan(t)
    t[-1] = 0.0
    t[(1 << 21) + 3] = float("-inf")
    assert has_inf_or_nan(t)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_no_false_positive_near_dtype_max(dtype):
    # Every element is finite, but their sum overflows: a sum-based check
    # would report an overflow here.
    big = torch.full((4096,), torch.finfo(dtype).max, dtype=dtype)
    assert not has_inf_or_nan(big)
    assert not has_inf_or_nan(-big)
    assert local_overflow([big]).item() == 0.0


def test_shapes_and_layouts():
    t = torch.zeros(6, 5).t()  # non-contiguous
    assert not has_inf_or_nan(t)
    t[4, 1] = float("inf")
    assert has_inf_or_nan(t)
    assert has_inf_or_nan(torch.tensor(float("nan")))  # 0-dim
    assert not has_inf_or_nan(torch.tensor(3.0))
    assert has_inf_or_nan(torch.tensor([1 + 1j, complex(0, float("inf"))]))


def test_local_overflow_edge_cases():
    empty = local_overflow([])
    assert empty.dim() == 0 and empty.dtype == torch.float32 and empty.item() == 0.0
    assert local_overflow(iter([])).item() == 0.0
    # None grads, empty tensors and integer tensors cannot overflow.
    assert local_overflow([None, torch.empty(0), torch.arange(5)]).item() == 0.0
    assert not has_inf_or_nan(torch.empty(0, 3, dtype=torch.float16))


def test_local_overflow_mixed_dtypes_matches_reference():
    gen = torch.Generator().manual_seed(0)
    for trial in range(40):
        tensors = []
        for dtype in DTYPES:
            t = torch.randn(int(torch.randint(1, 300, (), generator=gen)), generator=gen).to(dtype)
            if torch.rand((), generator=gen) < 0.1:
                t[int(torch.randint(0, t.numel(), (), generator=gen))] = BAD[trial % 3]
            tensors.append(t)
        flag = local_overflow(tensors)
        assert flag.dim() == 0 and flag.dtype == torch.float32
        assert bool(flag.item()) == reference(tensors)


def test_local_overflow_ignores_autograd():
    w = torch.ones(3, requires_grad=True)
    assert local_overflow([w * 2]).requires_grad is False


def test_global_overflow_without_process_group(monkeypatch):
    fake = types.SimpleNamespace(is_initialized=lambda: False)
    monkeypatch.setattr(overflow, "dist", fake)
    assert global_overflow(torch.tensor(1.0)) is True
    assert global_overflow(torch.tensor(0.0)) is False


def test_global_overflow_all_reduces_max_on_a_copy(monkeypatch):
    calls = []

    def all_reduce(tensor, op=None, group=None):
        calls.append((op, group))
        tensor.copy_(torch.maximum(tensor, torch.tensor(1.0)))  # another rank overflowed

    fake = types.SimpleNamespace(is_initialized=lambda: True, all_reduce=all_reduce,
                                 ReduceOp=types.SimpleNamespace(MAX="max"))
    monkeypatch.setattr(overflow, "dist", fake)
    local = torch.tensor(0.0)
    assert global_overflow(local, group="dp") is True
    assert calls == [("max", "dp")]
    assert local.item() == 0.0  # the caller's flag is untouched
