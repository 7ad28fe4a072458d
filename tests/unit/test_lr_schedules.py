"""DeepSpeed LR schedules and the scheduler factory, checked against closed-form values."""

import argparse
import math

import pytest
import torch

from deepspeed.runtime import lr_schedules
from deepspeed.runtime.lr_schedules import (VALID_LR_SCHEDULES, LRRangeTest, OneCycle, WarmupCosineLR, WarmupDecayLR,
                                            WarmupLR, add_tuning_arguments)
from deepspeed.runtime.scheduler_factory import build_lr_scheduler, resolve_client_scheduler


def _sgd(lrs=(0.1, ), momentum=0.0):
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=momentum)


def _adam(lr=0.5, betas=(0.95, 0.999)):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=lr, betas=betas)


class _Wrapper:
    """Stands in for the ZeRO optimizer: param_groups only, not a torch Optimizer."""

    def __init__(self, *lrs):
        self.param_groups = [{"lr": lr} for lr in lrs]


def _lr_at(schedule, iteration):
    schedule.step(iteration)
    return [group["lr"] for group in schedule.optimizer.param_groups]


def test_valid_names():
    assert VALID_LR_SCHEDULES == ["LRRangeTest", "OneCycle", "WarmupLR", "WarmupDecayLR", "WarmupCosineLR"]
    for name in VALID_LR_SCHEDULES:
        assert getattr(lr_schedules, name).__name__ == name


# --- WarmupLR -------------------------------------------------------------------------------------------


def test_warmup_log():
    opt = _sgd()
    sched = WarmupLR(opt, warmup_min_lr=0.01, warmup_max_lr=0.11, warmup_num_steps=10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01)  # applied at construction
    assert sched.get_last_lr() == pytest.approx([0.01])
    sched.step()  # iteration 0: ln(1) = 0
    assert sched.get_last_lr() == pytest.approx([0.01])
    for it in (1, 4, 7):
        expected = 0.01 + 0.1 * math.log(it + 1) / math.log(10)
        assert _lr_at(sched, it) == pytest.approx([expected])
    assert _lr_at(sched, 9) == pytest.approx([0.11])
    assert _lr_at(sched, 500) == pytest.approx([0.11])


def test_warmup_linear_and_default_max():
    opt = _sgd(lrs=(0.4, ))
    sched = WarmupLR(opt, warmup_num_steps=8, warmup_type="linear")
    assert opt.param_groups[0]["lr"] == 0.0
    assert _lr_at(sched, 3) == pytest.approx([0.4 * 3 / 8])
    assert _lr_at(sched, 7) == pytest.approx([0.4 * 7 / 8])
    assert _lr_at(sched, 8) == pytest.approx([0.4])  # max_lr None -> the optimizer's lr


def test_warmup_steps_clamped_to_two():
    sched = WarmupLR(_sgd(), warmup_min_lr=0.0, warmup_max_lr=1.0, warmup_num_steps=1)
    assert sched.warmup_num_steps == 2
    assert _lr_at(sched, 0) == [0.0]
    assert _lr_at(sched, 1) == pytest.approx([1.0])  # ln(2) / ln(2)


def test_warmup_multiple_groups_on_wrapper():
    opt = _Wrapper(0.1, 0.2)
    sched = WarmupLR(opt, warmup_min_lr=[0.0, 0.02], warmup_num_steps=4, warmup_type="linear")
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.02])
    assert _lr_at(sched, 2) == pytest.approx([0.05, 0.02 + 0.18 * 0.5])
    assert sched.get_lr() == pytest.approx([0.05, 0.11])
    assert _lr_at(sched, 4) == pytest.approx([0.1, 0.2])
    with pytest.raises(ValueError, match="warmup_min_lr has 3 values"):
        WarmupLR(opt, warmup_min_lr=[0.0, 0.0, 0.0])


# --- WarmupDecayLR --------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_lr", [0.0, 0.1])
def test_warmup_decay(min_lr):
    sched = WarmupDecayLR(_sgd(), total_num_steps=30, warmup_min_lr=min_lr, warmup_max_lr=1.0, warmup_num_steps=10,
                          warmup_type="linear")
    assert _lr_at(sched, 5) == pytest.approx([min_lr + (1 - min_lr) * 0.5])
    assert _lr_at(sched, 10) == pytest.approx([1.0])  # end of warmup: the decay starts at max
    assert _lr_at(sched, 20) == pytest.approx([min_lr + (1 - min_lr) * 0.5])
    assert _lr_at(sched, 30) == pytest.approx([min_lr])  # decay endpoint
    assert _lr_at(sched, 45) == pytest.approx([min_lr])


