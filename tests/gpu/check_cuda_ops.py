"""JIT-build one CUDA op through its builder and check it against its torch reference.

Run by tests/gpu/run.sh on a GPU machine, once per op and in its own
process (so a hung build or a crashed kernel cannot hide the other ops'
results). The last stdout line is the verdict:

    <op>: OK max_rel_err=<float> <details>
    <op>: FAIL <reason>

Usage: ``python tests/gpu/check_cuda_ops.py --op fused_adam`` or ``--list``.
Needs only torch and this repository: when the package is not installed,
``op_builder/`` and ``accelerator/`` are mapped onto their installed names.
"""
import argparse
import importlib
import importlib.util
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Tuple

import torch

REPO = Path(__file__).resolve().parents[2]


def _load_package(name: str, folder: Path) -> None:
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)


def bootstrap() -> None:
    """Make ``deepspeed.ops.op_builder`` importable from a plain checkout."""
    try:
        importlib.import_module("deepspeed.ops.op_builder")
        return
    except ImportError:
        pass
    sys.path.insert(0, str(REPO))
    for key in [k for k in sys.modules if k == "deepspeed" or k.startswith("deepspeed.")]:
        del sys.modules[key]
    importlib.import_module("deepspeed.ops")
    _load_package("deepspeed.accelerator", REPO / "accelerator")
    _load_package("deepspeed.ops.op_builder", REPO / "op_builder")


