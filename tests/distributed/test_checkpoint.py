"""save -> load -> continue equals an uninterrupted run, bit for bit; saves are atomic."""
import os

import pytest
import torch

from dist_harness import run_distributed
from simple_models import make_model, random_tokens

MICRO, STEPS, SPLIT = 2, 6, 3


def _config(stage: int) -> dict:
    return {
        "train_micro_batch_size_per_gpu": MICRO,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "Adam", "params": {"lr": 1e-2}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_max_lr": 1e-2}},
        "zero_optimization": {"stage": stage, "reduce_bucket_size": 500},
    }


def _run(engine, data, steps, start):
    from deepspeed import comm as dist
    losses = []
    for step in range(start, start + steps):
        loss = engine(data[step * dist.get_world_size() + dist.get_rank()])
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _resume(stage: int, save_dir: str):
    import deepspeed
    data = random_tokens(STEPS * 2, MICRO)
    full, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(stage))
    expected = _run(full, data, STEPS, 0)
    expected_params = [p.detach().clone() for p in full.module.parameters()]

    first, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(stage))
    got = _run(first, data, SPLIT, 0)
    first.save_checkpoint(save_dir, client_state={"epoch": 7, "data_pos": SPLIT})

    second, _, _, _ = deepspeed.initialize(model=make_model(seed=123), config=_config(stage))
    path, client = second.load_checkpoint(save_dir)
    assert path.endswith(os.path.join(f"global_step{SPLIT}", "mp_rank_00_model_states.pt"))
    assert client == {"epoch": 7, "data_pos": SPLIT}
    assert second.global_steps == SPLIT and second.get_lr() == first.get_lr()
    got += _run(second, data, STEPS - SPLIT, SPLIT)
    assert got == expected  # bit for bit
    for a, b in zip(second.module.parameters(), expected_params):
        assert torch.equal(a, b)
    return sorted(os.listdir(os.path.join(save_dir, f"global_step{SPLIT}")))


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_resume_is_bit_exact(stage, tmp_path):
    files = run_distributed(_resume, world_size=2, args=(stage, str(tmp_path)))[0]
    assert "mp_rank_00_model_states.pt" in files
    if stage > 0:
        assert "zero_pp_rank_0_mp_rank_00_optim_states.pt" in files
        assert "zero_pp_rank_1_mp_rank_00_optim_states.pt" in files
    assert (tmp_path / "latest").read_text() == f"global_step{SPLIT}"


def _crash_mid_save(save_dir: str):
    import deepspeed
    from deepspeed.runtime.checkpoint import engine_checkpoint
    data = random_tokens(8, MICRO)
    engine, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(2))
    _run(engine, data, 1, 0)
    engine.save_checkpoint(save_dir)
    good = [p.detach().clone() for p in engine.module.parameters()]
    _run(engine, data, 1, 1)
    original = engine_checkpoint.atomic_torch_save

    def failing(obj, path):
        if "optim_states" in path:
            raise OSError("disk full (simulated)")
        original(obj, path)

    engine_checkpoint.atomic_torch_save = failing
    with pytest.raises(OSError):
        engine.save_checkpoint(save_dir)
    engine_checkpoint.atomic_torch_save = original
    fresh, _, _, _ = deepspeed.initialize(model=make_model(seed=5), config=_config(2))
    fresh.load_checkpoint(save_dir)
    return all(torch.equal(a, b) for a, b in zip(fresh.module.parameters(), good))


def test_crash_mid_save_keeps_previous_checkpoint(tmp_path):
    # Only one rank fails; the other would wait at a barrier, so run on 1 rank.
    assert run_distributed(_crash_mid_save, world_size=1, args=(str(tmp_path),)) == [True]
    assert (tmp_path / "latest").read_text() == "global_step1"
    assert not (tmp_path / "global_step2").exists()


def _load_errors(save_dir: str):
    import deepspeed
    from deepspeed.runtime.checkpoint.engine_checkpoint import CheckpointError
    engine, _, _, _ = deepspeed.initialize(model=make_model(), config=_config(1))
    assert engine.load_checkpoint(save_dir) == (None, None)  # no 'latest'
    with pytest.raises(CheckpointError, match="does not exist"):
        engine.load_checkpoint(save_dir, tag="nope")
    engine.save_checkpoint(save_dir, tag="t1")
    model_file = os.path.join(save_dir, "t1", "mp_rank_00_model_states.pt")
    with open(model_file, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="mp_rank_00_model_states.pt"):
        engine.load_checkpoint(save_dir)
    engine.save_checkpoint(save_dir, tag="t2")
    os.remove(os.path.join(save_dir, "t2", "zero_pp_rank_0_mp_rank_00_optim_states.pt"))
    with pytest.raises(CheckpointError, match="zero_pp_rank_0_mp_rank_00_optim_states.pt"):
        engine.load_checkpoint(save_dir, tag="t2")
    return True


def test_missing_and_corrupt_files_name_the_file(tmp_path):
    assert run_distributed(_load_errors, world_size=1, args=(str(tmp_path),)) == [True]
