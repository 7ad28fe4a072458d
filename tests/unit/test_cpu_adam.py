"""DeepSpeedCPUAdam and the cpu_adam op, scalar and SIMD builds, against torch and the reference.

Oracles: torch.optim.AdamW / Adam (foreach=False) for fp32 parameters, and
cpu_adam_reference_step (the same fp32 maths with 16-bit rounding) for 16-bit
parameters, 16-bit states and the fused copy. Tolerances: fp32 results to
1e-6 relative; 16-bit results within one unit in the last place of a
reference step taken from the same inputs; fused copies bit for bit.
"""
import copy
from typing import List, Optional

import pytest
import torch

from deepspeed.ops.adam import DeepSpeedCPUAdam, cpu_adam_reference_step
from deepspeed.ops.op_builder import CPUAdamBuilder, OpBuildError
from deepspeed.ops.op_builder.simd import SIMD_WIDTH, detect_simd

BUILDS = ["scalar", None]  # None: the SIMD level detected on this CPU
SIZES = [1, 7, 64, 1023, 4096]
STEPS = 10
LR, WD = 1e-2, 0.1
RTOL, ATOL = 1e-6, 1e-7


def face(simd: Optional[str]) -> type:
    """DeepSpeedCPUAdam bound to one build, after checking that build compiles here."""
    builder = CPUAdamBuilder(simd=simd)
    if not builder.is_compatible():
        pytest.skip(f"cpu_adam {builder.simd} build is not possible here: {builder.error_log}")
    builder.load()  # a compile error must fail the test, not fall back silently

    class Bound(DeepSpeedCPUAdam):
        op_simd = simd

    return Bound


def expected_width(simd: Optional[str]) -> int:
    return SIMD_WIDTH[simd or detect_simd()]


def grads(n: int, steps: int, dtype: torch.dtype = torch.float32, seed: int = 1) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen).to(dtype) for _ in range(steps)]


