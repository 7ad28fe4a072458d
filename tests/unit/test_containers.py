"""Container policies and LoRA fusion, single process: views against the HF modules they replace."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from deepspeed.inference.containers import GPTNeoXPolicy, LlamaPolicy, OPTPolicy, find_policy
from deepspeed.inference.lora_fusion import LoraFusion, LoraRestoreError, collect_lora_adapters
from deepspeed.inference.tp import shard_view
from dschat.lora.lora import convert_linear_layer_to_lora

try:
    import peft
except ImportError:
    peft = None


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                        num_attention_heads=4, max_position_embeddings=64)).eval()
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64)).eval()
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, max_position_embeddings=64,
                                            rotary_pct=0.25)).eval()


@pytest.mark.parametrize("family,cls", [("opt", OPTPolicy), ("llama", LlamaPolicy), ("neox", GPTNeoXPolicy)])
def test_find_policy_picks_the_family(family, cls):
    assert isinstance(find_policy(tiny(family)), cls)


def test_unknown_family_has_no_policy():
    assert find_policy(torch.nn.Sequential(torch.nn.Linear(2, 2))) is None


def test_mistral_and_qwen2_reuse_the_llama_policy():
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)
    assert isinstance(find_policy(MistralForCausalLM(MistralConfig(**kw))), LlamaPolicy)
    policy = find_policy(Qwen2ForCausalLM(Qwen2Config(**kw)))
    assert isinstance(policy, LlamaPolicy)
    assert policy.layer_view(policy.layers[0]).qkv_b is not None  # Qwen2's q/k/v carry biases


def _heads(view, x):
    q, k, v = view.split_qkv(F.linear(x, view.qkv_w, view.qkv_b))
    return q, k, v


def test_llama_view_q_k_v_match_the_hf_projections():
    model = tiny("llama")
    policy = find_policy(model)
    attn = model.model.layers[0].self_attn
    view = policy.layer_view(policy.layers[0])
    assert (view.n_heads, view.n_kv_heads, view.head_dim) == (4, 2, 8)
    x = torch.randn(2, 5, 32)
    q, k, v = _heads(view, x)
    torch.testing.assert_close(q, attn.q_proj(x).view(2, 5, 4, 8).transpose(1, 2))
    torch.testing.assert_close(k, attn.k_proj(x).view(2, 5, 2, 8).transpose(1, 2))
    torch.testing.assert_close(v, attn.v_proj(x).view(2, 5, 2, 8).transpose(1, 2))


def test_neox_view_uses_the_fused_weight_without_copy():
    model = tiny("neox")
    policy = find_policy(model)
    layer = policy.layers[0]
    view = policy.layer_view(layer)
    assert view.qkv_w.data_ptr() == layer.attention.query_key_value.weight.data_ptr()
    x = torch.randn(1, 3, 32)
    q, _, v = _heads(view, x)
    ref = layer.attention.query_key_value(x).view(1, 3, 4, 24).transpose(1, 2)
    torch.testing.assert_close(q, ref[..., :8])
    torch.testing.assert_close(v, ref[..., 16:])
    assert view.rotary_dims == 2 and view.residual == "parallel"


@pytest.mark.parametrize("family", ["opt", "llama", "neox"])
def test_tp_shards_sum_to_the_full_projection(family):
    """Row-sharded qkv/MLP-in and column-sharded out/MLP-out: the partial outputs add up to the full ones."""
    policy = find_policy(tiny(family))
    full = policy.layer_view(policy.layers[0])
    shards = [shard_view(full, r, 2, group=None) for r in range(2)]
    attn = torch.randn(3, full.n_heads * full.head_dim)
    # attention output: each rank holds its heads' columns
    parts = [F.linear(attn[:, r * full.n_heads // 2 * full.head_dim:(r + 1) * full.n_heads // 2 * full.head_dim],
                      s.out_w, s.out_b) for r, s in enumerate(shards)]
    torch.testing.assert_close(parts[0] + parts[1], F.linear(attn, full.out_w, full.out_b))
    x = torch.randn(3, 32)

    def mlp(v, h):
        u = F.linear(h, v.mlp_in_w, v.mlp_in_b)
        if v.gated:
            g, up = u.chunk(2, dim=-1)
            u = v.act(g) * up
        else:
            u = v.act(u)
        return F.linear(u, v.mlp_out_w, v.mlp_out_b)
    torch.testing.assert_close(mlp(shards[0], x) + mlp(shards[1], x), mlp(full, x))
    assert shards[1].out_b is None and shards[1].n_heads == full.n_heads // 2


def _dschat_lora(model, part):
    model = convert_linear_layer_to_lora(model, part, lora_dim=4, lora_scaling=2)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.5)
    return model


def test_dschat_lora_fuse_matches_the_lora_forward_and_unfuse_restores():
    model = _dschat_lora(tiny("opt"), "decoder.layers.")
    adapters = collect_lora_adapters([model])
    assert len(adapters) == 12 and {a.kind for a in adapters} == {"dschat"}
    x = torch.randn(2, 32)
    layer = model.model.decoder.layers[0].self_attn.q_proj
    expected = layer(x)
    originals = [a.weight.detach().clone() for a in adapters]
    fusion = LoraFusion(adapters)
    fusion.fuse()
    assert layer.fuse_lora  # DS-Chat's forward now skips its own update
    torch.testing.assert_close(F.linear(x, layer.weight, layer.bias), expected)
    torch.testing.assert_close(layer(x), expected)
    with pytest.raises(RuntimeError, match="already fused"):
        fusion.fuse()
    fusion.unfuse()
    assert not layer.fuse_lora
    for a, w in zip(adapters, originals):
        torch.testing.assert_close(a.weight, w, rtol=0, atol=1e-6)


def test_unfuse_detects_factors_changed_while_fused():
    model = _dschat_lora(tiny("opt"), "decoder.layers.")
    fusion = LoraFusion(collect_lora_adapters([model]))
    fusion.fuse()
    with torch.no_grad():
        model.model.decoder.layers[0].fc1.lora_left_weight.mul_(2)
    with pytest.raises(LoraRestoreError):
        fusion.unfuse()


def test_fused_qkv_lora_on_neox():
    model = _dschat_lora(tiny("neox"), "layers.")
    layer = model.gpt_neox.layers[0].attention.query_key_value
    x = torch.randn(2, 32)
    expected = layer(x)
    fusion = LoraFusion(collect_lora_adapters([model]))
    fusion.fuse()
    view = find_policy(model).layer_view(model.gpt_neox.layers[0])
    torch.testing.assert_close(F.linear(x, view.qkv_w, view.qkv_b), expected)
    fusion.unfuse()


@pytest.mark.skipif(peft is None, reason="peft is not installed")
def test_peft_lora_fuse_matches_peft_forward_on_separate_q_k_v():
    model = peft.get_peft_model(tiny("llama"), peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                               target_modules=["q_proj", "k_proj", "v_proj"]))
    torch.manual_seed(5)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    policy = find_policy(model)
    assert isinstance(policy, LlamaPolicy)
    attn = policy.layers[0].self_attn
    x = torch.randn(1, 3, 32)
    refs = [attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)]
    fusion = LoraFusion(collect_lora_adapters([model]))
    fusion.fuse()
    q, k, v = policy.layer_view(policy.layers[0]).split_qkv(
        F.linear(x, *[getattr(policy.layer_view(policy.layers[0]), n) for n in ("qkv_w", "qkv_b")]))
    torch.testing.assert_close(q, refs[0].view(1, 3, 4, 8).transpose(1, 2))
    torch.testing.assert_close(k, refs[1].view(1, 3, 2, 8).transpose(1, 2))
    torch.testing.assert_close(v, refs[2].view(1, 3, 2, 8).transpose(1, 2))
    fusion.unfuse()
    torch.testing.assert_close(attn.q_proj(x), refs[0])  # peft's forward again adds the update itself