def test_warmup_decay_total_below_warmup_is_error():
    with pytest.raises(ValueError, match="total_num_steps"):
        WarmupDecayLR(_sgd(), total_num_steps=5, warmup_num_steps=10)


# --- WarmupCosineLR -------------------------------------------------------------------------------------


def test_warmup_cosine():
    opt = _sgd(lrs=(2.0, 1.0))
    sched = WarmupCosineLR(opt, total_num_steps=110, warmup_min_ratio=0.1, warmup_num_steps=10, cos_min_ratio=0.01,
                           warmup_type="linear")
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2, 0.1])
    assert _lr_at(sched, 5) == pytest.approx([2.0 * 0.55, 0.55])
    # Cosine midpoint: it - N + 1 = (total - N) / 2.
    assert _lr_at(sched, 59) == pytest.approx([2.0 * 0.505, 0.505])
    quarter = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert _lr_at(sched, 34) == pytest.approx([2.0 * quarter, quarter])
    assert _lr_at(sched, 109) == pytest.approx([0.02, 0.01])
    assert _lr_at(sched, 300) == pytest.approx([0.02, 0.01])  # stays at the floor


def test_warmup_cosine_log_warmup():
    sched = WarmupCosineLR(_sgd(lrs=(1.0, )), total_num_steps=100, warmup_num_steps=20)
    assert _lr_at(sched, 6) == pytest.approx([math.log(7) / math.log(20)])


# --- LRRangeTest ----------------------------------------------------------------------------------------


def test_range_test_continuous_and_staircase():
    opt = _sgd()
    smooth = LRRangeTest(opt, lr_range_test_min_lr=0.1, lr_range_test_step_size=10, lr_range_test_step_rate=2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert _lr_at(smooth, 4) == pytest.approx([0.1 * (1 + 2 * 5 / 10)])  # 5 steps taken
    assert _lr_at(smooth, 29) == pytest.approx([0.1 * (1 + 2 * 3)])

    stairs = LRRangeTest(_sgd(), lr_range_test_min_lr=0.1, lr_range_test_step_size=10, lr_range_test_step_rate=2.0,
                         lr_range_test_staircase=True)
    assert _lr_at(stairs, 8) == pytest.approx([0.1])
    assert _lr_at(stairs, 9) == pytest.approx([0.3])
    assert _lr_at(stairs, 24) == pytest.approx([0.5])


# --- OneCycle -------------------------------------------------------------------------------------------


def _one_cycle(opt, **kw):
    args = dict(cycle_min_lr=0.1, cycle_max_lr=1.0, cycle_first_step_size=10, cycle_second_step_size=20,
                decay_step_size=5, decay_lr_rate=0.5, cycle_min_mom=0.8, cycle_max_mom=0.9)
    args.update(kw)
    return OneCycle(opt, **args)


def test_one_cycle_phases_and_adam_momentum():
    opt = _adam()
    sched = _one_cycle(opt, decay_mom_rate=0.05)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    assert opt.param_groups[0]["betas"] == pytest.approx((0.9, 0.999))
    # (iteration, lr, momentum); the shape is indexed by steps taken = iteration + 1.
    for it, lr, mom in [(4, 0.55, 0.85), (9, 1.0, 0.8), (19, 0.55, 0.85), (29, 0.1, 0.9),
                        (39, 0.1 / (1 + 0.5 * 2), 0.9 * (1 + 0.05 * 2))]:
        assert _lr_at(sched, it) == pytest.approx([lr])
        beta1, beta2 = opt.param_groups[0]["betas"]
        assert beta1 == pytest.approx(mom)
        assert beta2 == 0.999  # the second beta is never touched
        assert sched.get_mom() == pytest.approx([mom])


def test_one_cycle_sgd_momentum_and_no_decay():
    opt = _sgd(momentum=0.5)
    sched = _one_cycle(opt, decay_lr_rate=0.0, cycle_second_step_size=None)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.9)
    assert _lr_at(sched, 14) == pytest.approx([0.1 + 0.9 * 0.5])  # symmetric: second size = first
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.85)
    assert _lr_at(sched, 100) == pytest.approx([0.1])  # zero decay rate holds min_lr


