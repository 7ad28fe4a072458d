"""DeepSpeedCPUAdagrad and the cpu_adagrad op, scalar and SIMD builds.

Oracles: torch.optim.Adagrad (foreach=False) for fp32 parameters, and
cpu_adagrad_reference_step (the same fp32 maths with 16-bit rounding) for
16-bit parameters and states; the fused copy must equal a cast bit for bit.
"""
import copy
from typing import List, Optional

import pytest
import torch

from deepspeed.ops.adagrad import DeepSpeedCPUAdagrad, cpu_adagrad_reference_step
from deepspeed.ops.op_builder import CPUAdagradBuilder
from deepspeed.ops.op_builder.simd import SIMD_WIDTH, detect_simd

BUILDS = ["scalar", None]  # None: the SIMD level detected on this CPU
STEPS = 10
LR, WD = 1e-2, 0.1
RTOL, ATOL = 1e-6, 1e-7


def face(simd: Optional[str]) -> type:
    """DeepSpeedCPUAdagrad bound to one build, after checking that build compiles here."""
    builder = CPUAdagradBuilder(simd=simd)
    if not builder.is_compatible():
        pytest.skip(f"cpu_adagrad {builder.simd} build is not possible here: {builder.error_log}")
    builder.load()  # a compile error must fail the test, not fall back silently

    class Bound(DeepSpeedCPUAdagrad):
        op_simd = simd

    return Bound


def grads(n: int, steps: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for _ in range(steps)]


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("size,weight_decay", [(n, WD) for n in (1, 7, 64, 1023, 4096)] + [(1023, 0.0), (1 << 20, WD)])
def test_matches_torch_fp32(simd, size, weight_decay):
    torch.manual_seed(0)
    init = torch.randn(size)
    ours = torch.nn.Parameter(init.clone())
    theirs = torch.nn.Parameter(init.clone())
    opt = face(simd)([ours], lr=LR, weight_decay=weight_decay)
    assert opt.simd_width == SIMD_WIDTH[simd or detect_simd()]
    ref = torch.optim.Adagrad([theirs], lr=LR, eps=1e-10, weight_decay=weight_decay, foreach=False)
    for g in grads(size, STEPS):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(opt.state[ours]["exp_avg_sq"], ref.state[theirs]["sum"], rtol=RTOL, atol=1e-9)


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fp32_states", [True, False], ids=["fp32_states", "16bit_states"])
def test_low_precision_params(simd, dtype, fp32_states):
    size = 4096 + 13
    p = torch.nn.Parameter(torch.randn(size).to(dtype))
    opt = face(simd)([p], lr=LR, weight_decay=WD, fp32_optimizer_states=fp32_states)
    state_dtype = torch.float32 if fp32_states else dtype
    for g in grads(size, STEPS, dtype):
        # One reference step from exactly the kernel's inputs.
        before = p.detach().clone()
        s = opt.state[p]["exp_avg_sq"].clone() if opt.state[p] else torch.zeros(size, dtype=state_dtype)
        p.grad = g
        opt.step()
        assert opt.state[p]["exp_avg_sq"].dtype == state_dtype
        p_old, s_old, gf = before.float(), s.float(), g.float()
        cpu_adagrad_reference_step(before, g, s, step=1, lr=LR, eps=1e-10, weight_decay=WD)
        # Within two ulps of the reference, measured against the size of the
        # terms summed (a fused multiply-add rounds once where torch rounds
        # twice); 16-bit results are mostly identical.
        g_term = gf.abs() + WD * p_old.abs()
        scales = (p_old.abs() + LR, s_old + g_term * g_term)
        for actual, expected, scale in ((p.detach(), before, scales[0]), (opt.state[p]["exp_avg_sq"], s, scales[1])):
            a, e = actual.float(), expected.float()
            tol = 2 * torch.finfo(actual.dtype).eps * torch.maximum(torch.maximum(a.abs(), e.abs()), scale)
            assert ((a - e).abs() <= tol).all()
            if actual.dtype != torch.float32:
                assert (a != e).float().mean() < 0.01


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("copy_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_copy_equals_cast(simd, copy_dtype):
    size = 2 * 16384 + 3
    p = torch.nn.Parameter(torch.randn(size))
    opt = face(simd)([p], lr=LR)
    out = torch.empty(size, dtype=copy_dtype)
    for g in grads(size, 3):
        p.grad = g
        opt.step_with_copy([[out]])
        assert torch.equal(out.view(torch.int16), p.detach().to(copy_dtype).view(torch.int16))


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
def test_state_dict_round_trip_and_lr_edit(simd):
    shapes = [(17, 3), (40, )]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    opt = face(simd)(params, lr=LR, weight_decay=WD)
    steps = [[torch.randn(s) for s in shapes] for _ in range(6)]
    for gs in steps[:3]:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = face(simd)(resumed_params)
    resumed.load_state_dict(saved)
    for o in (opt, resumed):
        o.param_groups[0]["lr"] = 3 * LR  # an edit after loading applies to both alike
    for gs in steps[3:]:
        for p, q, g in zip(params, resumed_params, gs):
            p.grad, q.grad = g, g.clone()
        opt.step()
        resumed.step()
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], resumed.state[q]["exp_avg_sq"])
        assert resumed.state[q]["step"] == 6
    # The edited lr is the one used: compare with torch given the same edit.
    init = torch.randn(50)
    ours, theirs = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    a = face(simd)([ours], lr=LR)
    b = torch.optim.Adagrad([theirs], lr=LR, eps=1e-10, foreach=False)
    for i, g in enumerate(grads(50, 4)):
        if i == 2:
            a.param_groups[0]["lr"] = b.param_groups[0]["lr"] = 0.5
        ours.grad, theirs.grad = g.clone(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)


def test_accelerator_tensor_is_a_clear_error():
    p = torch.nn.Parameter(torch.empty(4, device="meta"))
    p.grad = torch.empty(4, device="meta")
    opt = face(None)([p])
    with pytest.raises(AssertionError, match=r"CPU tensors only.*param_groups\[0\]\['params'\]\[0\].*meta"):
        opt.step()


def test_amsgrad_is_rejected():
    with pytest.raises(ValueError, match="amsgrad"):
        DeepSpeedCPUAdagrad([torch.nn.Parameter(torch.randn(2))], amsgrad=True)
