"""fp16 dynamic loss scaling in the engine: skip, hysteresis, unchanged params."""
import pytest
import torch

from dist_harness import run_distributed


def _config(stage: int) -> dict:
    return {
        "train_batch_size": 4,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-3}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10, "warmup_max_lr": 1e-3, "warmup_min_lr": 1e-4,
                                                     "warmup_type": "linear"}},
        "fp16": {"enabled": True, "initial_scale_power": 8, "hysteresis": 2, "loss_scale_window": 1000},
        "zero_optimization": {"stage": stage},
    }


def _overflow_run(stage: int):
    import deepspeed
    from deepspeed import comm as dist
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    engine, optimizer, _, sched = deepspeed.initialize(model=model, config=_config(stage))
    assert engine.module.weight.dtype == torch.float16
    inject = {"on": False}
    # Only rank 0 sees the inf: every rank must still skip the step.
    if dist.get_rank() == 0:
        engine.module.weight.register_hook(lambda g: torch.full_like(g, float("inf")) if inject["on"] else g)
    x = torch.randn(2, 8).half()
    history = []
    for step in range(4):
        inject["on"] = step in (1, 2)
        before = [p.detach().clone() for p in engine.module.parameters()]
        loss = engine(x).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
        unchanged = all(torch.equal(a, b) for a, b in zip(before, engine.module.parameters()))
        history.append((optimizer.cur_scale, engine.skipped_steps, unchanged, engine.was_step_applied(),
                        engine.get_lr()[0]))
    return history


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_injected_inf_skips_step_and_halves_after_hysteresis(stage):
    for history in run_distributed(_overflow_run, world_size=2, args=(stage,)):
        scales = [h[0] for h in history]
        skipped = [h[1] for h in history]
        unchanged = [h[2] for h in history]
        applied = [h[3] for h in history]
        lrs = [h[4] for h in history]
        # step 0 clean; step 1 overflow uses up hysteresis (scale kept);
        # step 2 overflow halves; step 3 clean again.
        assert scales == [256.0, 256.0, 128.0, 128.0]
        assert skipped == [0, 1, 2, 2]
        assert unchanged == [False, True, True, False]
        assert applied == [True, False, False, True]
        # the scheduler only advances on applied steps
        assert lrs[1] == lrs[0] and lrs[2] == lrs[0] and lrs[3] > lrs[0]


def _bf16_run():
    import deepspeed
    torch.manual_seed(0)
    config = {"train_batch_size": 2, "bf16": {"enabled": True}, "gradient_clipping": 0.0,
              "optimizer": {"type": "SGD", "params": {"lr": 0.5}}}
    engine, optimizer, _, _ = deepspeed.initialize(model=torch.nn.Linear(4, 1, bias=False), config=config)
    master_before = optimizer.master_partitions[0].clone()
    x = torch.ones(2, 4, dtype=torch.bfloat16)
    loss = engine(x).float().sum()
    engine.backward(loss)
    engine.step()
    return (type(optimizer).__name__, str(engine.module.weight.dtype), master_before.tolist(),
            optimizer.master_partitions[0].tolist())


def test_bf16_keeps_fp32_master_and_steps_on_it():
    name, dtype, before, after = run_distributed(_bf16_run, world_size=1)[0]
    assert name == "BF16_Optimizer" and dtype == "torch.bfloat16"
    # d(sum(w.x))/dw = sum over batch of x = 2; SGD: w -= 0.5 * 2, applied to the fp32 master
    assert after == pytest.approx([b - 1.0 for b in before], abs=1e-6)