def ulp_close(actual: torch.Tensor, expected: torch.Tensor, ulps: int = 1,
              scale: Optional[torch.Tensor] = None) -> None:
    """Equal up to ``ulps`` units in the last place of the dtype, and mostly exactly equal.

    A compiler may fuse a multiply-add that the reference rounds twice, which
    moves an fp32 result by an ulp of the summed terms (``scale``, when the
    sum can cancel) and rarely moves a 16-bit rounding by one.
    """
    a, e = actual.float(), expected.float()
    finfo = torch.finfo(actual.dtype)
    magnitude = torch.maximum(a.abs(), e.abs())
    if scale is not None:
        magnitude = torch.maximum(magnitude, scale.float())
    tol = ulps * finfo.eps * magnitude.clamp_min(finfo.tiny)
    bad = (a - e).abs() > tol
    assert not bad.any(), f"{int(bad.sum())} differ beyond {ulps} ulp, e.g. {a[bad][:4].tolist()} vs {e[bad][:4].tolist()}"
    if actual.dtype != torch.float32:
        assert (a != e).float().mean().item() < 0.01, "more than 1% of the 16-bit results differ"


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("size,adamw_mode", [(n, mode) for n in SIZES for mode in (True, False)] + [(1 << 20, True)])
def test_matches_torch_fp32(simd, size, adamw_mode):
    torch.manual_seed(0)
    init = torch.randn(size)
    ours = torch.nn.Parameter(init.clone())
    theirs = torch.nn.Parameter(init.clone())
    opt = face(simd)([ours], lr=LR, weight_decay=WD, adamw_mode=adamw_mode)
    assert opt.simd_width == expected_width(simd)
    torch_cls = torch.optim.AdamW if adamw_mode else torch.optim.Adam
    ref = torch_cls([theirs], lr=LR, weight_decay=WD, foreach=False)
    for g in grads(size, STEPS):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)
    # torch updates exp_avg with lerp, the kernel with b1*m + (1-b1)*g: they
    # agree to an ulp of the terms (|g| ~ 1), which is not an ulp of a sum
    # that cancels to near zero; hence the absolute floor for exp_avg.
    for key, atol in (("exp_avg", 1e-6), ("exp_avg_sq", 1e-9)):
        torch.testing.assert_close(opt.state[ours][key], ref.state[theirs][key], rtol=RTOL, atol=atol)
    assert opt.state[ours]["step"] == STEPS


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
def test_no_bias_correction_matches_reference(simd):
    init = torch.randn(1023)
    p = torch.nn.Parameter(init.clone())
    opt = face(simd)([p], lr=LR, weight_decay=WD, bias_correction=False)
    rp, rm, rv = init.clone(), torch.zeros(1023), torch.zeros(1023)
    for step, g in enumerate(grads(1023, STEPS), start=1):
        p.grad = g
        opt.step()
        cpu_adam_reference_step(rp, g, rm, rv, step=step, lr=LR, beta1=0.9, beta2=0.999, eps=1e-8,
                                weight_decay=WD, bias_correction=False, adamw_mode=True)
    torch.testing.assert_close(p.detach(), rp, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("fp32_states", [True, False], ids=["fp32_states", "16bit_states"])
def test_low_precision_params(simd, dtype, fp32_states):
    size = 4096 + 13
    torch.manual_seed(0)
    init = torch.randn(size)
    p = torch.nn.Parameter(init.to(dtype))
    opt = face(simd)([p], lr=LR, weight_decay=WD, fp32_optimizer_states=fp32_states)
    master = torch.nn.Parameter(init.to(dtype).float())
    ref = torch.optim.AdamW([master], lr=LR, weight_decay=WD, foreach=False)
    for g in grads(size, STEPS, dtype):
        # One reference step from exactly the kernel's inputs: the outputs
        # must agree to an ulp of the 16-bit type.
        before = p.detach().clone()
        states = [opt.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")] if opt.state[p] else None
        p.grad = g
        opt.step()
        state_dtype = torch.float32 if fp32_states else dtype
        assert opt.state[p]["exp_avg"].dtype == state_dtype and opt.state[p]["exp_avg_sq"].dtype == state_dtype
        m, v = states or (torch.zeros(size, dtype=state_dtype), torch.zeros(size, dtype=state_dtype))
        cpu_adam_reference_step(before, g, m, v, step=opt.state[p]["step"], lr=LR, beta1=0.9, beta2=0.999,
                                eps=1e-8, weight_decay=WD, bias_correction=True, adamw_mode=True)
        ulp_close(p.detach(), before)
        m_old, v_old = (states[0].float(), states[1].float()) if states else (0.0, 0.0)
        gf = g.float()
        ulp_close(opt.state[p]["exp_avg"], m, ulps=2, scale=0.9 * abs(m_old) + 0.1 * gf.abs())
        ulp_close(opt.state[p]["exp_avg_sq"], v, ulps=2, scale=0.999 * v_old + 0.001 * gf * gf)
        master.grad = g.float()
        ref.step()
    # Against fp32 master weights: each step may round by half an ulp of the dtype.
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(p.detach().float(), master.detach(), rtol=STEPS * eps, atol=STEPS * eps * 0.1)


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float16], ids=["bf16_grads", "fp16_grads"])
def test_16bit_grads_on_fp32_params(simd, grad_dtype):
    # Through the op: torch only lets a parameter hold a grad of its own dtype.
    face(simd)
    op = CPUAdamBuilder(simd=simd).load()
    op.create_adam(2000, LR, 0.9, 0.999, 1e-8, WD, True, False)
    size = 1023
    init = torch.randn(size)
    p, m, v = init.clone(), torch.zeros(size), torch.zeros(size)
    rp, rm, rv = init.clone(), torch.zeros(size), torch.zeros(size)
    for step, g in enumerate(grads(size, STEPS, grad_dtype), start=1):
        op.adam_update(2000, step, LR, 0.9, 0.999, 1e-8, WD, True, p, g, m, v)
        cpu_adam_reference_step(rp, g, rm, rv, step=step, lr=LR, beta1=0.9, beta2=0.999, eps=1e-8,
                                weight_decay=WD, bias_correction=True, adamw_mode=True)
    op.destroy_adam(2000)
    torch.testing.assert_close(p, rp, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
@pytest.mark.parametrize("copy_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_copy_equals_cast(simd, copy_dtype):
    size = 3 * 16384 + 5  # several OpenMP tiles plus a tail
    p = torch.nn.Parameter(torch.randn(size) * 3)
    other = torch.nn.Parameter(torch.randn(7))
    opt = face(simd)([p, other], lr=LR, weight_decay=WD)
    out = torch.empty(size, dtype=copy_dtype)
    out_other = torch.empty(7, dtype=torch.float32)  # not 16-bit: filled by copy_ after the update
    for g in grads(size, 3):
        p.grad, other.grad = g, torch.randn(7)
        opt.step_with_copy([[out, out_other]])
        assert torch.equal(out.view(torch.int16), p.detach().to(copy_dtype).view(torch.int16))
        assert torch.equal(out_other, other.detach())


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
def test_state_dict_round_trip_resumes_identically(simd):
    torch.manual_seed(0)
    shapes = [(33, 7), (129, ), (5, )]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.bfloat16)) for s in shapes]
    opt = face(simd)(params, lr=LR, weight_decay=WD)
    steps = [[torch.randn(s, dtype=torch.bfloat16) for s in shapes] for _ in range(6)]
    for gs in steps[:3]:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = face(simd)(resumed_params, lr=1.0)  # hyperparameters come from the state dict
    resumed.load_state_dict(saved)
    assert resumed.state[resumed_params[0]]["exp_avg"].dtype == torch.float32  # not cast to bf16
    for gs in steps[3:]:
        for p, q, g in zip(params, resumed_params, gs):
            p.grad, q.grad = g, g.clone()
        opt.step()
        resumed.step()
    for p, q in zip(params, resumed_params):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            a, b = opt.state[p][key], resumed.state[q][key]
            assert torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "simd"])
