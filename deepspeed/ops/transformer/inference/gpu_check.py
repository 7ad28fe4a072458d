"""GPU check of the transformer_inference op, and the 1.3B OPT decode timing (run by tests/gpu/run.sh).

`python -m deepspeed.ops.transformer.inference.gpu_check` builds the op,
compares each kernel with its torch reference in fp32/fp16/bf16 and prints
``transformer_inference: OK max_rel_err=...`` (or FAIL). With ``--bench``
it also times, on an OPT-1.3B config in fp16 with random weights (batch 8,
prompt 64, 64 new tokens), (a) the Hybrid Engine decode path against (c) HF
generate, and reports the fraction of the memory-bandwidth bound reached per
decode step: each step must read every weight and the KV cache once, so
bound = bytes / measured copy bandwidth of the device.
"""
import argparse
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


def bench_opt_1p3b(new_tokens: int = 64) -> dict:
    from transformers import OPTConfig, OPTForCausalLM

    from deepspeed.inference.containers import find_policy
    from deepspeed.inference.decode import DecodeLoop, GenerationParams, KVWorkspace, StaticLayers
    cfg = OPTConfig(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, vocab_size=50272,
                    max_position_embeddings=2048, pad_token_id=1, eos_token_id=2, bos_token_id=2)
    model = OPTForCausalLM(cfg).half().cuda().eval()
    model.generation_config.eos_token_id = None
    ids = torch.randint(3, cfg.vocab_size, (8, 64), device="cuda")
    mask = torch.ones_like(ids)
    policy = find_policy(model)
    ws = KVWorkspace()

    def timed(fn) -> float:
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t

    with torch.no_grad():
        hf_s = timed(lambda: model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False))
        loop = DecodeLoop(policy, StaticLayers([policy.layer_view(l) for l in policy.layers]), ws)
        he_s = timed(lambda: loop.generate(ids, mask, GenerationParams(new_tokens, (), 1)))
        prefill_s = timed(lambda: loop.generate(ids, mask, GenerationParams(1, (), 1)))
    step_s = (he_s - prefill_s) / max(new_tokens - 1, 1)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_bytes = 2 * cfg.num_hidden_layers * 8 * (64 + new_tokens // 2) * cfg.hidden_size * 2
    buf = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    copy_s = timed(lambda: buf.clone())
    bandwidth = 2 * buf.numel() / copy_s  # read + write
    return {"bench": "hybrid_engine_gpu", "model": "opt-1.3b-config", "dtype": "fp16", "he_tokens_per_s":
            round(8 * new_tokens / he_s, 1), "hf_tokens_per_s": round(8 * new_tokens / hf_s, 1),
            "he_vs_hf": round(hf_s / he_s, 2), "decode_step_ms": round(1000 * step_s, 3),
            "bandwidth_bound_ms": round(1000 * (weight_bytes + kv_bytes) / bandwidth, 3),
            "fraction_of_bandwidth_bound": round((weight_bytes + kv_bytes) / bandwidth / step_s, 3),
            "device": torch.cuda.get_device_name()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", action="store_true")
    args = parser.parse_args()
    try:
        err = check_kernels()
        print(f"transformer_inference: OK max_rel_err={err:.3g}", flush=True)
    except Exception as exc:  # the verdict line must come out whatever failed
        print(f"transformer_inference: FAIL {type(exc).__name__}: {exc}", flush=True)
        return 1
    if args.bench:
        print(json.dumps(bench_opt_1p3b()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
