"""The KV-cache decode loop, single process: HF greedy parity, EOS/padding, sampling warpers, cache reuse."""
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from deepspeed.inference.containers import find_policy
from deepspeed.inference.decode import DecodeLoop, GenerationParams, KVWorkspace, StaticLayers, process_logits
from deepspeed.inference.generate_args import resolve_generation
from deepspeed.inference.kernels import (PackedWeight, SkinnyWeight, bias_act_ref, decode_products,
                                         mkl_packing_available, packing_pays, rms_norm_ref, rotary_ref,
                                         skinny_linear_op)

needs_mkl = pytest.mark.skipif(not mkl_packing_available(), reason="this torch build has no MKL packed GEMM")


def tiny(family: str, seed: int = 0):
    torch.manual_seed(seed)
    if family == "opt":
        model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                         num_attention_heads=4, max_position_embeddings=64, pad_token_id=1,
                                         eos_token_id=2, bos_token_id=2))
    elif family == "opt_post_ln":  # OPT-350m's arrangement: post-LN and a projected embedding
        model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, ffn_dim=64,
                                         num_attention_heads=4, max_position_embeddings=64, pad_token_id=1,
                                         eos_token_id=2, bos_token_id=2, do_layer_norm_before=False,
                                         word_embed_proj_dim=16))
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
                                             pad_token_id=0, eos_token_id=2, bos_token_id=1))
    else:
        model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=2, num_attention_heads=4,
                                                 max_position_embeddings=64, rotary_pct=0.25,
                                                 use_parallel_residual=False, pad_token_id=0, eos_token_id=2))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def left_padded(pad: int, lengths=(6, 2, 4), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(3, 64, (n,), generator=g)
        mask[i, width - n:] = 1
    return ids, mask


def loop_for(model, workspace=None, fixed_shape_steps=False, products="auto"):
    policy = find_policy(model)
    return DecodeLoop(policy, StaticLayers([policy.layer_view(l) for l in policy.layers]), workspace or KVWorkspace(),
                      fixed_shape_steps=fixed_shape_steps, products=products)


# fixed_shape_steps: the CUDA-graph step (index_copy_ into the cache, attention over all the call's
# slots under a mask) runs eagerly on CPU, so it is checked here against HF exactly like the default path.
# products: the decode steps' products run through F.linear, on MKL-packed weights or through the
# skinny C++ kernel (kernels.py); the prefill always uses F.linear.
@pytest.mark.parametrize("products", ["plain", "packed", "skinny"])
@pytest.mark.parametrize("fixed_shape_steps", [False, True], ids=["dynamic", "fixed"])
@pytest.mark.parametrize("family", ["opt", "opt_post_ln", "llama", "neox"])
def test_greedy_matches_hf_generate(family, fixed_shape_steps, products):
    if products == "packed" and not mkl_packing_available():
        pytest.skip("this torch build has no MKL packed GEMM")
    if products == "skinny" and skinny_linear_op() is None:
        pytest.skip("the cpu_inference op cannot be built here")
    model = tiny(family)
    pad = model.config.pad_token_id
    ids, mask = left_padded(pad)
    with torch.no_grad():
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=pad)
        params, why = resolve_generation(model, ids.shape[1], {"max_new_tokens": 10, "pad_token_id": pad})
        assert why is None
        loop = loop_for(model, fixed_shape_steps=fixed_shape_steps, products=products)
        out, _ = loop.generate(ids, mask, params)
    assert torch.equal(out, ref)
    # the packed copies live for one call
    assert loop._call_layers is loop.layers and loop._head is None


