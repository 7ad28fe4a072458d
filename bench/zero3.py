"""ZeRO stage 3 vs. stage 2 vs. torch DDP: step time, model-state memory and bytes sent, on 2 CPU ranks.

Run: python bench/zero3.py [--steps 10] [--world 2]

Model and data are bench/zero_step.py's (OPT-like, hidden 256, 4 layers,
vocab 8192, seq 128, micro batch 4, fp32, AdamW); the three engines run in
the same processes, interleaved step by step. One JSON line per figure.

Model-state bytes per rank (Psi = parameter count, N = ranks) are counted
from the tensors each rank holds between steps: parameters (stage 3: the
shards plus the full copies of persistent parameters), gradients (the fp32
master gradient; DDP: the full .grad), fp32 master weights and Adam moments.
The ZeRO paper's mixed-precision formula is (2 + 2 + 12) Psi / N = 16 Psi / N
(16-bit params and grads, fp32 master + momentum + variance). Here training
is fp32, and for fp32 models the stage-3 parameter shards are views into the
fp32 master (one copy), so the matching formula is (4 + 4 + 8) Psi / N =
16 Psi / N as well, plus the persistent parameters' full copies,
4 Psi_persist bytes. Tensors are counted by unique storage, so views into
one buffer are counted once.

Bytes sent per step are taken from `deepspeed.comm.log_summary()` diffs,
measured in full-tensor bytes as the ZeRO paper counts volume: an
all-gather moves its output, a reduce-scatter its input (= N x the output
that the counter records). DDP's bucket all-reduces are counted through a
comm hook and weighted 2x (an all-reduce is a reduce-scatter plus an
all-gather). Paper: DDP 2 Psi, stage 2 2 Psi, stage 3 3 Psi (x 4 bytes).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from zero_step import MICRO, SEQ, VOCAB, build_model, tensor_bytes  # noqa: E402

#: 1-D parameters (biases, LayerNorms: <= 1024 elements) stay whole; every matrix is partitioned.
PERSISTENCE_THRESHOLD = 2048
ZERO3 = {
    "stage": 3,
    "stage3_param_persistence_threshold": PERSISTENCE_THRESHOLD,
    # Prefetch about one decoder layer (786k elements) ahead.
    "stage3_prefetch_bucket_size": 800_000,
    "stage3_max_live_parameters": 100_000_000,
    # 0: release after every use, as the paper's 3 Psi assumes (the default, 1e9,
    # would keep this small model gathered from forward to backward).
    "stage3_max_reuse_distance": 0,
    "reduce_bucket_size": 1_000_000,
}


class _AllReduceCounter:
    """DDP comm hook state: bytes of every bucket all-reduced."""

    def __init__(self) -> None:
        self.bytes = 0


def _counting_allreduce(state: _AllReduceCounter, bucket):
    buf = bucket.buffer()
    state.bytes += buf.numel() * buf.element_size()
    world = tdist.get_world_size()
    return tdist.all_reduce(buf.div_(world), async_op=True).get_future().then(lambda fut: fut.value()[0])


def make_engine(kind: str):
    model = build_model()
    if kind == "ddp":
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        counter = _AllReduceCounter()
        ddp.register_comm_hook(counter, _counting_allreduce)
        return ddp, torch.optim.AdamW(ddp.parameters(), lr=1e-4, weight_decay=0.0), counter
    import deepspeed
    zero = ZERO3 if kind == "stage3" else {"stage": 2, "reduce_bucket_size": 1_000_000}
    config = {"train_micro_batch_size_per_gpu": MICRO, "gradient_clipping": 0.0,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.0}},
              "zero_optimization": zero}
    engine, opt, _, _ = deepspeed.initialize(model=model, config=config)
    return engine, opt, None


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


def model_state_bytes(kind: str, engine, opt) -> int:
    module = engine.module
    params = []
    for p in module.parameters():
        if hasattr(p, "ds_tensor"):
            params.append(p.ds_tensor)
        if p.numel() > 0:  # full value held (everything but partitioned stage-3 params)
            params.append(p.data)
    inner = getattr(opt, "optimizer", opt)
    adam = [v for s in inner.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    masters = list(getattr(opt, "master_partitions", []))
    grads = [m.grad for m in masters] if masters else [p.grad for p in module.parameters()]
    return storage_bytes(params + grads + masters + adam)


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one buffer count once)."""
    seen = {}
    for t in tensors:
        if t is not None and t.numel() > 0:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def comm_volume(before, after, world: int) -> int:
    def delta(op: str) -> int:
        return after.get(op, {}).get("bytes", 0) - before.get(op, {}).get("bytes", 0)
    return (delta("all_gather_into_tensor") + world * delta("reduce_scatter_tensor")
            + 2 * delta("all_reduce"))


