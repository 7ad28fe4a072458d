"""GPU check of the transformer_inference op, and the 1.3B OPT decode timing (run by tests/gpu/run.sh).

`python -m deepspeed.ops.transformer.inference.gpu_check` builds the op,
compares each kernel with its torch reference in fp32/fp16/bf16 and prints
``transformer_inference: OK max_rel_err=...`` (or FAIL). With ``--bench``
it also times, on OPT-1.3B and TinyLlama-1.1B (GQA) configs in fp16 with
random weights (batch 8, prompt 64, 64 new tokens), (a) the Hybrid Engine
decode path (CUDA kernels, eager and CUDA-graph steps) against (c) HF
generate, checks that every generated token is HF's argmax given the same
prefix, and reports the fraction of the memory-bandwidth bound reached per
graph decode step: each step must read every weight and the KV cache once,
so bound = bytes / measured copy bandwidth of the device.
"""
import argparse
import functools
import json
import sys
import time

import torch

from deepspeed.inference.kernels import bias_act_ref, layer_norm_ref, rms_norm_ref, rotary_ref


def _rel(a: torch.Tensor, e: torch.Tensor) -> float:
    a, e = a.double(), e.double()
    scale = e.abs().max().item()
    return (a - e).abs().max().item() / (scale if scale > 0 else 1.0)


