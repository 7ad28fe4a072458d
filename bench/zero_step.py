"""ZeRO stage 0/1/2 step time and model-state memory vs. torch DDP, on 2 CPU ranks.

Run: python bench/zero_step.py [--steps 10] [--world 2]

Model: an OPT-like decoder (hidden 256, 4 layers, vocab 8192, seq 128,
micro batch 4), fp32, AdamW. Prints one JSON line per figure. Step time is
the median over timed steps of forward+backward+step; every engine runs in
the same processes, interleaved round by round, so they see the same machine.
Optimizer-state bytes are counted from the tensors each rank holds and are
compared with the ZeRO formula for fp32 training with Adam (K = 12 bytes per
parameter of master weights + momentum + variance; the master copy is the
parameter itself without ZeRO, so DDP/stage 0 hold 8 bytes per parameter).
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

HIDDEN, LAYERS, VOCAB, SEQ, MICRO = 256, 4, 8192, 128, 4


def build_model():
    from transformers import OPTConfig, OPTForCausalLM
    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, ffn_dim=4 * HIDDEN,
                    num_attention_heads=4, max_position_embeddings=SEQ + 2, word_embed_proj_dim=HIDDEN,
                    dropout=0.0, attention_dropout=0.0)
    return OPTForCausalLM(cfg)


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def optimizer_state_bytes(opt) -> int:
    inner = getattr(opt, "optimizer", opt)
    state = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    masters = list(getattr(opt, "master_partitions", []))
    return tensor_bytes(state + masters)


def make_engine(kind: str):
    model = build_model()
    if kind == "ddp":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=1e-4, weight_decay=0.0)
        return ddp, opt
    import deepspeed
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_clipping": 0.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.0}},
              "zero_optimization": {"stage": int(kind[-1])}}
    engine, opt, _, _ = deepspeed.initialize(model=model, config=config)
    return engine, opt


def one_step(kind, engine, opt, batch) -> float:
    start = time.perf_counter()
    loss = engine(input_ids=batch, labels=batch).loss
    if kind == "ddp":
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    else:
        engine.backward(loss)
        engine.step()
    return time.perf_counter() - start


def worker(rank: int, world: int, port: int, steps: int, queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")
    kinds = ["ddp", "stage0", "stage1", "stage2"]
    engines = {k: make_engine(k) for k in kinds}
    n_params = sum(p.numel() for p in engines["ddp"][0].module.parameters())
    gen = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, VOCAB, (MICRO, SEQ), generator=gen) for _ in range(steps + 2)]
    times = {k: [] for k in kinds}
    for i, batch in enumerate(batches):
        for k in kinds:
            tdist.barrier()
            t = one_step(k, *engines[k], batch)
            if i >= 2:  # warm-up
                times[k].append(t)
    if rank == 0:
        ddp_time = statistics.median(times["ddp"])
        for k in kinds:
            med = statistics.median(times[k])
            queue.put({"bench": "zero_step", "engine": k, "metric": "step_time_s", "value": round(med, 4),
                       "vs_ddp": round(med / ddp_time, 3), "world": world, "params": n_params})
        for k in kinds:
            got = optimizer_state_bytes(engines[k][1])
            per_param = 8 if k in ("ddp", "stage0") else 12 / world
            formula = per_param * n_params
            queue.put({"bench": "zero_step", "engine": k, "metric": "optimizer_state_bytes_per_rank",
                       "value": got, "formula": int(formula), "ratio": round(got / formula, 4)})
    tdist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--port", type=int, default=29533)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args.world, args.port, args.steps, queue), nprocs=args.world,
                       start_method="spawn")
    while not queue.empty():
        print(json.dumps(queue.get()), flush=True)


if __name__ == "__main__":
    main()