@pytest.mark.parametrize("fixed_shape_steps", [False, True], ids=["dynamic", "fixed"])
def test_skinny_calls_attend_through_the_kernel_in_dynamic_steps_only(monkeypatch, fixed_shape_steps):
    """The C++ step attention runs with the skinny products, on every layer of every dynamic decode step."""
    op = skinny_linear_op()
    if op is None:
        pytest.skip("the cpu_inference op cannot be built here")
    calls = []

    class Counting:
        def __getattr__(self, name):
            return getattr(op, name)

        def decode_attention(self, *args):
            calls.append(args[4])  # the length attended over
            return op.decode_attention(*args)

    import deepspeed.inference.decode as decode
    monkeypatch.setattr(decode, "skinny_linear_op", lambda: Counting())
    model = tiny("llama")
    ids, mask = left_padded(model.config.pad_token_id)
    with torch.no_grad():
        params, _ = resolve_generation(model, ids.shape[1], {"max_new_tokens": 4,
                                                             "pad_token_id": model.config.pad_token_id})
        loop = loop_for(model, fixed_shape_steps=fixed_shape_steps, products="skinny")
        loop.generate(ids, mask, params)
    layers, p = model.config.num_hidden_layers, ids.shape[1]
    # 3 decode steps follow the prefill (the 4th token needs no forward); fixed-shape steps keep SDPA.
    assert calls == ([] if fixed_shape_steps else [p + s for s in range(1, 4) for _ in range(layers)])
    assert loop._step_attention is None  # the choice lives for one call


