"""DeepSpeedCPULion and the cpu_lion op, scalar and SIMD builds, plus the 16-bit store rounding.

Oracles: deepspeed.runtime.lion.Lion (plain torch) for fp32 parameters,
cpu_lion_reference_step for 16-bit parameters and states, and torch's own
``.to(bfloat16/float16)`` casts, bit for bit, for the stores: with lr=0 a
Lion step leaves fp32 parameters unchanged, so its fused copy is a pure
conversion test of the kernels' round-to-nearest-even.
"""
import copy
from typing import List, Optional

import pytest
import torch

from deepspeed.ops.lion import DeepSpeedCPULion, cpu_lion_reference_step
from deepspeed.ops.op_builder import CPULionBuilder
from deepspeed.ops.op_builder.simd import SIMD_WIDTH, detect_simd
from deepspeed.runtime.lion import Lion

BUILDS = ["scalar", None]  # None: the SIMD level detected on this CPU
# The 16-bit load/store tests also run the AVX2 code where the CPU would pick AVX512.
STORE_BUILDS = BUILDS + (["avx2"] if detect_simd() == "avx512" else [])
STORE_IDS = ["scalar", "simd", "avx2"][:len(STORE_BUILDS)]
STEPS = 10
LR, WD, BETAS = 1e-2, 0.1, (0.9, 0.99)
RTOL, ATOL = 1e-6, 1e-7


def face(simd: Optional[str]) -> type:
    """DeepSpeedCPULion bound to one build, after checking that build compiles here."""
    builder = CPULionBuilder(simd=simd)
    if not builder.is_compatible():
        pytest.skip(f"cpu_lion {builder.simd} build is not possible here: {builder.error_log}")
    builder.load()  # a compile error must fail the test, not fall back silently

    class Bound(DeepSpeedCPULion):
        op_simd = simd

    return Bound


def grads(n: int, steps: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for _ in range(steps)]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


@pytest.mark.parametrize("simd,size", [(s, n) for s in BUILDS for n in (1, 7, 64, 1023, 4096)] + [("scalar", 1 << 20)],
                         ids=lambda v: "simd" if v is None else str(v))