def test_one_cycle_stairs():
    sched = _one_cycle(_sgd(), cycle_first_stair_count=2, cycle_second_stair_count=4)
    assert _lr_at(sched, 3) == pytest.approx([0.1])  # 4/10 of the way floors to 0
    assert _lr_at(sched, 4) == pytest.approx([0.55])
    assert _lr_at(sched, 9) == pytest.approx([1.0])
    assert _lr_at(sched, 13) == pytest.approx([1.0])  # 4/20 down floors to 0
    assert _lr_at(sched, 14) == pytest.approx([0.1 + 0.9 * 0.75])


def test_one_cycle_without_momentum_slot():
    opt = _Wrapper(0.3)
    sched = _one_cycle(opt)
    assert not sched.cycle_momentum and sched.get_mom() is None
    assert _lr_at(sched, 9) == pytest.approx([1.0])
    assert "betas" not in opt.param_groups[0]


def test_one_cycle_validation():
    with pytest.raises(ValueError, match="cycle_max_lr"):
        OneCycle(_sgd(), cycle_min_lr=1.0, cycle_max_lr=0.1)
    with pytest.raises(ValueError, match="cycle_first_step_size"):
        OneCycle(_sgd(), cycle_min_lr=0.1, cycle_max_lr=1.0, cycle_first_step_size=0)


# --- shared behaviour -----------------------------------------------------------------------------------

_BUILDERS = {
    "LRRangeTest": lambda o: LRRangeTest(o, lr_range_test_step_size=5),
    "OneCycle": lambda o: _one_cycle(o, decay_mom_rate=0.01),
    "WarmupLR": lambda o: WarmupLR(o, warmup_num_steps=12),
    "WarmupDecayLR": lambda o: WarmupDecayLR(o, total_num_steps=40, warmup_num_steps=12),
    "WarmupCosineLR": lambda o: WarmupCosineLR(o, total_num_steps=40, warmup_num_steps=12),
}


@pytest.mark.parametrize("name", sorted(_BUILDERS))
def test_state_dict_round_trip(name):
    first_opt = _adam()
    first = _BUILDERS[name](first_opt)
    for _ in range(17):
        first.step()
    sd = first.state_dict()
    assert sd == {"last_batch_iteration": 16}

    second_opt = _adam()
    second = _BUILDERS[name](second_opt)
    second.load_state_dict(sd)
    # The resumed lr is in place before the next optimizer step, not only after step().
    assert second_opt.param_groups[0]["lr"] == pytest.approx(first_opt.param_groups[0]["lr"])
    for _ in range(30):
        first.step()
        second.step()
        assert second.get_last_lr() == pytest.approx(first.get_last_lr())
        assert second_opt.param_groups[0]["betas"] == pytest.approx(first_opt.param_groups[0]["betas"])


def test_get_last_lr_needs_an_applied_lr():
    sched = WarmupLR(_sgd(), last_batch_iteration=5)
    with pytest.raises(RuntimeError, match="step"):
        sched.get_last_lr()
    sched.step()
    assert sched.last_batch_iteration == 6


def test_argument_validation():
    with pytest.raises(ValueError, match="warmup_type"):
        WarmupLR(_sgd(), warmup_type="cosine")
    with pytest.raises(ValueError, match="warmup_num_steps"):
        WarmupLR(_sgd(), warmup_num_steps=-1)
    with pytest.raises(TypeError, match="param_groups"):
        WarmupLR(object())
    with pytest.raises(ValueError, match="lr_range_test_step_size"):
        LRRangeTest(_sgd(), lr_range_test_step_size=0)


# --- factory ----------------------------------------------------------------------------------------------


def test_factory_builds_deepspeed_schedule():
    sched = build_lr_scheduler("WarmupDecayLR", {"total_num_steps": 20, "warmup_num_steps": 4}, _sgd())
    assert isinstance(sched, WarmupDecayLR) and sched.total_num_steps == 20


def test_factory_falls_back_to_torch():
    opt = _sgd(lrs=(1.0, ))
    sched = build_lr_scheduler("StepLR", {"step_size": 2, "gamma": 0.5}, opt)
    assert isinstance(sched, torch.optim.lr_scheduler.StepLR)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)


