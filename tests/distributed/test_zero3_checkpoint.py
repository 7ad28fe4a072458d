"""ZeRO-3 checkpoints on 2 gloo ranks: bit-exact resume, zero_to_fp32 and the 16-bit export into plain HF models."""
import io
import os
import subprocess
import sys

import pytest
import torch

from dist_harness import run_distributed

transformers = pytest.importorskip("transformers")  # imported here so forked ranks inherit it

VOCAB, SEQ, MICRO, STEPS, SPLIT = 96, 16, 2, 6, 3


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "opt":
        cfg = transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                     num_attention_heads=4, max_position_embeddings=40, word_embed_proj_dim=32,
                                     dropout=0.0, attention_dropout=0.0)
        return transformers.OPTForCausalLM(cfg)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg)


def _config(stage: int, **zero) -> dict:
    return {
        "train_micro_batch_size_per_gpu": MICRO,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-2, "weight_decay": 0.01}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_max_lr": 1e-2}},
        # 64: only biases and norms stay whole, every matrix is partitioned.
        "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 64, "reduce_bucket_size": 2000,
                              **zero},
    }


def _batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (MICRO, SEQ), generator=g) for _ in range(n)]


def _run(engine, data, start: int, steps: int):
    from deepspeed import comm as dist
    losses = []
    for step in range(start, start + steps):
        batch = data[step * dist.get_world_size() + dist.get_rank()]
        loss = engine(input_ids=batch, labels=batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def _pack(obj) -> bytes:
    """Tensors cross the harness pipe as torch.save bytes (pickled tensors would use shared memory)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _unpack(data: bytes):
    return torch.load(io.BytesIO(data), weights_only=True)


def _full_params(engine):
    """Every parameter's full value (gathered under ZeRO-3), by name."""
    import deepspeed
    out = {}
    for name, p in engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            out[name] = p.detach().clone()
    return out


def _resume(kind: str, save_dir: str):
    import deepspeed
    from deepspeed.runtime.zero.param import ZeroParamStatus
    data = _batches(2 * STEPS)
    full, _, _, _ = deepspeed.initialize(model=build(kind), config=_config(3))
    expected = _run(full, data, 0, STEPS)
    expected_params = _full_params(full)

    first, _, _, _ = deepspeed.initialize(model=build(kind), config=_config(3))
    got = _run(first, data, 0, SPLIT)
    first.save_checkpoint(save_dir, client_state={"epoch": 7})

    second, _, _, _ = deepspeed.initialize(model=build(kind, seed=123), config=_config(3))
    path, client = second.load_checkpoint(save_dir)
    rank = deepspeed.comm.get_rank()
    assert path.endswith(os.path.join(f"global_step{SPLIT}", f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"))
    assert client == {"epoch": 7}
    assert second.global_steps == SPLIT and second.get_lr() == first.get_lr()
    for p in second.module.parameters():  # restored shards, nothing left gathered
        assert p.ds_status == (ZeroParamStatus.AVAILABLE if p.ds_persist else ZeroParamStatus.NOT_AVAILABLE)
    got += _run(second, data, SPLIT, STEPS - SPLIT)
    assert got == expected, (got, expected)  # bit for bit
    resumed = _full_params(second)
    assert resumed.keys() == expected_params.keys()
    for name in resumed:
        assert torch.equal(resumed[name], expected_params[name]), name
    return sorted(os.listdir(os.path.join(save_dir, f"global_step{SPLIT}"))), sorted(os.listdir(save_dir))


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_stage3_resume_is_bit_exact(kind, tmp_path):
    files, top = run_distributed(_resume, world_size=2, args=(kind, str(tmp_path)), timeout=240)[0]
    assert files == sorted(f"zero_pp_rank_{r}_mp_rank_00_{k}_states.pt" for k in ("model", "optim") for r in (0, 1))
    assert top == ["global_step3", "latest", "zero_to_fp32.py"]


def _train_and_save(kind: str, stage: int, save_dir: str, export: bool):
    import deepspeed
    model = build(kind)
    frozen = "model.decoder.embed_positions.weight" if kind == "opt" else "model.layers.0.mlp.down_proj.weight"
    model.get_parameter(frozen).requires_grad_(False)
    engine, _, _, _ = deepspeed.initialize(model=model, config=_config(stage,
                                           stage3_gather_16bit_weights_on_model_save=export))
    _run(engine, _batches(8), 0, 3)
    engine.save_checkpoint(save_dir)
    saved = {}
    if export:
        for name in ("pytorch_model.bin", "model.safetensors"):
            saved[name] = engine.save_16bit_model(os.path.join(save_dir, "export"), name)
    params = _full_params(engine)
    engine.eval()
    with torch.no_grad():
        logits = engine(input_ids=_batches(9)[-1]).logits
    return _pack((params, logits, frozen, saved))


def _plain_logits(kind: str, state=None, folder=None):
    torch.set_num_threads(1)  # the ranks ran single-threaded; same kernels, same bits
    if folder is not None:
        model = type(build(kind)).from_pretrained(folder)
    else:
        model = build(kind, seed=5)
        result = model.load_state_dict(state, strict=False)
        assert not result.unexpected_keys and not result.missing_keys, result
    model.eval()
    with torch.no_grad():
        return model(input_ids=_batches(9)[-1]).logits


@pytest.mark.parametrize("kind,stage", [("opt", 3), ("llama", 3), ("llama", 2)])
def test_zero_to_fp32_loads_into_plain_hf_model(kind, stage, tmp_path):
    from deepspeed.utils.zero_to_fp32 import (convert_zero_checkpoint_to_fp32_state_dict,
                                              get_fp32_state_dict_from_zero_checkpoint)
    params, logits, frozen, _ = _unpack(run_distributed(_train_and_save, world_size=2,
                                                        args=(kind, stage, str(tmp_path), False), timeout=240)[0])
    threads = torch.get_num_threads()
    try:
        state = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path))
        for name, value in params.items():
            assert state[name].dtype == torch.float32 and torch.equal(state[name], value), name
        assert torch.equal(_plain_logits(kind, state), logits)
        if kind == "llama":  # tied: one tensor under both names, as module.state_dict() gives
            assert state["lm_head.weight"] is state["model.embed_tokens.weight"]
        trainable = get_fp32_state_dict_from_zero_checkpoint(str(tmp_path), exclude_frozen_parameters=True)
        assert frozen not in trainable and set(trainable) | {frozen} == set(state)

        # safetensors + from_pretrained: HF re-ties the dropped alias
        folder = tmp_path / "hf"
        build(kind).config.save_pretrained(folder)
        convert_zero_checkpoint_to_fp32_state_dict(str(tmp_path), str(folder / "model.safetensors"))
        assert torch.equal(_plain_logits(kind, folder=str(folder)), logits)
    finally:
        torch.set_num_threads(threads)


def test_copied_script_runs_without_deepspeed(tmp_path):
    params, _, _, _ = _unpack(run_distributed(_train_and_save, world_size=2, args=("llama", 3, str(tmp_path), False),
                                              timeout=240)[0])
    script = tmp_path / "zero_to_fp32.py"
    out = tmp_path / "out.bin"
    # The copy must not need our package: make `import deepspeed` fail inside it.
    code = ("import sys, runpy; sys.modules['deepspeed'] = None; "
            f"sys.argv = ['zero_to_fp32.py', {str(tmp_path)!r}, {str(out)!r}, '-t', 'global_step3']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    state = torch.load(out, weights_only=True)
    assert set(state) == set(params) | {"lm_head.weight"}  # the tied alias, named as state_dict() does
    for name, value in params.items():
        assert torch.equal(state[name], value), name


def _export_disabled(save_dir: str):
    import deepspeed
    engine, _, _, _ = deepspeed.initialize(model=build("opt"), config=_config(3))
    with pytest.warns(UserWarning, match="stage3_gather_16bit_weights_on_model_save"):
        ok = engine.save_16bit_model(save_dir)
    return ok, os.listdir(save_dir)


def test_save_16bit_model_needs_the_flag_under_stage3(tmp_path):
    for ok, files in run_distributed(_export_disabled, world_size=2, args=(str(tmp_path),)):
        assert ok is False and files == []


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_save_16bit_model_gathers_full_weights(kind, tmp_path):
    params, logits, _, saved = _unpack(run_distributed(_train_and_save, world_size=2,
                                                       args=(kind, 3, str(tmp_path), True), timeout=240)[0])
    assert saved == {"pytorch_model.bin": True, "model.safetensors": True}
    export = tmp_path / "export"
    state = torch.load(export / "pytorch_model.bin", weights_only=True)
    expected_keys = set(build(kind).state_dict())
    assert set(state) == expected_keys  # names as module.state_dict() gives them, tied aliases included
    for name, value in params.items():
        assert torch.equal(state[name], value), name
    threads = torch.get_num_threads()
    try:
        assert torch.equal(_plain_logits(kind, state), logits)
        build(kind).config.save_pretrained(export)
        os.remove(export / "pytorch_model.bin")  # from_pretrained must read the safetensors file
        assert torch.equal(_plain_logits(kind, folder=str(export)), logits)
    finally:
        torch.set_num_threads(threads)