def check_kernels() -> float:
    from deepspeed.ops.op_builder import InferenceBuilder
    op = InferenceBuilder().load()
    worst = 0.0
    for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 4e-3), (torch.bfloat16, 3e-2)):
        x = torch.randn(6, 1000, device="cuda", dtype=dtype)
        w, b = torch.randn(1000, device="cuda", dtype=dtype), torch.randn(1000, device="cuda", dtype=dtype)
        errs = [_rel(op.rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6)),
                _rel(op.layer_norm(x, w, b, 1e-5), layer_norm_ref(x, w, b, 1e-5))]
        for code, name in enumerate(("relu", "gelu", "gelu_tanh", "silu")):
            errs.append(_rel(op.bias_activation(x, b, code), bias_act_ref(x, b, name)))
        q = torch.randn(2, 4, 5, 64, device="cuda", dtype=dtype)
        cos, sin = torch.randn(2, 5, 32, device="cuda", dtype=dtype), torch.randn(2, 5, 32, device="cuda", dtype=dtype)
        ref, _ = rotary_ref(q, q, cos.unsqueeze(1), sin.unsqueeze(1), 32)
        errs.append(_rel(op.rotary(q, cos, sin, 32), ref))
        if max(errs) > tol:
            raise AssertionError(f"{dtype}: relative errors {errs} exceed {tol}")
        worst = max(worst, max(errs))
    return worst


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _median_s(fn, repeats: int = 3, device: str = "cuda") -> float:
    fn()  # warm-up: kernel builds, cuBLAS handles, allocator
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def _model(family: str, device: str, smoke: bool) -> torch.nn.Module:
    """Random-weight models of the issue's size: OPT-1.3B's config, and TinyLlama-1.1B's (GQA 32/4), in fp16.

    `smoke`: 2-layer, 256-wide fp32 versions, to try the script on a CPU.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM
    width, layers = (256, 2) if smoke else (2048, None)
    if family == "opt":
        cfg = OPTConfig(hidden_size=width, num_hidden_layers=layers or 24, ffn_dim=4 * width, num_attention_heads=32,
                        vocab_size=50272, max_position_embeddings=2048, pad_token_id=1, eos_token_id=2,
                        bos_token_id=2, dropout=0.0)
        cls = OPTForCausalLM
    else:
        cfg = LlamaConfig(hidden_size=width, intermediate_size=11 * width // 4, num_hidden_layers=layers or 22,
                          num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                          max_position_embeddings=2048, pad_token_id=0, eos_token_id=2, bos_token_id=1)
        cls = LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = cls(cfg)
    with torch.no_grad():  # HF's init leaves random-weight logits nearly tied; make greedy choices decisive
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.05)
    model = (model if smoke else model.half()).eval()
    model.generation_config.eos_token_id = None  # time all 64 tokens
    return model


def bench_decode(family: str, batch: int = 8, prompt: int = 64, new_tokens: int = 64, smoke: bool = False) -> dict:
    """(a) the Hybrid Engine decode path (CUDA kernels; eager and CUDA-graph steps) vs (c) HF generate."""
    device = "cpu" if smoke else "cuda"
    timed = functools.partial(_median_s, device=device)
    from deepspeed.inference.containers import find_policy
    from deepspeed.inference.decode import DecodeLoop, GenerationParams, KVWorkspace, StaticLayers
    from deepspeed.inference.kernels import InferenceKernels
    model = _model(family, device, smoke)
    cfg = model.config
    pad = cfg.pad_token_id
    ids = torch.randint(3, cfg.vocab_size, (batch, prompt), device=device)
    mask = torch.ones_like(ids)
    mask[1, :prompt // 2] = 0  # one left-padded row
    ids[1, :prompt // 2] = pad
    policy = find_policy(model)
    kernels = InferenceKernels(None) if smoke else InferenceKernels.load()
    result = {"bench": "hybrid_engine_gpu", "model": f"{family}-{sum(p.numel() for p in model.parameters()) / 1e9:.2f}B",
              "dtype": "fp32" if smoke else "fp16", "batch": batch, "prompt": prompt, "new_tokens": new_tokens,
              "cuda_kernels": kernels.op is not None}
    with torch.no_grad():
        hf_s = timed(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                                pad_token_id=pad))
        views = StaticLayers([policy.layer_view(layer) for layer in policy.layers])
        ws = KVWorkspace()
        params = GenerationParams(new_tokens, (), pad)
        times, outs = {}, {}
        for name, fixed in (("eager", False), ("graph", True)):
            loop = DecodeLoop(policy, views, ws, kernels=kernels, fixed_shape_steps=fixed)
            times[name] = timed(lambda: outs.__setitem__(name, loop.generate(ids, mask, params)[0]))
        prefill_s = timed(lambda: DecodeLoop(policy, views, ws, kernels=kernels).generate(
            ids, mask, GenerationParams(1, (), pad)))
        # Teacher-forced agreement: is each generated token HF's argmax given the same prefix?
        out = outs["graph"]
        full = torch.cat([mask, torch.ones_like(out[:, prompt:])], dim=1)
        positions = (full.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=out, attention_mask=full, position_ids=positions).logits[:, prompt - 1:-1]
        agree = (logits.argmax(-1) == out[:, prompt:]).float().mean().item()
    step_s = (times["graph"] - prefill_s) / max(new_tokens - 1, 1)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_heads = getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    kv_width = kv_heads * (cfg.hidden_size // cfg.num_attention_heads)
    kv_bytes = 2 * cfg.num_hidden_layers * batch * (prompt + new_tokens // 2) * kv_width * 2  # mean length
    buf = torch.empty((8 if smoke else 512) * 2**20, dtype=torch.uint8, device=device)
    bandwidth = 2 * buf.numel() / timed(lambda: buf.clone(), 5)  # read + write
    bound_s = (weight_bytes + kv_bytes) / bandwidth
    tokens = batch * new_tokens
    result.update({"hf_tokens_per_s": round(tokens / hf_s, 1),
                   "he_eager_tokens_per_s": round(tokens / times["eager"], 1),
                   "he_graph_tokens_per_s": round(tokens / times["graph"], 1),
                   "he_eager_vs_hf": round(hf_s / times["eager"], 2), "he_graph_vs_hf": round(hf_s / times["graph"], 2),
                   "graph_equals_eager": bool(torch.equal(outs["graph"], outs["eager"])),
                   "hf_argmax_agreement": round(agree, 4), "decode_step_ms": round(1000 * step_s, 3),
                   "bandwidth_GBps": round(bandwidth / 1e9, 1), "bandwidth_bound_ms": round(1000 * bound_s, 3),
                   "fraction_of_bandwidth_bound": round(bound_s / step_s, 3), "device": "cpu" if smoke else torch.cuda.get_device_name()})
    # fp16 with random weights has near-tied logits: HF's separate q/k/v matmuls and our fused one round
    # differently (measured on an H200: OPT 0.998, Llama 0.979, with graph == eager bit for bit).
    if agree < 0.97:
        raise AssertionError(f"{family}: only {agree:.3f} of the generated tokens are HF's argmax: {result}")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="CPU try-out: the bench on tiny fp32 models, no kernels")
    args = parser.parse_args()
    if args.smoke:
        for family in ("opt", "llama"):
            print(json.dumps(bench_decode(family, batch=2, prompt=8, new_tokens=8, smoke=True)), flush=True)
        return 0
    try:
        err = check_kernels()
        print(f"transformer_inference: OK max_rel_err={err:.3g}", flush=True)
    except Exception as exc:  # the verdict line must come out whatever failed
        print(f"transformer_inference: FAIL {type(exc).__name__}: {exc}", flush=True)
        return 1
    failed = 0
    if args.bench:
        for family in ("opt", "llama"):
            try:
                print(json.dumps(bench_decode(family)), flush=True)
            except Exception as exc:
                print(f"transformer_inference: FAIL {family} decode: {type(exc).__name__}: {exc}", flush=True)
                failed = 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
