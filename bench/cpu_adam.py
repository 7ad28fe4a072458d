"""DeepSpeedCPUAdam step throughput vs torch.optim.AdamW (foreach and fused) and a memory roofline.

Run: python bench/cpu_adam.py [--sizes 1e6,1e7,1e8] [--threads 1,2] [--reps 5]

What it measures, all in this one run and on this machine:
- the roofline: torch's in-place ``a.add_(b)`` over 1 GiB (two 512 MiB fp32
  tensors), counted as 12 bytes per element (read a and b, write a);
- one AdamW step (lr 1e-3, weight decay 0.01, fp32 params, grads and
  states) over N parameters held as one tensor or as 100 equal tensors, for
  DeepSpeedCPUAdam.step() (Python face included), torch.optim.AdamW with
  foreach=True and with fused=True, at each thread count
  (torch.set_num_threads, which the op follows).
An Adam step must read p, g, m, v and write p, m, v: 28 bytes per parameter,
so "effective GB/s" is 28 * N / time, comparable with the roofline's GB/s.
Each figure is the median over ``--reps`` timed steps after one warm-up;
the three optimizers run round-robin so they see the same machine state.

Going further: with bf16 gradients and a bf16 copy of the updated parameters
(what ZeRO-Offload ships back to the accelerator), the fused
``adam_update_copy`` moves 28 bytes per parameter (reads p4 g2 m4 v4, writes
p4 m4 v4 copy2), whereas casting the gradients up, stepping in fp32 and
casting the parameters down moves 40 (6 + 28 + 6). Both are timed.

Prints one JSON line per figure.
"""
import argparse
import gc
import json
import statistics
import time
from typing import Callable, Dict, List

import torch

from deepspeed.ops.adam import DeepSpeedCPUAdam
from deepspeed.ops.op_builder import CPUAdamBuilder

BYTES_PER_PARAM = 28  # read p, g, m, v; write p, m, v (fp32)
LR, WD = 1e-3, 0.01


def emit(**fields) -> None:
    print(json.dumps({"bench": "cpu_adam", **fields}), flush=True)


def median_time(fn: Callable[[], None], reps: int) -> float:
    fn()  # warm-up: first-touch page faults, state allocation
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def roofline(reps: int) -> float:
    """GB/s of an in-place add over 1 GiB of fp32 (12 bytes moved per element)."""
    n = 128 * 1024 * 1024  # 512 MiB per tensor
    a, b = torch.ones(n), torch.ones(n)
    seconds = median_time(lambda: a.add_(b), reps)
    return 12 * n / seconds / 1e9


def make_params(total: int, pieces: int) -> List[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    size = total // pieces
    params = []
    for _ in range(pieces):
        p = torch.nn.Parameter(torch.randn(size, generator=gen))
        p.grad = torch.randn(size, generator=gen)
        params.append(p)
    return params


def time_optimizers(total: int, pieces: int, reps: int) -> Dict[str, float]:
    """Median step seconds of each optimizer, measured round-robin."""
    builders = {
        "deepspeed_cpu_adam": lambda ps: DeepSpeedCPUAdam(ps, lr=LR, weight_decay=WD),
        "torch_adamw_fused": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, fused=True),
        "torch_adamw_foreach": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=WD, foreach=True),
    }
    opts = {}
    for name, build in builders.items():
        opt = build(make_params(total, pieces))
        opt.step()  # warm-up: allocates and touches the states
        opts[name] = opt
    times: Dict[str, List[float]] = {name: [] for name in opts}
    for _ in range(reps):
        for name, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fused_copy_vs_cast(total: int, reps: int) -> None:
    """bf16 grads in, bf16 param copy out: one fused pass vs cast + fp32 step + cast."""
    op = CPUAdamBuilder().load()
    op.create_adam(0, LR, 0.9, 0.999, 1e-8, WD, True, False)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(total, generator=gen)
    g16 = torch.randn(total, generator=gen).bfloat16()
    m, v = torch.zeros(total), torch.zeros(total)
    copy16 = torch.empty(total, dtype=torch.bfloat16)
    g32 = torch.empty(total)
    step = [0]

    def fused() -> None:
        step[0] += 1
        op.adam_update_copy(0, step[0], LR, 0.9, 0.999, 1e-8, WD, True, p, g16, m, v, copy16)

    def separate() -> None:
        step[0] += 1
        g32.copy_(g16)
        op.adam_update(0, step[0], LR, 0.9, 0.999, 1e-8, WD, True, p, g32, m, v)
        copy16.copy_(p)

    for name, fn, nbytes in (("fused_bf16_grads_and_copy", fused, 28), ("cast_then_step_then_cast", separate, 40)):
        seconds = median_time(fn, reps)
        emit(figure="bf16_grads_bf16_copy", impl=name, params=total, threads=torch.get_num_threads(),
             bytes_per_param=nbytes, ns_per_param=seconds / total * 1e9, gb_s=nbytes * total / seconds / 1e9)
    op.destroy_adam(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7,1e8", help="comma-separated parameter counts")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--pieces", default="1,100", help="comma-separated tensor counts per size")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    pieces_list = [int(p) for p in args.pieces.split(",")]
    simd = CPUAdamBuilder().load().simd_width()
    emit(figure="setup", torch=torch.__version__, simd_width=simd, bytes_per_param=BYTES_PER_PARAM)

    for nthreads in threads:
        torch.set_num_threads(nthreads)
        roof = roofline(args.reps)
        emit(figure="roofline", threads=nthreads, op="a.add_(b) over 1 GiB", gb_s=roof)
        for total in sizes:
            for pieces in pieces_list:
                times = time_optimizers(total, pieces, args.reps)
                gc.collect()
                fused = times["torch_adamw_fused"]
                for name, seconds in times.items():
                    gb_s = BYTES_PER_PARAM * total / seconds / 1e9
                    emit(figure="adamw_step", impl=name, params=total, tensors=pieces, threads=nthreads,
                         ns_per_param=seconds / total * 1e9, gb_s=gb_s, speedup_vs_torch_fused=fused / seconds,
                         fraction_of_roofline=gb_s / roof)
        fused_copy_vs_cast(max(sizes), args.reps)


if __name__ == "__main__":
    main()
