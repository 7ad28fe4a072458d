"""LoRA layer maths, conversion helpers, gradient flow and the separate LoRA learning rate (spec §5)."""
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, get_scheduler

from dist_harness import run_distributed
from dschat.lora import (
    LinearLayer_LoRA,
    convert_linear_layer_to_lora,
    convert_lora_to_linear_layer,
    get_optimizer_grouped_parameters,
    make_model_gradient_checkpointing_compatible,
    only_optimize_lora_parameters,
    unfuse_lora_layers,
)
from dschat.models import create_critic_model, create_hf_model
from dschat.utils import load_hf_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_hf_tokenizer("tiny-llama")


def _lora_layer(out_f=6, in_f=5, r=3, scaling=2.0, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    linear = nn.Linear(in_f, out_f).to(dtype)
    layer = LinearLayer_LoRA(linear.weight, lora_dim=r, lora_scaling=scaling, bias=linear.bias)
    with torch.no_grad():  # a trained-looking update (the left factor starts at zero)
        layer.lora_left_weight.copy_(torch.randn(r, out_f))
    return linear, layer


def _batch(tokenizer, n=2, length=12):
    enc = tokenizer(["what is 3+4? 7", "reverse abc: cba"][:n], padding="max_length", max_length=length,
                    return_tensors="pt")
    return enc.input_ids, enc.attention_mask


def test_layer_shapes_init_and_frozen_base():
    linear, _ = _lora_layer()
    layer = LinearLayer_LoRA(linear.weight, lora_dim=3, lora_scaling=2.0, bias=linear.bias)
    assert layer.lora_right_weight.shape == (5, 3)  # (in, r)
    assert layer.lora_left_weight.shape == (3, 6)  # (r, out)
    assert torch.count_nonzero(layer.lora_left_weight) == 0 and torch.count_nonzero(layer.lora_right_weight) > 0
    # kaiming-uniform with a=sqrt(5) on (in, r): bound = 1/sqrt(fan_in) with fan_in = r
    assert layer.lora_right_weight.abs().max() <= 1 / math.sqrt(3) + 1e-7
    assert layer.lora_scaling == pytest.approx(2.0 / 3)
    assert layer.weight is linear.weight and not layer.weight.requires_grad
    assert isinstance(layer.lora_dropout, nn.Identity)
    assert isinstance(LinearLayer_LoRA(linear.weight, 2, lora_droppout=0.1).lora_dropout, nn.Dropout)
    with pytest.raises(ValueError, match="rank"):
        LinearLayer_LoRA(linear.weight, lora_dim=0)


def test_forward_matches_formula():
    linear, layer = _lora_layer()
    x = torch.randn(4, 5)
    expected = x @ linear.weight.T + linear.bias + (x @ layer.lora_right_weight @ layer.lora_left_weight) * (2.0 / 3)
    torch.testing.assert_close(layer(x), expected)


def test_fuse_unfuse_round_trip_fp32():
    linear, layer = _lora_layer()
    w0 = linear.weight.detach().clone()
    x = torch.randn(4, 5)
    unfused_out = layer(x)
    delta = (2.0 / 3) * layer.lora_left_weight.T @ layer.lora_right_weight.T
    layer.fuse_lora_weight()
    layer.fuse_lora_weight()  # idempotent: applied once
    assert layer.fuse_lora
    torch.testing.assert_close(layer.weight.detach(), w0 + delta)
    torch.testing.assert_close(layer(x), unfused_out)
    layer.unfuse_lora_weight()
    layer.unfuse_lora_weight()
    assert not layer.fuse_lora
    torch.testing.assert_close(layer.weight.detach(), w0, atol=1e-6, rtol=0)


def test_fuse_unfuse_round_trip_half_loses_only_one_rounding():
    linear, layer = _lora_layer(dtype=torch.float16)
    w0 = linear.weight.detach().clone()
    layer.fuse_lora_weight()
    layer.unfuse_lora_weight()
    # Each direction rounds once to fp16: at most two half-ulps of |w + delta|.
    ulp = torch.finfo(torch.float16).eps * (w0.float().abs() + 4).max()
    assert (layer.weight.float() - w0.float()).abs().max() <= ulp


def test_fused_weight_does_not_modify_layer():
    linear, layer = _lora_layer()
    w0 = linear.weight.detach().clone()
    fused = layer.fused_weight()
    assert torch.equal(layer.weight.detach(), w0) and not layer.fuse_lora
    layer.fuse_lora_weight()
    torch.testing.assert_close(fused, layer.weight.detach())


def test_train_eval_recurse_into_dropout():
    linear = nn.Linear(4, 4)
    layer = LinearLayer_LoRA(linear.weight, 2, lora_droppout=0.5)
    wrapper = nn.Sequential(layer)
    wrapper.eval()
    assert not layer.training and not layer.lora_dropout.training
    wrapper.train()
    assert layer.training and layer.lora_dropout.training


@pytest.mark.parametrize("preset,part,per_layer", [("tiny-opt", "decoder.layers.", 6), ("tiny-llama", "layers.", 7)])
def test_convert_keeps_outputs_and_skips_lm_head(tokenizer, preset, part, per_layer):
    torch.manual_seed(0)
    model = create_hf_model(AutoModelForCausalLM, preset, tokenizer).eval()
    ids, mask = _batch(tokenizer)
    before = model(input_ids=ids, attention_mask=mask).logits
    convert_linear_layer_to_lora(model, part, lora_dim=4)
    layers = [m for m in model.modules() if isinstance(m, LinearLayer_LoRA)]
    assert len(layers) == per_layer * model.config.num_hidden_layers
    assert isinstance(model.lm_head, nn.Linear) and not isinstance(model.lm_head, LinearLayer_LoRA)
    assert not model.training and not layers[0].training  # keeps the replaced module's mode
    # left factor zero: the converted model computes what it computed before
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, before)
    with pytest.raises(ValueError, match="lora_module_name"):
        convert_linear_layer_to_lora(model, "no.such.block.", lora_dim=4)


