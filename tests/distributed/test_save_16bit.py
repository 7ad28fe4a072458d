"""save_16bit_model writes the module weights in their training dtype, loadable by plain torch."""
import os

import pytest
import torch

from dist_harness import run_distributed
from simple_models import make_model, random_tokens


def _save(out: str, stage: int, bf16: bool):
    import deepspeed
    config = {"train_batch_size": 4, "optimizer": {"type": "AdamW", "params": {"lr": 1e-2}},
              "bf16": {"enabled": bf16}, "zero_optimization": {"stage": stage}}
    model = make_model()
    model.embed.weight.requires_grad_(False)  # a frozen (and tied) parameter
    engine, _, _, _ = deepspeed.initialize(model=model, config=config)
    if not bf16:
        engine.backward(engine(random_tokens(1, 2)[0]))
        engine.step()
    assert engine.save_16bit_model(out, "model.bin") is True
    assert engine.save_16bit_model(out, "trainable.bin", exclude_frozen_parameters=True) is True
    return {k: v.tolist() for k, v in engine.module.state_dict().items()}


@pytest.mark.parametrize("stage,bf16", [(0, False), (2, False), (1, True)])
def test_save_16bit_model_round_trip(tmp_path, stage, bf16):
    expected = run_distributed(_save, world_size=2, args=(str(tmp_path), stage, bf16))[0]
    saved = torch.load(os.path.join(tmp_path, "model.bin"), weights_only=True)
    assert set(saved) == set(expected)
    dtype = torch.bfloat16 if bf16 else torch.float32
    for name, value in saved.items():
        assert value.dtype == dtype
        assert value.tolist() == expected[name]
    trainable = torch.load(os.path.join(tmp_path, "trainable.bin"), weights_only=True)
    assert "embed.weight" not in trainable and "blocks.0.fc1.weight" in trainable
    # loads into a fresh plain model
    fresh = make_model(seed=9).to(dtype)
    fresh.load_state_dict(saved)
