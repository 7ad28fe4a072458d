"""The engine's public surface (spec §2): initialize, getters, counters, io, monitor."""
import argparse
import json

import pytest
import torch

from dist_harness import run_distributed
from simple_models import make_model, random_tokens

BASE = {"train_micro_batch_size_per_gpu": 2, "optimizer": {"type": "Adam", "params": {"lr": 1e-3}}}


def _basics():
    import deepspeed
    model = make_model()
    model.custom_attribute = "from the module"
    engine, opt, loader, sched = deepspeed.initialize(model=model, config=dict(BASE, gradient_accumulation_steps=2))
    assert loader is None and sched is None and opt is engine.optimizer
    from deepspeed.ops.adam import FusedAdam
    assert isinstance(engine.basic_optimizer, FusedAdam)  # "Adam" means AdamW ...
    assert engine.basic_optimizer.adam_w_mode == 1  # ... unless adam_w_mode is false
    assert engine.custom_attribute == "from the module"
    with pytest.raises(AttributeError, match="no_such_thing"):
        engine.no_such_thing
    assert engine.train_batch_size() == 4 and engine.gradient_accumulation_steps() == 2
    assert engine.train_micro_batch_size_per_gpu() == 2 and engine.zero_optimization_stage() == 0
    assert engine.fp16_enabled() is False and engine.bfloat16_enabled() is False
    assert engine.gradient_clipping() == 1.0 and engine.get_lr() == [1e-3]
    engine.eval()
    assert not engine.module.training
    engine.train()
    assert engine.module.training
    tokens = random_tokens(1, 2)[0]
    loss = engine(tokens)
    returned = engine.backward(loss)
    assert torch.allclose(returned, loss / 2)
    assert not engine.is_gradient_accumulation_boundary()
    engine.step()
    assert engine.global_steps == 0 and engine.micro_steps == 1
    engine.backward(engine(tokens))
    assert engine.is_gradient_accumulation_boundary()
    engine.step()
    assert engine.global_steps == 1 and engine.global_samples == 4 and engine.was_step_applied()
    engine.set_gradient_accumulation_boundary(True)
    assert engine.is_gradient_accumulation_boundary()
    return True


def test_engine_basics():
    assert run_distributed(_basics, world_size=1) == [True]


def _optimizer_choice():
    import deepspeed
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.lion import FusedLion
    made = {}
    offload = {"stage": 2, "offload_optimizer": {"device": "cpu"}}
    for name, params, zero, cls in [("Adam", {"adam_w_mode": False}, {}, FusedAdam), ("AdamW", {}, {}, FusedAdam),
                                    ("Adam", {"torch_adam": True}, {}, torch.optim.AdamW),
                                    ("Adam", {"torch_adam": True, "adam_w_mode": False}, {}, torch.optim.Adam),
                                    ("AdamW", {}, offload, DeepSpeedCPUAdam), ("Lion", {}, {}, FusedLion),
                                    ("Adagrad", {}, {}, torch.optim.Adagrad), ("SGD", {}, {}, torch.optim.SGD),
                                    ("RMSprop", {}, {}, torch.optim.RMSprop)]:
        config = dict(BASE, optimizer={"type": name, "params": dict(params, lr=1e-3)}, zero_optimization=zero)
        engine, _, _, _ = deepspeed.initialize(model=make_model(), config=config)
        key = f"{name}{params}{zero}"
        made[key] = type(engine.basic_optimizer) is cls
        if cls is FusedAdam:
            made[key] &= engine.basic_optimizer.adam_w_mode == int(params.get("adam_w_mode", True))
    with pytest.raises(ValueError, match="unknown optimizer type 'Adamm'"):
        deepspeed.initialize(model=make_model(), config=dict(BASE, optimizer={"type": "Adamm"}))
    # client optimizer as a callable, client scheduler as a callable
    engine, opt, _, sched = deepspeed.initialize(
        model=make_model(), config={"train_batch_size": 2},
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5))
    engine.backward(engine(random_tokens(1, 2)[0]))
    engine.step()
    made["client"] = isinstance(opt, torch.optim.SGD) and engine.get_lr() == [0.05]
    return made