def test_convert_lora_to_linear_fuses_in_place(tokenizer):
    torch.manual_seed(0)
    model = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer).eval()
    convert_linear_layer_to_lora(model, "layers.", lora_dim=4)
    for layer in model.modules():
        if isinstance(layer, LinearLayer_LoRA):
            nn.init.normal_(layer.lora_left_weight, std=0.05)
    ids, mask = _batch(tokenizer)
    unfused = model(input_ids=ids, attention_mask=mask).logits
    q_proj = model.model.layers[0].self_attn.q_proj
    w0 = q_proj.weight.detach().clone()
    convert_lora_to_linear_layer(model)
    assert all(m.fuse_lora for m in model.modules() if isinstance(m, LinearLayer_LoRA))
    assert not torch.equal(q_proj.weight, w0)
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, unfused, atol=1e-5, rtol=1e-4)
    unfuse_lora_layers(model)
    torch.testing.assert_close(q_proj.weight.detach(), w0, atol=1e-6, rtol=0)


def test_only_optimize_lora_parameters(tokenizer):
    critic = create_critic_model("tiny-opt", tokenizer, None)
    convert_linear_layer_to_lora(critic, "decoder.layers.", lora_dim=2)
    only_optimize_lora_parameters(critic, force_optimize_params=["v_head.weight"])
    trainable = [n for n, p in critic.named_parameters() if p.requires_grad]
    assert "v_head.weight" in trainable
    assert len(trainable) == 1 + 2 * 6 * critic.config.num_hidden_layers
    assert all(n == "v_head.weight" or n.endswith(("lora_right_weight", "lora_left_weight")) for n in trainable)
    with pytest.raises(ValueError, match="v_head.wieght"):
        only_optimize_lora_parameters(critic, force_optimize_params=["v_head.wieght"])


@pytest.mark.parametrize("kind", ["actor", "critic"])
def test_lora_grads_flow_with_gradient_checkpointing(tokenizer, kind):
    torch.manual_seed(0)
    if kind == "actor":
        model = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer)
    else:
        model = create_critic_model("tiny-llama", tokenizer, None)
    convert_linear_layer_to_lora(model, "layers.", lora_dim=4)
    only_optimize_lora_parameters(model, ["v_head.weight"] if kind == "critic" else [])
    make_model_gradient_checkpointing_compatible(model)
    model.gradient_checkpointing_enable()
    model.train()
    for layer in model.modules():  # non-zero left factors so that the right factors get gradient too
        if isinstance(layer, LinearLayer_LoRA):
            nn.init.normal_(layer.lora_left_weight, std=0.02)
    ids, mask = _batch(tokenizer, length=16)
    if kind == "actor":
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
    else:
        loss = model.forward_value(ids, mask, return_value_only=True).pow(2).mean()
    loss.backward()
    lora = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora), \
        [n for n, p in lora if p.grad is None or p.grad.abs().sum() == 0]
    frozen = [p for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)


