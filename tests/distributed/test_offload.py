"""ZeRO-Offload: CPU masters stepped by DeepSpeedCPUAdam match the on-device path."""
import os

import pytest
import torch

from dist_harness import run_distributed
from simple_models import make_model, random_tokens

STEPS = 10


def _config(stage: int, offload: bool, **extra) -> dict:
    zero = {"stage": stage, "reduce_bucket_size": 700}
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 0.05,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
              "zero_optimization": zero}
    config.update(extra)
    return config


def _train(stage: int, offload: bool, gas: int):
    import deepspeed
    from deepspeed import comm as dist
    engine, opt, _, _ = deepspeed.initialize(model=make_model(), config=_config(stage, offload,
                                                                                 gradient_accumulation_steps=gas))
    data = random_tokens(STEPS * gas * 2, 2)
    losses = []
    for i in range(STEPS * gas):
        loss = engine(data[i * 2 + dist.get_rank()])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return type(engine.basic_optimizer).__name__, losses, [p.detach().clone().tolist() for p in engine.parameters()]


@pytest.mark.parametrize("stage,gas", [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_offload_matches_on_device(stage, gas):
    on_device = run_distributed(_train, world_size=2, args=(stage, False, gas))
    offloaded = run_distributed(_train, world_size=2, args=(stage, True, gas))
    for (name_a, losses_a, params_a), (name_b, losses_b, params_b) in zip(on_device, offloaded):
        assert name_a == "FusedAdam" and name_b == "DeepSpeedCPUAdam"
        assert losses_b == pytest.approx(losses_a, rel=1e-6)
        for a, b in zip(params_a, params_b):
            assert torch.allclose(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)


def _resume(stage: int, save_dir: str):
    import deepspeed
    from deepspeed import comm as dist
    data = random_tokens(12, 2)

    def run(engine, start, steps):
        out = []
        for i in range(start, start + steps):
            loss = engine(data[i * 2 + dist.get_rank()])
            engine.backward(loss)
            engine.step()
            out.append(loss.item())
        return out

    full, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(stage, True))
    expected = run(full, 0, 6)
    first, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(stage, True))
    got = run(first, 0, 3)
    first.save_checkpoint(save_dir)
    second, _, _, _ = deepspeed.initialize(model=make_model(seed=7), config=_config(stage, True))
    second.load_checkpoint(save_dir)
    got += run(second, 3, 3)
    return got == expected


@pytest.mark.parametrize("stage", [1, 2])
def test_offload_checkpoint_resumes_bit_exact(stage, tmp_path):
    assert run_distributed(_resume, world_size=2, args=(stage, str(tmp_path))) == [True, True]


def _bf16_fused_copy():
    import deepspeed
    config = _config(2, True, bf16={"enabled": True})
    engine, opt, _, _ = deepspeed.initialize(model=make_model(), config=config)
    engine.backward(engine(random_tokens(1, 2)[0]))
    engine.step()
    copies = opt._param_copies
    # the 16-bit values sent back are exactly the bf16 rounding of the fp32 masters
    same = all(torch.equal(c, m.to(torch.bfloat16)) for c, m in zip(copies, opt.master_partitions))
    return copies is not None and same


def test_bf16_offload_uses_the_fused_copy():
    assert run_distributed(_bf16_fused_copy, world_size=2) == [True, True]


def _fp16_overflow(offload: bool):
    import deepspeed
    config = _config(2, offload, fp16={"enabled": True, "initial_scale_power": 8, "hysteresis": 1})
    torch.manual_seed(0)
    engine, opt, _, _ = deepspeed.initialize(model=torch.nn.Linear(8, 4), config=config)
    x = torch.randn(2, 8).half()
    history = []
    for step in range(4):
        scale = float("inf") if step == 1 else 1.0
        engine.backward((engine(x).float() * scale).pow(2).mean())
        engine.step()
        history.append((opt.cur_scale, engine.skipped_steps, engine.get_global_grad_norm()))
    return history, engine.module.weight.float().tolist()


def test_fp16_overflow_and_clipping_same_with_and_without_offload():
    plain = run_distributed(_fp16_overflow, world_size=2, args=(False,))
    offloaded = run_distributed(_fp16_overflow, world_size=2, args=(True,))
    for (hist_a, w_a), (hist_b, w_b) in zip(plain, offloaded):
        assert [h[:2] for h in hist_a] == [h[:2] for h in hist_b] == [(256, 0), (128, 1), (128, 1), (128, 1)]
        assert [h[2] for h in hist_b] == pytest.approx([h[2] for h in hist_a], rel=1e-5)
        assert torch.allclose(torch.tensor(w_a), torch.tensor(w_b), atol=1e-3)


def _force_cpu_optimizer(force: bool):
    import deepspeed
    config = _config(1, True, zero_force_ds_cpu_optimizer=force)
    del config["optimizer"]
    model = make_model()
    try:
        deepspeed.initialize(model=model, config=config, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3))
    except ValueError as err:
        return str(err)
    return None


def test_zero_force_ds_cpu_optimizer():
    message = run_distributed(_force_cpu_optimizer, world_size=1, args=(True,))[0]
    assert message is not None and "DeepSpeedCPUAdam" in message and "zero_force_ds_cpu_optimizer" in message
    assert run_distributed(_force_cpu_optimizer, world_size=1, args=(False,)) == [None]