def test_factory_torch_schedule_unwraps_wrapper():

    class ZeroLike:

        def __init__(self, inner):
            self.optimizer = inner
            self.param_groups = inner.param_groups

    inner = _sgd(lrs=(1.0, ))
    sched = build_lr_scheduler("ExponentialLR", {"gamma": 0.5}, ZeroLike(inner))
    inner.step()
    sched.step()
    assert inner.param_groups[0]["lr"] == pytest.approx(0.5)


def test_factory_errors():
    with pytest.raises(ValueError, match="WarmupCosineLR") as info:
        build_lr_scheduler("WarmupLinear", {}, _sgd())
    assert "torch.optim.lr_scheduler" in str(info.value)
    with pytest.raises(ValueError, match="Unknown"):
        build_lr_scheduler("Optimizer", {}, _sgd())  # a torch helper, not a scheduler
    with pytest.raises(TypeError, match="WarmupLR.*warmup_steps"):
        build_lr_scheduler("WarmupLR", {"warmup_steps": 10}, _sgd())
    with pytest.raises(TypeError, match="WarmupCosineLR.*total_num_steps"):
        build_lr_scheduler("WarmupCosineLR", {}, _sgd())
    with pytest.raises(ValueError, match="warmup_type"):
        build_lr_scheduler("WarmupLR", {"warmup_type": "exp"}, _sgd())
    with pytest.raises(TypeError, match="StepLR.*step_sizes"):
        build_lr_scheduler("StepLR", {"step_sizes": 3}, _sgd())


def test_resolve_client_scheduler():
    opt = _sgd()
    ready = WarmupLR(opt)
    assert resolve_client_scheduler(ready, opt) is ready
    built = resolve_client_scheduler(lambda o: WarmupLR(o, warmup_num_steps=3), opt)
    assert isinstance(built, WarmupLR) and built.optimizer is opt
    assert resolve_client_scheduler(None, opt) is None
    with pytest.raises(TypeError, match="lr_scheduler"):
        resolve_client_scheduler(3, opt)
    with pytest.raises(TypeError, match="no step"):
        resolve_client_scheduler(lambda o: 3, opt)


# --- argparse -------------------------------------------------------------------------------------------


def test_tuning_arguments():
    parser = add_tuning_arguments(argparse.ArgumentParser())
    defaults = parser.parse_args([])
    assert defaults.lr_schedule is None and defaults.lr_range_test_staircase is False
    assert defaults.warmup_type == "log" and defaults.cycle_momentum is False
    args = parser.parse_args([
        "--lr_schedule", "OneCycle", "--lr_range_test_min_lr", "0.02", "--lr_range_test_step_rate", "3",
        "--lr_range_test_step_size", "50", "--lr_range_test_staircase", "--cycle_first_step_size", "7",
        "--cycle_first_stair_count", "2", "--cycle_second_step_size", "9", "--cycle_second_stair_count", "3",
        "--decay_step_size", "11", "--cycle_min_lr", "0.001", "--cycle_max_lr", "0.01", "--decay_lr_rate", "0.1",
        "--cycle_min_mom", "0.85", "--cycle_max_mom", "0.95", "--decay_mom_rate", "0.2", "--warmup_min_lr", "0.0001",
        "--warmup_max_lr", "0.003", "--warmup_num_steps", "77", "--warmup_type", "linear"
    ])
    assert args.lr_schedule == "OneCycle" and args.lr_range_test_staircase is True
    assert (args.lr_range_test_min_lr, args.lr_range_test_step_rate, args.lr_range_test_step_size) == (0.02, 3.0, 50)
    assert (args.cycle_first_step_size, args.cycle_first_stair_count) == (7, 2)
    assert (args.cycle_second_step_size, args.cycle_second_stair_count, args.decay_step_size) == (9, 3, 11)
    assert (args.cycle_min_lr, args.cycle_max_lr, args.decay_lr_rate) == (0.001, 0.01, 0.1)
    assert (args.cycle_min_mom, args.cycle_max_mom, args.decay_mom_rate) == (0.85, 0.95, 0.2)
    assert (args.warmup_min_lr, args.warmup_max_lr, args.warmup_num_steps, args.warmup_type) == (0.0001, 0.003, 77,
                                                                                                  "linear")
    assert parser.parse_args(["--lr_range_test_staircase", "false"]).lr_range_test_staircase is False