def import_face(module: str, relative_file: str) -> ModuleType:
    """Import a Python face; if its package __init__ needs something this
    machine lacks, load just that file (it only needs torch and op_builder)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        spec = importlib.util.spec_from_file_location(module, REPO / relative_file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod
        spec.loader.exec_module(mod)
        return mod


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e| (0 when both are all zeros)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item()
    return diff / scale if scale > 0 else diff


# ----------------------------------------------------------------------------- fused_adam


class _SimulatedFusedAdam:
    """Stand-in for the fused_adam module (--simulate): the CPU reference path."""

    def __init__(self, face: ModuleType) -> None:
        self.face = face

    def multi_tensor_adam(self, chunk_size, noop, lists, lr, beta1, beta2, eps, step, mode, bias_correction, wd):
        if int(noop.item()) == 0:
            g, p, m, v = lists
            self.face.foreach_adam_step(p, g, m, v, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                        weight_decay=wd, adam_w_mode=bool(mode), bias_correction=bool(bias_correction))


def check_fused_adam(simulate: bool = False) -> Tuple[float, str]:
    from deepspeed.ops.op_builder import FusedAdamBuilder

    face = import_face("deepspeed.ops.adam.fused_adam", "deepspeed/ops/adam/fused_adam.py")
    t0 = time.time()
    op = _SimulatedFusedAdam(face) if simulate else FusedAdamBuilder().jit_load(verbose=False)
    build_s = time.time() - t0
    dev = torch.device("cpu" if simulate else "cuda")
    # Odd sizes, a multi-chunk tensor, >36 tensors (several launches) and one
    # tensor of >320 chunks (a launch that is full of blocks mid-tensor).
    sizes = [1, 7, 1023, 4096, 2 * 65536 + 17, 3] + [5] * 40 + [65536 * 330 + 9]
    tolerances = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
    configs = [(torch.float32, torch.float32), (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
               (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]
    worst: Dict[str, float] = {}
    cases = 0
    for pdt, sdt in configs:
        for mode in (1, 0):
            gen = torch.Generator(device=dev).manual_seed(cases)
            params = [torch.randn(n, device=dev, generator=gen).to(pdt) for n in sizes]
            exp_avgs = [torch.zeros(n, device=dev, dtype=sdt) for n in sizes]
            exp_avg_sqs = [torch.zeros(n, device=dev, dtype=sdt) for n in sizes]
            ref_p = [p.clone() for p in params]
            ref_m = [m.clone() for m in exp_avgs]
            ref_v = [v.clone() for v in exp_avg_sqs]
            noop = torch.zeros(1, dtype=torch.int32, device=dev)
            for step in range(1, 4):
                grads = [torch.randn(n, device=dev, generator=gen).to(pdt) for n in sizes]
                op.multi_tensor_adam(65536, noop, [grads, params, exp_avgs, exp_avg_sqs], 1e-2, 0.9, 0.999, 1e-8,
                                     step, mode, 1, 0.1)
                face.foreach_adam_step(ref_p, grads, ref_m, ref_v, step=step, lr=1e-2, beta1=0.9, beta2=0.999,
                                       eps=1e-8, weight_decay=0.1, adam_w_mode=bool(mode), bias_correction=True)
            _sync(dev)
            err = max(rel_err(a, b) for a, b in zip(params + exp_avgs, ref_p + ref_m))
            if err > tolerances[pdt]:
                raise AssertionError(f"param {pdt} / state {sdt} mode {mode}: max_rel_err={err:.3e} "
                                     f"> {tolerances[pdt]:.1e}")
            key = str(pdt).replace("torch.", "")
            worst[key] = max(worst.get(key, 0.0), err)
            cases += 1

    # The noop flag must suppress every write.
    p = torch.randn(1000, device=dev)
    before = p.clone()
    flag = torch.ones(1, dtype=torch.int32, device=dev)
    op.multi_tensor_adam(65536, flag, [[torch.randn_like(p)], [p], [torch.zeros_like(p)], [torch.zeros_like(p)]],
                         1e-2, 0.9, 0.999, 1e-8, 1, 1, 1, 0.0)
    _sync(dev)
    if not torch.equal(p, before):
        raise AssertionError("noop_flag=1 still modified the parameters")

    # The optimizer class end to end against torch.optim.AdamW on the GPU.
    base = [torch.randn(n, device=dev) for n in (1, 7, 1023, 4096, 100_003)]
    ours = [torch.nn.Parameter(t.clone()) for t in base]
    theirs = [torch.nn.Parameter(t.clone()) for t in base]
    opt = face.FusedAdam(ours, lr=1e-2, weight_decay=0.1)
    ref = torch.optim.AdamW(theirs, lr=1e-2, weight_decay=0.1, foreach=False)
    for _ in range(10):
        for a, b in zip(ours, theirs):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    class_err = max(rel_err(a, b) for a, b in zip(ours, theirs))
    if class_err > 1e-5:
        raise AssertionError(f"FusedAdam vs torch.optim.AdamW on CUDA: max_rel_err={class_err:.3e}")
    per_dtype = ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
    return max(worst["float32"], class_err), (f"(fp32 kernel and FusedAdam vs AdamW; {cases} kernel cases: "
                                              f"{per_dtype}; noop ok; build {build_s:.0f}s)")


# ----------------------------------------------------------------------------- quantizer


class _SimulatedQuantizer:
    """Stand-in for the quantizer module (--simulate): the torch reference."""

    def __init__(self, ref: ModuleType) -> None:
        self.ref = ref

    def quantize(self, x, groups, bits):
        try:
            return self.ref.quantize_reference(x, groups, bits)
        except ValueError as err:
            raise RuntimeError(str(err)) from err

    def dequantize(self, q, scales, groups, out_dtype):
        return self.ref.dequantize_reference(q, scales, groups, out_dtype)


def check_quantizer(simulate: bool = False) -> Tuple[float, str]:
    from deepspeed.ops.op_builder import QuantizerBuilder

    ref = import_face("deepspeed.ops.quantizer.reference", "deepspeed/ops/quantizer/reference.py")
    t0 = time.time()
    op = _SimulatedQuantizer(ref) if simulate else QuantizerBuilder().jit_load(verbose=False)
    build_s = time.time() - t0
    print(f"quantizer built in {build_s:.0f}s", file=sys.stderr, flush=True)
    dev = torch.device("cpu" if simulate else "cuda")
    dtypes = [torch.float32, torch.float16, torch.bfloat16]
    # (numel, groups, bits): single group, odd group counts, more groups than
    # the kernel's grid (grid-stride over groups), a dequantize grid-stride.
    shapes = [(4096, 1, 8), (3 * 1024, 3, 8), (64 * 100, 64, 8), (8, 8, 8), (1 << 20, 1, 8),
              (((1 << 20) + 8) * 2, (1 << 20) + 8, 8), (1 << 25, 4096, 8), (6 * 512, 6, 4)]
    worst, cases = 0.0, 0
    for dtype in dtypes:
        for numel, groups, bits in shapes:
            gen = torch.Generator().manual_seed(cases)
            x = (torch.randn(numel, generator=gen) * 10).to(dtype)
            x[:numel // groups] = 0  # an all-zero group
            print(f"quantizer case {cases}: {dtype} numel={numel} groups={groups} bits={bits}", file=sys.stderr,
                  flush=True)  # progress, so that a crash log shows the case
            q_ref, s_ref = ref.quantize_reference(x, groups, bits)
            q, s = op.quantize(x.to(dev), groups, bits)
            if not torch.equal(q.cpu(), q_ref):
                bad = int((q.cpu() != q_ref).sum())
                raise AssertionError(f"{dtype} numel={numel} groups={groups}: {bad} q values differ")
            if not torch.equal(s.cpu(), s_ref):
                raise AssertionError(f"{dtype} numel={numel} groups={groups}: scales differ "
                                     f"(max_rel_err={rel_err(s, s_ref):.3e})")
            for out_dtype in dtypes:
                out = op.dequantize(q, s, groups, out_dtype)
                expected = ref.dequantize_reference(q_ref, s_ref, groups, out_dtype)
                err = rel_err(out, expected)
                worst = max(worst, err)
                if not torch.equal(out.cpu(), expected):
                    raise AssertionError(f"dequantize {dtype}->{out_dtype} numel={numel} groups={groups}: "
                                         f"not bit-exact, max_rel_err={err:.3e}")
            cases += 1
    try:
        op.quantize(torch.randn(10, device=dev), 3, 8)
    except RuntimeError as err:
        if "not divisible" not in str(err):
            raise AssertionError(f"unexpected error text for a non-divisible size: {err}") from err
    else:
        raise AssertionError("a size not divisible by groups was accepted")
    return worst, f"({cases} cases, q/scales/dequantize bit-exact vs reference; build {build_s:.0f}s)"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def check_transformer_inference(simulate: bool = False) -> Tuple[float, str]:
    """The decode-path kernels (norms, rotary, bias+activation) against deepspeed/inference/kernels.py."""
    if simulate:
        raise AssertionError("transformer_inference has no simulated mode (its references are the CPU path)")
    face = import_face("deepspeed.ops.transformer.inference.gpu_check", "deepspeed/ops/transformer/inference/gpu_check.py")
    start = time.time()
    worst = face.check_kernels()
    return worst, f"(rms_norm, layer_norm, 4 bias+activations, rotary in fp32/fp16/bf16; {time.time() - start:.0f}s)"


CHECKS: Dict[str, Callable[[bool], Tuple[float, str]]] = {"fused_adam": check_fused_adam, "quantizer": check_quantizer,
                                                          "transformer_inference": check_transformer_inference}


def cuda_op_names() -> List[str]:
    """Every CUDA op the package registers, checked or not."""
    from deepspeed.ops.op_builder import ALL_OPS, CUDAOpBuilder

    return sorted(name for name, cls in ALL_OPS.items() if issubclass(cls, CUDAOpBuilder))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--op", help="op name (see --list)")
    group.add_argument("--list", action="store_true", help="print the CUDA op names, one per line")
    parser.add_argument("--simulate", action="store_true",
                        help="run the harness on the CPU with the torch references standing in for the ops "
                        "(checks the harness itself on a machine without a GPU)")
    args = parser.parse_args()
    try:
        bootstrap()
        if args.list:
            print("\n".join(sorted(set(cuda_op_names()) | set(CHECKS))))
            return 0
        if args.op not in CHECKS:
            print(f"{args.op}: FAIL no GPU check written for this op (add one to tests/gpu/check_cuda_ops.py)")
            return 1
        if not args.simulate and not torch.cuda.is_available():
            print(f"{args.op}: FAIL no CUDA GPU visible to torch {torch.__version__}")
            return 1
        err, details = CHECKS[args.op](args.simulate)
    except Exception as exc:  # the verdict line must come out whatever broke
        traceback.print_exc()
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())
        print(f"{args.op or 'list'}: FAIL {reason[:400]}")
        return 1
    print(f"{args.op}: OK max_rel_err={err:.3e} {details}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
