"""fp16 loss scalers: hand-computed schedules against DeepSpeed's semantics.

See [Note: dynamic loss-scale schedule] in deepspeed/runtime/precision/loss_scaler.py.
"""
import pytest
import torch

from deepspeed.runtime.precision.config import DeepSpeedFP16Config
from deepspeed.runtime.precision.loss_scaler import (
    CreateLossScaler,
    DynamicLossScaler,
    LossScaler,
    LossScaleUnderflowError,
    loss_scaler_from_config,
)

O, C = True, False  # overflow / clean step


def run(scaler, steps):
    """Apply `steps` and return the scale after each one."""
    scales = []
    for overflow in steps:
        scaler.update_scale(overflow)
        scales.append(scaler.cur_scale)
    return scales


def test_hysteresis_two_halves_only_on_second_overflow():
    s = DynamicLossScaler(init_scale=2**16, delayed_shift=2, scale_window=1000)
    assert run(s, [O]) == [2**16]
    assert s.cur_hysteresis == 1
    # Clean steps do not refill the budget without consecutive_hysteresis
    # (only a growth does), so the next overflow halves, and so does the one after.
    assert run(s, [C, C, O, O]) == [2**16, 2**16, 2**15, 2**14]
    assert s.last_overflow_iter == 4 and s.cur_iter == 5


def test_consecutive_hysteresis_refills_on_every_clean_step():
    s = DynamicLossScaler(init_scale=64, delayed_shift=2, scale_window=1000, consecutive_hysteresis=True)
    # Isolated overflows are all absorbed; only two in a row halve.
    assert run(s, [O, C, O, C, O, O, O]) == [64, 64, 64, 64, 64, 32, 16]
    plain = DynamicLossScaler(init_scale=64, delayed_shift=2, scale_window=1000)
    assert run(plain, [O, C, O, C, O]) == [64, 64, 32, 32, 16]


def test_growth_after_scale_window_clean_steps():
    s = DynamicLossScaler(init_scale=8, scale_window=3, delayed_shift=1)
    # iters 0-2 clean -> grow at iter 2; overflow at iter 3 -> halve; grow again at iter 6.
    assert run(s, [C, C, C, O, C, C, C, C, C, C]) == [8, 8, 16, 8, 8, 8, 16, 16, 16, 32]


def test_default_window_first_growth_after_exactly_1000_clean_steps():
    s = DynamicLossScaler()
    assert s.cur_scale == 2.0**32
    run(s, [C] * 999)
    assert s.cur_scale == 2.0**32
    run(s, [C])
    assert s.cur_scale == 2.0**33


def test_growth_refills_hysteresis_without_consecutive():
    s = DynamicLossScaler(init_scale=8, scale_window=2, delayed_shift=2)
    # O@0 absorbed, grow at iter 2 (2 - 0 = 2) which refills the budget,
    # so O@3 is absorbed again and O@4 halves.
    assert run(s, [O, C, C, O, O]) == [8, 8, 16, 16, 8]


def test_scale_factor_other_than_two():
    s = DynamicLossScaler(init_scale=81, scale_factor=3, scale_window=2, min_scale=1)
    assert run(s, [O, C, C]) == [27, 27, 81]


def test_min_scale_floor_without_raise():
    s = DynamicLossScaler(init_scale=4, scale_factor=3, min_scale=2, raise_error_at_min_scale=False)
    assert run(s, [O, O, O]) == [2, 2, 2]


def test_min_scale_raises_when_diverged():
    s = DynamicLossScaler(init_scale=4, min_scale=2, delayed_shift=1)
    assert run(s, [O]) == [2]
    with pytest.raises(LossScaleUnderflowError, match="minimum loss scale"):
        s.update_scale(True)
    # It is a RuntimeError, so generic handlers catch it too.
    assert issubclass(LossScaleUnderflowError, RuntimeError)


def test_min_scale_raise_waits_for_hysteresis():
    s = DynamicLossScaler(init_scale=2, min_scale=2, delayed_shift=2)
    s.update_scale(True)  # absorbed by hysteresis: no shrink, no raise
    assert s.cur_scale == 2 and s.cur_hysteresis == 1
    with pytest.raises(LossScaleUnderflowError):
        s.update_scale(True)


