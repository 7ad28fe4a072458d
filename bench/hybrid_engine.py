"""Hybrid Engine generation throughput vs. plain ZeRO-3 `module.generate` vs. HF generate, on 2 CPU ranks.

Run: python bench/hybrid_engine.py [--families opt,llama] [--threads 1] [--new-tokens 64]

Model (random weights, fp32): hidden 512, 8 layers, 8 heads (4 kv heads
for the Llama run), vocab 8192; batch 8 per rank, prompt 64, 64 new tokens
(EOS disabled so every call generates exactly that many). One JSON line per
engine and family:

* (a) `he_zero3`: DeepSpeedHybridEngine under ZeRO-3 (pinned, TP 1), and
  `he_zero3_tp2`: the same with `inference_tp_size: 2`,
* (b) `zero3_module_generate`: a ZeRO-3 DeepSpeedEngine without HE calling
  `engine.module.generate` (per-module gathers on every token),
* (c) `hf_generate`: HF generate on an unsharded copy, in one process with
  the same number of torch threads as one rank, after the ranks exited.

tokens/s is per rank (batch 8 x new tokens / wall time of one call, median
of `--repeats` calls), so (a) and (b) compare with (c) like for like;
`tokens_per_s_all_ranks` adds both ranks. Targets: (a) >= 10x (b) and
(a) >= 1.5x (c). The HE lines also give the engine's own split of a call
(median `gather_s`: the ZeRO-3 gather of the layers, and `generate_s`: the
decode loop), from its latency records.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB = 512, 8, 8, 4, 8192
BATCH, PROMPT = 8, 64


def build_model(family: str, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM
    torch.manual_seed(seed)
    if family == "opt":
        cfg = OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=4 * HIDDEN,
                        num_attention_heads=HEADS, max_position_embeddings=512, dropout=0.0, pad_token_id=1,
                        bos_token_id=2, eos_token_id=2)
        model = OPTForCausalLM(cfg)
    else:
        cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=1408, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=512,
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = None  # always generate the full length
    return model.eval()


def prompts(rank: int, pad: int):
    g = torch.Generator().manual_seed(1000 + rank)
    ids = torch.randint(3, VOCAB, (BATCH, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    # uneven, left-padded prompts as in RLHF step 3
    for i in range(BATCH):
        n = (i * 5) % 17
        ids[i, :n] = pad
        mask[i, :n] = 0
    return ids, mask


def config(hybrid: bool, tp: int = 1) -> dict:
    return {"train_micro_batch_size_per_gpu": BATCH, "gradient_clipping": 0.0,
            "optimizer": {"type": "AdamW", "params": {"lr": 1e-5}},
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10_000},
            "hybrid_engine": {"enabled": hybrid, "inference_tp_size": tp, "max_out_tokens": PROMPT + 64}}


def time_calls(fn, repeats: int) -> float:
    fn()  # warm-up (allocations, the KV cache)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def worker(rank: int, world: int, port: int, args, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    import deepspeed
    for family in args.families.split(","):
        pad = 1 if family == "opt" else 0
        ids, mask = prompts(rank, pad)
        runs = [("he_zero3", True, 1), ("he_zero3_tp2", True, 2), ("zero3_module_generate", False, 1)]
        for name, hybrid, tp in runs:
            engine, *_ = deepspeed.initialize(model=build_model(family), config=config(hybrid, tp))
            engine.eval()
            new = args.new_tokens if hybrid else args.baseline_new_tokens
            repeats = args.repeats if hybrid else 1

            def call():
                with torch.no_grad():
                    out = engine.module.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                                 pad_token_id=pad, synced_gpus=True)
                assert out.shape[1] == PROMPT + new, out.shape
            seconds = time_calls(call, repeats)
            row = {"family": family, "engine": name, "rank": rank, "seconds": seconds, "new_tokens": new}
            if hybrid:  # the engine's own split of a call (its latency line), medians of the timed calls
                stats = list(engine.he_stats)[-repeats:]
                row["gather_s"] = statistics.median(r["gather_latency_s"] for r in stats)
                row["generate_s"] = statistics.median(r["generate_time_s"] for r in stats)
            queue.put(row)
            del engine


def hf_reference(family: str, args) -> float:
    torch.set_num_threads(args.threads)
    model = build_model(family)
    pad = 1 if family == "opt" else 0
    ids, mask = prompts(0, pad)

    def call():
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                           pad_token_id=pad)
    return time_calls(call, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="opt,llama")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (and for HF generate)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--baseline-new-tokens", type=int, default=64,
                        help="new tokens for (b), which is slow; tokens/s is per token either way")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--port", type=int, default=29561)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args.world, args.port, args, queue), nprocs=args.world, start_method="spawn")
    rows = []
    while not queue.empty():
        rows.append(queue.get())
    for family in args.families.split(","):
        hf_s = hf_reference(family, args)
        hf_tps = BATCH * args.new_tokens / hf_s
        by_engine, split = {}, {}
        for name in ("he_zero3", "he_zero3_tp2", "zero3_module_generate"):
            mine = [r for r in rows if r["family"] == family and r["engine"] == name]
            slowest = max(mine, key=lambda r: r["seconds"])  # ranks finish together; the slowest is the wall time
            by_engine[name] = BATCH * mine[0]["new_tokens"] / slowest["seconds"]
            split[name] = {k: round(slowest[k], 3) for k in ("gather_s", "generate_s") if k in slowest}
        base = by_engine["zero3_module_generate"]
        for name, tps in by_engine.items():
            line = {"bench": "hybrid_engine", "family": family, "engine": name, "tokens_per_s": round(tps, 1),
                    "tokens_per_s_all_ranks": round(tps * args.world, 1), "threads_per_rank": args.threads,
                    "vs_zero3_module_generate": round(tps / base, 2), "vs_hf_generate": round(tps / hf_tps, 2),
                    **split[name]}
            if name.startswith("he_"):
                line.update(target_vs_zero3_module_generate=10.0, target_vs_hf_generate=1.5)
            print(json.dumps(line), flush=True)
        print(json.dumps({"bench": "hybrid_engine", "family": family, "engine": "hf_generate",
                          "tokens_per_s": round(hf_tps, 1), "threads": args.threads, "processes": 1}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