def worker(rank: int, world: int, port: int, steps: int, queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import deepspeed
    from deepspeed import comm as dist
    deepspeed.init_distributed(dist_backend="gloo")
    kinds = ["ddp", "stage2", "stage3"]
    engines = {k: make_engine(k) for k in kinds}
    n_params = sum(p.numel() for p in engines["ddp"][0].module.parameters())
    persist = sum(p.ds_numel for p in engines["stage3"][0].module.parameters() if p.ds_persist)
    gen = torch.Generator().manual_seed(rank)
    batches = [torch.randint(0, VOCAB, (MICRO, SEQ), generator=gen) for _ in range(steps + 2)]
    times = {k: [] for k in kinds}
    volume = {k: [] for k in kinds}
    for i, batch in enumerate(batches):
        for k in kinds:
            engine, opt, counter = engines[k]
            tdist.barrier()
            before, ddp_before = dist.log_summary(), counter.bytes if counter else 0
            t = one_step(k, engine, opt, batch)
            sent = 2 * (counter.bytes - ddp_before) if counter else comm_volume(before, dist.log_summary(), world)
            if i >= 2:  # warm-up (stage 3 records its trace in step 0)
                times[k].append(t)
                volume[k].append(sent)
    memory = {k: model_state_bytes(k, engines[k][0], engines[k][1]) for k in kinds}
    if rank == 0:
        stage2 = statistics.median(times["stage2"])
        ddp = statistics.median(times["ddp"])
        for k in kinds:
            med = statistics.median(times[k])
            queue.put({"bench": "zero3", "engine": k, "metric": "step_time_s", "value": round(med, 4),
                       "vs_stage2": round(med / stage2, 3), "vs_ddp": round(med / ddp, 3), "world": world,
                       "params": n_params, "target_vs_stage2": 1.3 if k == "stage3" else None})
        paper = {"ddp": 2, "stage2": 2, "stage3": 3}
        for k in kinds:
            got = statistics.median(volume[k])
            formula = paper[k] * n_params * 4
            queue.put({"bench": "zero3", "engine": k, "metric": "bytes_sent_per_step", "value": got,
                       "formula": formula, "formula_text": f"{paper[k]}*Psi*4", "ratio": round(got / formula, 4),
                       "vs_ddp": round(got / statistics.median(volume["ddp"]), 4)})
        # Between steps DDP's .grad was freed by zero_grad(set_to_none=True): params + Adam only.
        formulas = {"ddp": 12 * n_params, "stage2": 4 * n_params + 16 * n_params / world,
                    "stage3": 16 * n_params / world + 4 * persist}
        texts = {"ddp": "(4+8)*Psi", "stage2": "4*Psi + (4+4+8)*Psi/N",
                 "stage3": "(4+4+8)*Psi/N + 4*Psi_persist"}
        for k in kinds:
            queue.put({"bench": "zero3", "engine": k, "metric": "model_state_bytes_per_rank", "value": memory[k],
                       "formula": int(formulas[k]), "formula_text": texts[k],
                       "ratio": round(memory[k] / formulas[k], 4),
                       "mixed_precision_16psi_over_n": int(16 * n_params / world), "persistent_params": persist})
    tdist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--port", type=int, default=29541)
    args = parser.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(worker, args=(args.world, args.port, args.steps, queue), nprocs=args.world,
                       start_method="spawn")
    while not queue.empty():
        print(json.dumps(queue.get()), flush=True)


if __name__ == "__main__":
    main()