def test_static_scaler():
    s = LossScaler(scale=128)
    assert not s.dynamic and s.loss_scale == 128
    run(s, [O, O, C, C])
    assert s.loss_scale == 128
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    x = torch.tensor([3.0, 0.5])
    s.backward((w * x).sum())
    torch.testing.assert_close(w.grad, 128 * x)
    torch.testing.assert_close(s.scale_loss(torch.tensor(0.25)), torch.tensor(32.0))
    with pytest.raises(ValueError):
        LossScaler(scale=0)


def test_dynamic_scaler_scales_loss_and_grads():
    s = DynamicLossScaler(init_scale=2**10)
    assert s.dynamic
    w = torch.tensor([2.0], requires_grad=True)
    s.backward(3 * w.sum())
    assert w.grad.item() == 3 * 2**10
    assert s.scale_gradient(None, (torch.ones(2), None), ())[0].tolist() == [1024.0, 1024.0]


def test_state_dict_round_trip(tmp_path):
    steps = [O, C, C, O, O, C, C, C]
    a = DynamicLossScaler(init_scale=2**8, scale_window=3, delayed_shift=2)
    run(a, steps)
    path = tmp_path / "scaler.pt"
    torch.save(a.state_dict(), path)
    b = DynamicLossScaler(init_scale=2**8, scale_window=3, delayed_shift=2)
    b.load_state_dict(torch.load(path, weights_only=True))
    assert (b.cur_scale, b.cur_iter, b.last_overflow_iter, b.cur_hysteresis) == (
        a.cur_scale, a.cur_iter, a.last_overflow_iter, a.cur_hysteresis)
    # Both continue identically, i.e. all schedule state was captured.
    more = [O, C, C, C, O, O, C, C, C, C]
    assert run(b, more) == run(a, more)

    static = LossScaler(64)
    other = LossScaler(1)
    other.load_state_dict(static.state_dict())
    assert other.cur_scale == 64


@pytest.mark.parametrize("bad", [dict(scale_factor=1.0), dict(scale_window=0), dict(delayed_shift=0),
                                 dict(min_scale=0), dict(init_scale=-1)])
def test_invalid_arguments(bad):
    with pytest.raises(ValueError):
        DynamicLossScaler(**bad)


def test_create_loss_scaler():
    dyn = CreateLossScaler(torch.half, 1.0, True, {"init_scale": 2**5, "scale_window": 7, "delayed_shift": 3,
                                                   "consecutive_hysteresis": True, "min_scale": 0.25})
    assert isinstance(dyn, DynamicLossScaler)
    assert (dyn.cur_scale, dyn.scale_window, dyn.delayed_shift, dyn.consecutive_hysteresis, dyn.min_scale) == (
        32, 7, 3, True, 0.25)
    assert isinstance(CreateLossScaler(torch.half, 1.0, True, None), DynamicLossScaler)
    static = CreateLossScaler(torch.half, 512.0, False, None)
    assert type(static) is LossScaler and static.cur_scale == 512
    # Only fp16 is scaled: bf16/fp32 always get a static 1.0.
    for dtype in (torch.bfloat16, torch.float32):
        s = CreateLossScaler(dtype, 512.0, True, {"init_scale": 8})
        assert type(s) is LossScaler and s.cur_scale == 1.0


def test_from_config_defaults():
    s = loss_scaler_from_config(DeepSpeedFP16Config(enabled=True))
    assert isinstance(s, DynamicLossScaler)
    assert s.cur_scale == 2.0**16  # initial_scale_power 16
    assert (s.scale_window, s.delayed_shift, s.consecutive_hysteresis, s.min_scale, s.scale_factor) == (
        1000, 2, False, 1.0, 2.0)
    assert s.raise_error_at_min_scale and s.dtype == torch.half


def test_from_config_mapping():
    cfg = DeepSpeedFP16Config(**{"enabled": True, "loss_scale": 0, "initial_scale_power": 8,
                                 "loss_scale_window": 50, "hysteresis": 3, "consecutive_hysteresis": True,
                                 "min_loss_scale": 0.5})
    s = loss_scaler_from_config(cfg)
    assert (s.cur_scale, s.scale_window, s.delayed_shift, s.cur_hysteresis, s.consecutive_hysteresis,
            s.min_scale) == (256, 50, 3, 3, True, 0.5)


def test_from_config_static_and_disabled():
    s = loss_scaler_from_config(DeepSpeedFP16Config(enabled=True, loss_scale=128))
    assert type(s) is LossScaler and s.cur_scale == 128 and not s.dynamic
    assert loss_scaler_from_config(DeepSpeedFP16Config(enabled=False)) is None
    assert loss_scaler_from_config(None) is None