def test_param_group_edits_and_schedulers_take_effect(simd):
    init = torch.randn(100)
    ours = torch.nn.Parameter(init.clone())
    theirs = torch.nn.Parameter(init.clone())
    opt = face(simd)([ours], lr=LR, weight_decay=WD)
    ref = torch.optim.AdamW([theirs], lr=LR, weight_decay=WD, foreach=False)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (opt, ref)]
    for i, g in enumerate(grads(100, 8)):
        if i == 5:
            for o in (opt, ref):
                o.param_groups[0]["betas"] = (0.5, 0.9)
                o.param_groups[0]["weight_decay"] = 0.3
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for s in scheds:
            s.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)
    # lr 0 freezes the parameters exactly.
    before = ours.detach().clone()
    opt.param_groups[0]["lr"] = 0.0
    ours.grad = torch.randn(100)
    opt.step()
    assert torch.equal(ours.detach(), before)


def test_non_contiguous_params_and_missing_grads():
    base = torch.randn(16, 9)
    ours = torch.nn.Parameter(base.clone().t())  # a non-contiguous parameter
    theirs = torch.nn.Parameter(base.clone().t())
    idle = torch.nn.Parameter(torch.randn(4))  # never gets a gradient
    opt = face(None)([ours, idle], lr=LR, weight_decay=WD)
    ref = torch.optim.AdamW([theirs], lr=LR, weight_decay=WD, foreach=False)
    for _ in range(3):
        g = torch.randn(9, 16)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)
    assert idle not in opt.state or not opt.state[idle]


def test_accelerator_tensor_is_a_clear_error():
    cpu = torch.nn.Parameter(torch.randn(3))
    elsewhere = torch.nn.Parameter(torch.empty(5, device="meta"))
    opt = face(None)([cpu, elsewhere])
    cpu.grad = torch.randn(3)
    elsewhere.grad = torch.empty(5, device="meta")
    with pytest.raises(AssertionError, match=r"param_groups\[0\]\['params'\]\[1\].*meta"):
        opt.step()


def test_amsgrad_is_rejected():
    with pytest.raises(ValueError, match="amsgrad"):
        DeepSpeedCPUAdam([torch.nn.Parameter(torch.randn(2))], amsgrad=True)


def test_ids_are_unique_and_released():
    op = CPUAdamBuilder().load()
    a = face(None)([torch.nn.Parameter(torch.randn(2))])
    b = face(None)([torch.nn.Parameter(torch.randn(2))])
    assert a.opt_id != b.opt_id
    stale = a.opt_id
    del a
    with pytest.raises(RuntimeError, match="no optimizer with id"):
        op.adam_update(stale, 1, 0.1, 0.9, 0.999, 1e-8, 0.0, True, torch.zeros(1), torch.zeros(1), torch.zeros(1),
                       torch.zeros(1))


class _UnbuildableBuilder(CPUAdamBuilder):

    def load(self, verbose: bool = False):
        raise OpBuildError("no compiler in this test")


def test_falls_back_to_reference_with_one_warning(monkeypatch):
    import deepspeed.ops.cpu_optimizer as cpu_optimizer

    warnings = []
    monkeypatch.setattr(cpu_optimizer.logger, "warning", lambda msg, *a: warnings.append(msg))

    class Fallback(DeepSpeedCPUAdam):
        BUILDER = _UnbuildableBuilder

    init = torch.randn(37)
    ours = torch.nn.Parameter(init.clone())
    theirs = torch.nn.Parameter(init.clone())
    opts = [Fallback([ours], lr=LR, weight_decay=WD), Fallback([torch.nn.Parameter(torch.randn(2))])]
    assert opts[0].simd_width == 0 and len(warnings) == 1 and "reference" in warnings[0]
    ref = torch.optim.AdamW([theirs], lr=LR, weight_decay=WD, foreach=False)
    for g in grads(37, 5):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opts[0].step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=RTOL, atol=ATOL)


def test_scalar_and_simd_builds_agree():
    """The two builds share the maths; they may differ only by fma contraction (an ulp or two)."""
    ops = [CPUAdamBuilder(simd=s).load() for s in ("scalar", None)]
    outs = []
    for i, op in enumerate(ops):
        op.create_adam(1000 + i, LR, 0.9, 0.999, 1e-8, WD, True, False)
        torch.manual_seed(0)
        p, m, v = torch.randn(5000), torch.zeros(5000), torch.zeros(5000)
        for step, g in enumerate(grads(5000, 3), start=1):
            op.adam_update(1000 + i, step, LR, 0.9, 0.999, 1e-8, WD, True, p, g, m, v)
        op.destroy_adam(1000 + i)
        outs.append((p, m, v))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL)