# --------------------------------------------------------------------------
# Optimizer groups and the separate LoRA learning rate.
# --------------------------------------------------------------------------


def _group_names(model, groups):
    names = {id(p): n for n, p in model.named_parameters()}
    return [sorted(names[id(p)] for p in g["params"]) for g in groups]


def test_optimizer_groups_split(tokenizer):
    model = create_hf_model(AutoModelForCausalLM, "tiny-opt", tokenizer)
    convert_linear_layer_to_lora(model, "decoder.layers.", lora_dim=2)
    groups = get_optimizer_grouped_parameters(model, weight_decay=0.1, lora_lr=1e-3)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.1, 0.0]
    assert "lr" not in groups[0] and groups[1]["lr"] == 1e-3 and "lr" not in groups[2]
    decay, lora, no_decay = _group_names(model, groups)
    assert all("lora_" in n for n in lora) and not any("lora_" in n for n in decay)
    assert all(n.endswith("bias") or "layer_norm.weight" in n for n in no_decay)
    assert "model.decoder.final_layer_norm.weight" in no_decay  # matched lower-cased
    assert "model.decoder.layers.0.self_attn.q_proj.weight" not in decay  # frozen base weight: left out
    assert "model.decoder.embed_tokens.weight" in decay
    total = sum(len(g["params"]) for g in groups)
    assert total == sum(1 for p in model.parameters() if p.requires_grad)

    only_optimize_lora_parameters(model)
    groups = get_optimizer_grouped_parameters(model, weight_decay=0.0, lora_lr=2e-3)
    assert len(groups) == 1 and groups[0]["lr"] == 2e-3  # empty groups dropped


def test_llama_norms_are_not_decayed(tokenizer):
    model = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer)
    decay, no_decay = _group_names(model, get_optimizer_grouped_parameters(model, 0.1))
    assert "model.norm.weight" in no_decay and "model.layers.0.input_layernorm.weight" in no_decay
    assert "model.layers.0.mlp.gate_proj.weight" in decay


def _lora_lr_after_initialize(stage, schedule):
    import deepspeed
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    convert_linear_layer_to_lora(model, "2", lora_dim=2)
    with torch.no_grad():
        model[2].lora_left_weight.normal_()
    groups = get_optimizer_grouped_parameters(model, weight_decay=0.01, lora_lr=5e-3)
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}}
    scheduler = None
    if schedule == "WarmupLR":
        config["scheduler"] = {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_num_steps": 4,
                                                              "warmup_type": "linear"}}
    else:
        scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=2, num_training_steps=6)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    history = []
    for _ in range(5):
        loss = engine(torch.randn(2, 8)).pow(2).sum()
        engine.backward(loss)
        engine.step()
        history.append(engine.get_lr())
    return history


@pytest.mark.parametrize("stage", [0, 2])
@pytest.mark.parametrize("schedule", ["WarmupLR", "hf-cosine"])
def test_lora_group_keeps_its_own_lr_through_the_schedule(stage, schedule):
    history = run_distributed(_lora_lr_after_initialize, world_size=2, args=(stage, schedule))[0]
    # groups: decay (Linear 0 weight), LoRA, no-decay (biases, LayerNorm)
    assert len(history[0]) == 3
    moving = [lrs for lrs in history if lrs[0] > 0]
    assert len(moving) >= 3 and len({round(lrs[0], 12) for lrs in moving}) > 1  # the schedule does move
    for decay_lr, lora_lr, no_decay_lr in moving:
        assert lora_lr / decay_lr == pytest.approx(5.0)
        assert no_decay_lr == pytest.approx(decay_lr)


def test_get_optimizer_keeps_group_lrs():
    from dschat.utils import get_optimizer
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    convert_linear_layer_to_lora(model, "1", lora_dim=2)
    optimizer = get_optimizer(get_optimizer_grouped_parameters(model, 0.1, lora_lr=3e-3), lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 3e-3, 1e-3]
    assert all(tuple(g["betas"]) == (0.9, 0.95) for g in optimizer.param_groups)