def test_matches_reference_lion_fp32(simd, size):
    torch.manual_seed(0)
    init = torch.randn(size)
    ours = torch.nn.Parameter(init.clone())
    theirs = torch.nn.Parameter(init.clone())
    opt = face(simd)([ours], lr=LR, betas=BETAS, weight_decay=WD)
    assert opt.simd_width == SIMD_WIDTH[simd or detect_simd()]
    ref = Lion([theirs], lr=LR, betas=BETAS, weight_decay=WD)
    for g in grads(size, STEPS):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(opt.state[ours]["exp_avg"], ref.state[theirs]["exp_avg"], rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("simd", STORE_BUILDS, ids=STORE_IDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fp32_states", [True, False], ids=["fp32_states", "16bit_states"])
def test_low_precision_params(simd, dtype, fp32_states):
    size = 4096 + 13
    p = torch.nn.Parameter(torch.randn(size).to(dtype))
    opt = face(simd)([p], lr=LR, betas=BETAS, weight_decay=WD, fp32_optimizer_states=fp32_states)
    state_dtype = torch.float32 if fp32_states else dtype
    for g in grads(size, STEPS, dtype):
        before = p.detach().clone()
        m = opt.state[p]["exp_avg"].clone() if opt.state[p] else torch.zeros(size, dtype=state_dtype)
        p.grad = g
        opt.step()
        assert opt.state[p]["exp_avg"].dtype == state_dtype
        m_old, gf = m.float(), g.float()
        cpu_lion_reference_step(before, g, m, step=1, lr=LR, beta1=BETAS[0], beta2=BETAS[1], weight_decay=WD)
        # Where b1*m + (1-b1)*g is zero up to rounding (16-bit inputs cancel
        # exactly now and then), its sign depends on whether the compiler
        # fused the multiply-add; leave those elements out.
        terms = BETAS[0] * m_old.abs() + (1 - BETAS[0]) * gf.abs()
        decided = (m_old * BETAS[0] + gf * (1 - BETAS[0])).abs() > 4 * torch.finfo(torch.float32).eps * terms
        # Elsewhere a fused multiply-add may move p*(1-lr*wd) - lr*u by an
        # fp32 ulp, which rarely changes the 16-bit rounding, never by more
        # than one 16-bit ulp.
        assert decided.float().mean() > 0.99
        a, e = p.detach().float()[decided], before.float()[decided]
        assert ((a - e).abs() <= torch.finfo(dtype).eps * torch.maximum(a.abs(), e.abs())).all()
        assert (a != e).float().mean() < 0.01
        eps = torch.finfo(state_dtype).eps
        torch.testing.assert_close(opt.state[p]["exp_avg"].float(), m.float(), rtol=2 * eps, atol=2 * eps)


@pytest.mark.parametrize("simd", STORE_BUILDS, ids=STORE_IDS)
@pytest.mark.parametrize("copy_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_store_rounding_is_torchs_bit_for_bit(simd, copy_dtype):
    specials = torch.tensor([
        0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 65504.0, 65519.0, 65520.0, 1e30, -1e30, 6.1e-5, 5.9e-8,
        2.98e-8, 2.9802322387695312e-08, 1e-40, -1e-40, 1.17e-38, 3.3895314e38, 3.4e38, 1.0 + 2**-8, 1.0 + 3 * 2**-9,
        1.0 + 2**-7 + 2**-8, 1.0 + 2**-11, 1.0 + 3 * 2**-11
    ])
    gen = torch.Generator().manual_seed(3)
    # Random bit patterns cover every rounding case; keep finite ones (NaN payloads are not portable).
    raw = torch.randint(-2**31, 2**31 - 1, (100_000, ), generator=gen, dtype=torch.int64).to(torch.int32)
    randoms = raw.view(torch.float32)
    randoms = randoms[torch.isfinite(randoms)]
    scaled = torch.randn(50_000, generator=gen) * torch.logspace(-9, 5, 50_000)  # dense around fp16's range
    values = torch.cat([specials, randoms, scaled, torch.tensor([float("nan")])])
    p = torch.nn.Parameter(values.clone())
    p.grad = torch.ones_like(values)
    opt = face(simd)([p], lr=0.0)
    out = torch.empty(values.numel(), dtype=copy_dtype)
    opt.step_with_copy([[out]])
    assert torch.equal(bits(p.detach()[:-1].contiguous().view(torch.int32).to(torch.int16)),
                       bits(values[:-1].view(torch.int32).to(torch.int16)))  # lr=0 left p as it was
    expected = values.to(copy_dtype)
    mismatch = bits(out)[:-1] != bits(expected)[:-1]
    assert not mismatch.any(), f"{int(mismatch.sum())} values round differently, e.g. {values[:-1][mismatch][:5]}"
    assert torch.isnan(out[-1]), "NaN must stay NaN"


@pytest.mark.parametrize("simd", STORE_BUILDS, ids=STORE_IDS)
def test_bf16_params_round_to_nearest_even(simd):
    """Hand-picked steps whose exact fp32 result rounds differently under truncation or ties-away.

    A Lion step with a positive gradient, zero state and no weight decay is p - lr exactly in fp32.
    """
    cases = [
        # (p, lr, bf16 result under RNE); bf16 keeps 8 significant bits.
        (1.0, 2**-10, 1.0),  # a quarter ulp below 1: nearest is 1.0; truncation would give 1 - 2^-8
        (1.0, 3 * 2**-10, 1.0 - 2**-8),  # three quarters below 1: nearest is 1 - 2^-8
        (1.0, 2**-9, 1.0),  # tie between 1 - 2^-8 (odd) and 1.0 (even): up to even, unlike truncation
        (1.0 + 2**-7, 2**-8, 1.0),  # tie between 1.0 (even) and 1 + 2^-7 (odd): down to even, not away
        (1.0 + 2**-6, 2**-8, 1.0 + 2**-6),  # tie between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up to even
        (2.0, 2**-9, 2.0),  # a quarter ulp below 2: 2.0; truncation would give 2 - 2^-7
    ]
    for k, (p0, lr, expected) in enumerate(cases):
        p = torch.nn.Parameter(torch.full((37, ), p0, dtype=torch.bfloat16))  # 37: vector body and scalar tail
        assert float(p.detach()[0]) == p0
        p.grad = torch.ones(37, dtype=torch.bfloat16)
        face(simd)([p], lr=lr, betas=BETAS).step()
        got = p.detach().float()
        assert (got == expected).all(), f"case {k}: {p0} - {lr} gave {got[0].item()}, want {expected}"


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
def test_state_dict_round_trip_and_param_group_edits(simd):
    shapes = [(31, 2), (3, )]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.bfloat16)) for s in shapes]
    opt = face(simd)(params, lr=LR, betas=BETAS, weight_decay=WD)
    steps = [[torch.randn(s, dtype=torch.bfloat16) for s in shapes] for _ in range(6)]
    for gs in steps[:3]:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = face(simd)(resumed_params)
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["betas"] == BETAS and resumed.param_groups[0]["lr"] == LR
    assert resumed.state[resumed_params[0]]["exp_avg"].dtype == torch.float32
    for gs in steps[3:]:
        for p, q, g in zip(params, resumed_params, gs):
            p.grad, q.grad = g, g.clone()
        opt.step()
        resumed.step()
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg"], resumed.state[q]["exp_avg"])
    # Edits to param_groups apply at the next step, as in the torch reference.
    init = torch.randn(64)
    ours, theirs = torch.nn.Parameter(init.clone()), torch.nn.Parameter(init.clone())
    a = face(simd)([ours], lr=LR, betas=BETAS)
    b = Lion([theirs], lr=LR, betas=BETAS)
    for i, g in enumerate(grads(64, 5)):
        if i == 2:
            for o in (a, b):
                o.param_groups[0].update(lr=0.03, betas=(0.5, 0.9), weight_decay=0.2)
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
