"""Presets, create_hf_model, HF-format saving of actors, and the dschat.utils helpers (spec §4)."""
import math
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

import deepspeed
from dist_harness import run_distributed
from dschat.lora import LinearLayer_LoRA, convert_linear_layer_to_lora
from dschat.models import (
    causal_lm_model_to_fp32_loss,
    create_hf_model,
    find_weights_file,
    preset_config,
    save_hf_format,
    save_zero_three_model,
)
from dschat.utils import (
    ExponentialMovingAverage,
    get_all_reduce_mean,
    load_hf_tokenizer,
    moving_average,
    position_ids_from_mask,
    set_random_seed,
    to_device,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_hf_tokenizer("tiny-llama")


def _batch(tokenizer, length=12):
    enc = tokenizer(["what is 3+4? 7", "upper abc: ABC"], padding="max_length", max_length=length,
                    return_tensors="pt")
    return enc.input_ids, enc.attention_mask


# --------------------------------------------------------------------------
# Presets and create_hf_model.
# --------------------------------------------------------------------------


def test_tiny_llama_uses_grouped_query_attention(tokenizer):
    config = preset_config("tiny-llama", tokenizer)
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.num_attention_heads % config.num_key_value_heads == 0
    model = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer)
    attn = model.model.layers[0].self_attn
    head_dim = config.hidden_size // config.num_attention_heads
    assert attn.q_proj.out_features == config.num_attention_heads * head_dim
    assert attn.k_proj.out_features == attn.v_proj.out_features == config.num_key_value_heads * head_dim
    assert config.hidden_act == "silu" and type(model.model.norm).__name__ == "LlamaRMSNorm"


@pytest.mark.parametrize("preset", ["tiny-opt", "tiny-llama"])
def test_preset_vocab_and_special_ids(tokenizer, preset):
    model = create_hf_model(AutoModelForCausalLM, preset, tokenizer)
    vocab = model.get_input_embeddings().weight.shape[0]
    assert vocab == 8 * math.ceil(len(tokenizer) / 8) and model.config.vocab_size == vocab
    assert model.config.end_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.config.hidden_size == 64 and 2 <= model.config.num_hidden_layers <= 4


def test_dropout_argument_sets_every_dropout_field(tokenizer):
    model = create_hf_model(AutoModelForCausalLM, "tiny-opt", tokenizer, dropout=0.25)
    assert model.config.dropout == model.config.attention_dropout == model.config.activation_dropout == 0.25
    assert model.model.decoder.layers[0].dropout == 0.25
    untouched = create_hf_model(AutoModelForCausalLM, "tiny-opt", tokenizer, dropout=None)
    assert untouched.config.dropout == 0.0  # the preset's own value
    llama = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer, dropout=0.1)
    assert llama.config.attention_dropout == 0.1


def _save_plain_llama(path, tokenizer, vocab_size):
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)  # safetensors
    return model


def test_local_path_loads_and_resizes_to_multiple_of_8(tmp_path, tokenizer):
    original = _save_plain_llama(tmp_path, tokenizer, vocab_size=len(tokenizer) - 11)
    assert os.path.isfile(tmp_path / "model.safetensors")
    model = create_hf_model(AutoModelForCausalLM, str(tmp_path), tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == 8 * math.ceil(len(tokenizer) / 8)
    kept = original.config.vocab_size
    torch.testing.assert_close(model.get_input_embeddings().weight[:kept], original.get_input_embeddings().weight)
    assert model.dtype == torch.float32


def test_rlhf_training_builds_from_config_without_loading(tmp_path, tokenizer, monkeypatch):
    _save_plain_llama(tmp_path, tokenizer, vocab_size=len(tokenizer))

    def no_loading(*args, **kwargs):
        raise AssertionError("rlhf_training must not load weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    model = create_hf_model(AutoModelForCausalLM, str(tmp_path), tokenizer, rlhf_training=True)
    assert model.config.hidden_size == 32 and model.get_input_embeddings().weight.shape[0] % 8 == 0


def _build_stage3(tokenizer):
    from dschat.ds_utils import get_train_ds_config
    model = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer,
                            ds_config=get_train_ds_config(False, "fp32", stage=3))
    weight = model.get_input_embeddings().weight
    return hasattr(weight, "ds_id"), getattr(weight, "ds_numel", 0), weight.numel()


def test_stage3_config_builds_a_partitioned_model(tokenizer):
    # in ranks of their own: zero.Init starts a process group, which a pytest process must not hold
    for has_id, ds_numel, numel in run_distributed(_build_stage3, world_size=2, args=(tokenizer,)):
        # built under zero.Init (via HfDeepSpeedConfig): the parameter is a shard
        assert has_id and ds_numel > 0 and numel == 0


def test_unknown_model_fails_offline_with_a_clear_message(tokenizer):
    with pytest.raises(OSError, match="preset"):
        create_hf_model(AutoModelForCausalLM, "no-such-org/no-such-model-xyz", tokenizer)


def test_fp32_loss_wrapper_matches_manual_cross_entropy(tokenizer):
    torch.manual_seed(0)
    model = causal_lm_model_to_fp32_loss(create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer))
    ids, mask = _batch(tokenizer)
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    logits = out.logits.float()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                               ignore_index=-100)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, expected)
    assert model(input_ids=ids, attention_mask=mask).loss is None