def test_optimizer_selection():
    made = run_distributed(_optimizer_choice, world_size=1)[0]
    assert all(made.values()), made


def _config_sources(tmp: str):
    import deepspeed
    from deepspeed.runtime.config_utils import DeepSpeedConfigError
    path = f"{tmp}/ds_config.json"
    with open(path, "w") as f:
        json.dump(dict(BASE, train_batch_size=4), f)
    parser = deepspeed.add_config_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--deepspeed", "--deepspeed_config", path])
    engine, _, _, _ = deepspeed.initialize(args=args, model=make_model())
    assert engine.gradient_accumulation_steps() == 1  # 4 = 2 micro x 1 gas x 2 ranks
    with pytest.raises(ValueError, match="both"):
        deepspeed.initialize(args=args, model=make_model(), config=BASE)
    engine, _, _, _ = deepspeed.initialize(model=make_model(), config_params=BASE)
    errors = {}
    bad = {
        "unknown_key": dict(BASE, zero_optimization={"stage": 1, "reduce_bucket_sise": 10}),
        "wrong_type": dict(BASE, zero_optimization={"stage": "two"}),
        "batch": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 3, "gradient_accumulation_steps": 1},
        "both_precisions": dict(BASE, fp16={"enabled": True}, bf16={"enabled": True}),
    }
    for name, config in bad.items():
        with pytest.raises(DeepSpeedConfigError) as info:
            deepspeed.initialize(model=make_model(), config=config)
        errors[name] = str(info.value)
    bad_args = argparse.Namespace(local_rank=5, deepspeed_config=None)
    with pytest.raises(ValueError, match="local_rank"):
        deepspeed.initialize(args=bad_args, model=make_model(), config=BASE)
    return errors


def test_config_sources_and_errors(tmp_path):
    errors = run_distributed(_config_sources, world_size=2, args=(str(tmp_path),))[0]
    assert "reduce_bucket_sise" in errors["unknown_key"] and "reduce_bucket_size" in errors["unknown_key"]
    assert "stage" in errors["wrong_type"]
    assert all(n in errors["batch"] for n in ("8", "3", "1", "2"))
    assert "fp16" in errors["both_precisions"] and "bf16" in errors["both_precisions"]


def _io():
    import deepspeed
    data = [torch.tensor([i]) for i in range(16)]
    engine, _, loader, _ = deepspeed.initialize(model=make_model(), config=BASE, training_data=data)
    seen = [int(x) for batch in loader for x in batch.view(-1)]
    assert all(len(batch) == 2 for batch in loader)
    return seen


def test_deepspeed_io_shards_over_ranks():
    a, b = run_distributed(_io, world_size=2)
    assert sorted(a + b) == list(range(16)) and not set(a) & set(b)


def _tensorboard(out: str):
    import deepspeed
    config = dict(BASE, gradient_accumulation_steps=2, wall_clock_breakdown=True,
                  tensorboard={"enabled": True, "output_path": out, "job_name": "job"},
                  scheduler={"type": "WarmupLR", "params": {"warmup_num_steps": 3, "warmup_type": "linear"}})
    engine, _, _, _ = deepspeed.initialize(model=make_model(), config=config)
    losses = []
    for batch in random_tokens(4, 2):
        loss = engine(batch)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    engine.destroy()
    return losses


def test_tensorboard_events_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    losses, _ = run_distributed(_tensorboard, world_size=2, args=(str(tmp_path),))
    acc = EventAccumulator(str(tmp_path / "job"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for tag in ("Train/Samples/train_loss", "Train/Samples/lr", "Train/Samples/elapsed_time_ms_forward"):
        assert tag in tags
    train_loss = acc.Scalars("Train/Samples/train_loss")
    assert [e.step for e in train_loss] == [8, 16]  # global_samples: 2 micro x 2 gas x 2 ranks
    # rank 0's GAS-scaled losses summed over the accumulation window
    assert train_loss[0].value == pytest.approx((losses[0] + losses[1]) / 2, rel=1e-5)
    lrs = [e.value for e in acc.Scalars("Train/Samples/lr")]
    assert lrs[1] > lrs[0]
