"""The optimizer-wrapper surface DS-Chat's step 3 uses: overflow, check_overflow(external), skip_step."""
import pytest
import torch

from dist_harness import run_distributed


def _align_overflow(stage: int):
    import deepspeed
    from deepspeed import comm as dist
    config = {"train_batch_size": 4, "optimizer": {"type": "SGD", "params": {"lr": 0.1}},
              "fp16": {"enabled": True, "initial_scale_power": 4, "hysteresis": 1},
              "zero_optimization": {"stage": stage}}
    torch.manual_seed(0)
    engine, opt, _, _ = deepspeed.initialize(model=torch.nn.Linear(4, 2), config=config)
    x = torch.randn(2, 4).half()
    out = {}

    engine.backward(engine(x).float().sum())
    out["clean"] = opt.check_overflow(external=True)
    # align_overflow: the other model overflowed, so this one must skip too
    opt.skip_step = True
    before = engine.module.weight.detach().clone()
    engine.step()
    out["forced_skip_unchanged"] = torch.equal(before, engine.module.weight)
    out["forced_skip_scale"] = opt.cur_scale
    out["skip_reset"] = opt.skip_step
    out["skipped"] = engine.skipped_steps

    inf = torch.tensor(float("inf") if dist.get_rank() == 1 else 1.0)
    engine.backward((engine(x).float() * inf).sum())
    out["inf_detected"] = opt.check_overflow(external=True) and opt.overflow
    engine.step()
    out["after_real_overflow_scale"] = opt.cur_scale

    engine.backward(engine(x).float().sum())
    engine.step()
    out["applied_again"] = engine.was_step_applied() and not torch.equal(before, engine.module.weight)
    return out


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_external_overflow_check_and_forced_skip(stage):
    for out in run_distributed(_align_overflow, world_size=2, args=(stage,)):
        assert out["clean"] is False
        assert out["forced_skip_unchanged"] and out["skip_reset"] is False and out["skipped"] == 1
        assert out["forced_skip_scale"] == 16.0  # a forced skip does not touch the loss scale
        assert out["inf_detected"] is True  # rank 1's inf is seen by every rank
        assert out["after_real_overflow_scale"] == 8.0
        assert out["applied_again"]


def _static_scale():
    import deepspeed
    config = {"train_batch_size": 2, "optimizer": {"type": "SGD", "params": {"lr": 0.5}}, "gradient_clipping": 0,
              "fp16": {"enabled": True, "loss_scale": 128}}
    engine, opt, _, _ = deepspeed.initialize(model=torch.nn.Linear(2, 1, bias=False), config=config)
    w0 = engine.module.weight.detach().float().clone()
    engine.backward(engine(torch.ones(2, 2).half()).float().sum())
    engine.step()
    return opt.cur_scale, opt.loss_scaler.dynamic, (engine.module.weight.float() - w0).tolist()


def test_static_loss_scale_unscales_exactly():
    scale, dynamic, delta = run_distributed(_static_scale, world_size=1)[0]
    assert scale == 128 and dynamic is False
    assert delta == [[pytest.approx(-1.0, abs=1e-3)] * 2]  # grad 2 per weight, lr 0.5