# --------------------------------------------------------------------------
# Saving.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("preset,part", [("tiny-llama", "layers."), ("tiny-opt", "decoder.layers.")])
def test_actor_round_trip_with_lora_fused(tmp_path, tokenizer, preset, part):
    torch.manual_seed(0)
    actor = create_hf_model(AutoModelForCausalLM, preset, tokenizer)
    convert_linear_layer_to_lora(actor, part, lora_dim=4)
    for layer in actor.modules():
        if isinstance(layer, LinearLayer_LoRA):
            nn.init.normal_(layer.lora_left_weight, std=0.05)
    actor.eval()
    ids, mask = _batch(tokenizer)
    with torch.no_grad():
        expected = actor(input_ids=ids, attention_mask=mask).logits
    folder = save_hf_format(actor, tokenizer, SimpleNamespace(output_dir=str(tmp_path)), sub_folder="actor")
    assert folder == str(tmp_path / "actor")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    # the live model is untouched: still unfused, training can go on
    assert not any(m.fuse_lora for m in actor.modules() if isinstance(m, LinearLayer_LoRA))
    loaded = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert not any(isinstance(m, LinearLayer_LoRA) for m in loaded.modules())
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the folder is self-contained: the tokenizer loads from it
    reloaded_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert reloaded_tok("3+4=7").input_ids == tokenizer("3+4=7").input_ids
    # and create_hf_model reads it like any local model
    again = create_hf_model(AutoModelForCausalLM, folder, tokenizer).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5, rtol=1e-4)


def test_bin_format_and_stale_weights_removed(tmp_path, tokenizer):
    actor = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer)
    args = SimpleNamespace(output_dir=str(tmp_path))
    save_hf_format(actor, tokenizer, args)
    save_hf_format(actor, tokenizer, args, safe_serialization=False)
    assert find_weights_file(str(tmp_path)) == str(tmp_path / "pytorch_model.bin")
    assert not os.path.exists(tmp_path / "model.safetensors")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path), local_files_only=True)
    torch.testing.assert_close(loaded.lm_head.weight, actor.lm_head.weight)


def test_save_zero_three_model_without_zero3_writes_rank0_weights(tmp_path, tokenizer):
    torch.manual_seed(0)
    actor = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer)
    convert_linear_layer_to_lora(actor, "layers.", lora_dim=2)
    save_zero_three_model(actor, global_rank=1, save_dir=str(tmp_path / "r1"))
    assert not os.path.exists(tmp_path / "r1" / "model.safetensors")
    save_zero_three_model(actor, global_rank=0, save_dir=str(tmp_path / "r0"))
    from safetensors.torch import load_file
    state = load_file(str(tmp_path / "r0" / "model.safetensors"))
    assert not any("lora" in k for k in state)
    torch.testing.assert_close(state["model.layers.0.self_attn.q_proj.weight"],
                               actor.model.layers[0].self_attn.q_proj.weight.detach())


# --------------------------------------------------------------------------
# dschat.utils
# --------------------------------------------------------------------------


def test_set_random_seed_reseeds_every_rng():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    set_random_seed(7)
    first = draw()
    set_random_seed(7)
    assert draw() == first
    state = torch.get_rng_state()
    set_random_seed(None)  # None leaves the RNGs alone
    assert torch.equal(torch.get_rng_state(), state)


def test_to_device_moves_tensors_only():
    batch = to_device({"x": torch.ones(2, dtype=torch.float64), "n": 3}, "meta")
    assert batch["x"].device.type == "meta" and batch["n"] == 3


def test_position_ids_from_mask():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[1, 1, 0, 1, 2, 1], [0, 1, 2, 3, 4, 5]]


def test_scalar_ema():
    ema = ExponentialMovingAverage(alpha=0.9)
    assert ema.get() is None
    assert ema.update(2.0) == 2.0  # first value taken as is
    assert ema.update(4.0) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)
    restored = ExponentialMovingAverage()
    restored.load_state_dict(ema.state_dict())
    assert restored.update(0.0) == pytest.approx(0.9 * 2.2)


def test_moving_average_formula_and_pairing():
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    p, e = model.weight.detach().clone(), ema.weight.detach().clone()
    moving_average(model, ema, beta=0.9)
    torch.testing.assert_close(ema.weight.detach(), 0.9 * e + 0.1 * p)
    with pytest.raises(ValueError, match="same structure"):
        moving_average(nn.Sequential(nn.Linear(3, 2)), nn.Sequential(nn.Identity(), nn.Linear(3, 2)))


def _all_reduce_mean():
    from deepspeed import comm as dist
    value = torch.tensor([float(dist.get_rank() + 1), 10.0])
    mean = get_all_reduce_mean(value)
    return mean.tolist(), value.tolist()


def test_get_all_reduce_mean_leaves_input_alone():
    results = run_distributed(_all_reduce_mean, world_size=2)
    for rank, (mean, value) in enumerate(results):
        assert mean == [1.5, 10.0]
        assert value == [rank + 1.0, 10.0]