@needs_mkl
@pytest.mark.parametrize("shape", [(3, 32, 96), (8, 512, 1536), (5, 48, 7), (1, 16, 64)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_weight_matches_f_linear(shape, bias):
    rows, k, n = shape
    g = torch.Generator().manual_seed(rows * n)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    packed = PackedWeight(w, rows)
    for x in (torch.randn(rows, k, generator=g), torch.randn(rows, 1, k, generator=g),  # the packed row count
              torch.randn(rows + 2, k, generator=g), torch.randn(2, rows, k, generator=g)):  # others: F.linear
        y = packed.linear(x, b)
        assert y.shape == x.shape[:-1] + (n,)
        # The same fp32 products summed in another order: within a few roundings of sum |x_i w_i|.
        bound = 4 * torch.finfo(torch.float32).eps * torch.nn.functional.linear(x.abs(), w.abs(),
                                                                                 b.abs() if bias else None)
        assert bool(((y - torch.nn.functional.linear(x, w, b)).abs() <= bound).all())


def test_decode_products_prefer_the_skinny_kernel_for_few_rows():
    cpu = torch.device("cpu")
    skinny = skinny_linear_op() is not None
    assert decode_products(cpu, torch.float32, rows=8, steps=2) == ("skinny" if skinny else "plain")
    assert decode_products(cpu, torch.float32, rows=16, steps=64) == (
        "skinny" if skinny else "packed" if mkl_packing_available() else "plain")
    assert decode_products(cpu, torch.float32, rows=32, steps=64) == ("packed" if mkl_packing_available() else "plain")
    assert decode_products(cpu, torch.float32, rows=512, steps=64) == "plain"
    assert decode_products(cpu, torch.bfloat16, rows=8, steps=64) == "plain"
    assert decode_products(torch.device("meta"), torch.float32, rows=8, steps=64) == "plain"


def test_a_bad_products_choice_is_named():
    with pytest.raises(ValueError, match="products='fast'"):
        loop_for(tiny("opt"), products="fast")


def test_packing_pays_only_for_long_small_batch_fp32_cpu_calls():
    cpu = torch.device("cpu")
    if mkl_packing_available():
        assert packing_pays(cpu, torch.float32, rows=8, steps=64)
    assert not packing_pays(cpu, torch.float32, rows=8, steps=4)  # the packing would not pay back
    assert not packing_pays(cpu, torch.float32, rows=512, steps=64)  # MKL's own packing is amortised there
    assert not packing_pays(cpu, torch.bfloat16, rows=8, steps=64)
    assert not packing_pays(torch.device("meta"), torch.float32, rows=8, steps=64)


@needs_mkl
def test_packed_copies_are_dropped_when_a_call_fails():
    model = tiny("opt")
    loop = loop_for(model, products="packed")
    ids, mask = left_padded(1)
    with torch.no_grad(), pytest.raises(RuntimeError):
        loop.generate(ids, mask[:, :-1], GenerationParams(20, (), 1))  # the mask does not fit the ids
    assert loop._call_layers is loop.layers and loop._head is None


def test_fixed_shape_steps_ignore_stale_cache_slots():
    """A cache reused from a longer call holds old K/V past this call's tokens: the mask must hide them."""
    model = tiny("llama", seed=1)
    ws = KVWorkspace()
    ids, mask = left_padded(0, lengths=(7, 3, 5, 6), seed=5)
    with torch.no_grad():
        loop_for(model, ws).generate(ids, mask, GenerationParams(12, (), 0))
        for t in ws.k + ws.v:
            t.fill_(1e4)  # stale, large and finite
        short = ids[:2, 3:], mask[:2, 3:]
        out, _ = loop_for(model, ws, fixed_shape_steps=True).generate(*short, GenerationParams(5, (), 0))
        ref = model.generate(*short[:1], attention_mask=short[1], max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("fixed_shape_steps", [False, True], ids=["dynamic", "fixed"])
def test_eos_stops_rows_and_pads_them_like_hf(fixed_shape_steps):
    model = tiny("llama")
    ids, mask = left_padded(0, lengths=(5, 3, 4, 5), seed=3)
    with torch.no_grad():
        free, _ = loop_for(model).generate(ids, mask, GenerationParams(6, (), 0))
        # "EOS" := a token row 0 generates early that some other row never generates
        row0 = free[0, 5:].tolist()
        eos = next(t for t in row0[:-1] if any(t not in free[r, 5:].tolist() for r in range(1, 4)))
        ref = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=eos,
                             pad_token_id=0)
        out, _ = loop_for(model, fixed_shape_steps=fixed_shape_steps).generate(ids, mask, GenerationParams(6, (eos,), 0))
    assert torch.equal(out, ref)
    hit = 5 + row0.index(eos)
    assert int(out[0, hit]) == eos and all(int(t) == 0 for t in out[0, hit + 1:])  # pads after EOS


def test_unsupported_generate_options_are_reported():
    model = tiny("opt")
    assert resolve_generation(model, 4, {"num_beams": 2})[0] is None
    assert resolve_generation(model, 4, {"repetition_penalty": 1.3})[0] is None
    params, _ = resolve_generation(model, 4, {"max_length": 12, "do_sample": True, "top_p": 0.5})
    assert params.max_new_tokens == 8 and params.do_sample and params.top_k == 50 and params.top_p == 0.5


def test_sampling_warpers_match_hf_processors():
    from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    scores = torch.randn(4, 64)
    hf = LogitsProcessorList([TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)])
    mine = process_logits(scores.clone(), GenerationParams(1, (), 0, True, 0.7, 10, 0.8))
    assert torch.equal(mine, hf(None, scores.clone()))


def test_kv_cache_is_reused_across_calls():
    model = tiny("llama")
    ws = KVWorkspace()
    ids, mask = left_padded(0)
    with torch.no_grad():
        loop_for(model, ws).generate(ids, mask, GenerationParams(5, (), 0))
        ptrs = [t.data_ptr() for t in ws.k]
        loop_for(model, ws).generate(ids[:2], mask[:2], GenerationParams(3, (), 0))
    assert [t.data_ptr() for t in ws.k] == ptrs
    assert ws.k[0].shape == (3, 1, 6 + 5, 8)  # (batch, kv heads, prompt + new, head dim): GQA keeps 1 kv head
    ws.release()
    assert ws.nbytes == 0


def test_kernel_references():
    x = torch.randn(3, 16)
    w = torch.randn(16)
    torch.testing.assert_close(rms_norm_ref(x, w, 1e-6), w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))
    b = torch.randn(16)
    torch.testing.assert_close(bias_act_ref(x, b, "silu"), (x + b) * torch.sigmoid(x + b))
    # rotary by an angle theta on the pair (x_i, x_{i+d/2}) is a plane rotation
    q = torch.randn(1, 1, 1, 4)
    theta = torch.tensor([0.3, 1.1])
    cos, sin = torch.cat([theta.cos()] * 2), torch.cat([theta.sin()] * 2)
    rq, _ = rotary_ref(q, q, cos, sin, 4)
    x1, x2 = q[..., :2], q[..., 2:]
    torch.testing.assert_close(rq, torch.cat([x1 * theta.cos() - x2 * theta.sin(),
                                              x2 * theta.cos() + x1 * theta.sin()], -1))
