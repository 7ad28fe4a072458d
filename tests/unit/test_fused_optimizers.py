"""FusedAdam and FusedLion against torch.optim and the runtime's plain Lion.

The CPU path of FusedAdam must match torch.optim.AdamW / Adam to 1e-6 over
10 steps; bias_correction=False (which torch has no switch for) and 16-bit
params are checked against a small independent per-tensor reference.
FusedLion must equal deepspeed.runtime.lion.Lion. CUDA cases run only where
a GPU is present.
"""
import copy
import math
from typing import List

import pytest
import torch

from deepspeed.ops.adam.fused_adam import FusedAdam
from deepspeed.ops.lion.fused_lion import FusedLion
from deepspeed.runtime.lion import Lion

SIZES = [1, 7, 1023, 4096]
STEPS = 10


def _grads(n: int, steps: int, seed: int) -> List[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen) for _ in range(steps)]


def _pair(n: int, seed: int = 0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed + 1000)
    base = torch.randn(n, generator=gen)
    return (torch.nn.Parameter(base.clone().to(dtype)), torch.nn.Parameter(base.clone().to(dtype)))


def _adam_reference(p: torch.Tensor, grads: List[torch.Tensor], lr: float, betas, eps: float, wd: float,
                    adamw: bool, bias_correction: bool, dtype: torch.dtype) -> torch.Tensor:
    """Textbook Adam(W) in float64, storing p/m/v in `dtype` after every step like FusedAdam does."""
    b1, b2 = betas
    p32 = p.detach().to(dtype)
    m = torch.zeros_like(p32)
    v = torch.zeros_like(p32)
    for t, g in enumerate(grads, start=1):
        pd, md, vd, gd = p32.double(), m.double(), v.double(), g.to(dtype).double()
        if adamw:
            pd = pd * (1 - lr * wd)
        else:
            gd = gd + wd * pd
        md = b1 * md + (1 - b1) * gd
        vd = b2 * vd + (1 - b2) * gd * gd
        bc1 = 1 - b1**t if bias_correction else 1.0
        bc2 = 1 - b2**t if bias_correction else 1.0
        pd = pd - (lr / bc1) * md / (vd.sqrt() / math.sqrt(bc2) + eps)
        p32, m, v = pd.to(dtype), md.to(dtype), vd.to(dtype)
    return p32


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("adam_w_mode", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_adam_matches_torch(n: int, adam_w_mode: bool, weight_decay: float) -> None:
    ours, theirs = _pair(n)
    opt = FusedAdam([ours], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay,
                    adam_w_mode=adam_w_mode)
    torch_cls = torch.optim.AdamW if adam_w_mode else torch.optim.Adam
    ref = torch_cls([theirs], lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay, foreach=False)
    for g in _grads(n, STEPS, seed=n):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-6, atol=1e-7)
    # The run really moved the params (a no-op step would also "match" at step 0).
    assert not torch.equal(ours.detach(), _pair(n)[0].detach())
    st = opt.state[ours]
    torch.testing.assert_close(st["exp_avg"], ref.state[theirs]["exp_avg"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(st["exp_avg_sq"], ref.state[theirs]["exp_avg_sq"], rtol=1e-6, atol=1e-9)
    assert opt.param_groups[0]["step"] == STEPS


@pytest.mark.parametrize("adam_w_mode", [True, False])
def test_fused_adam_without_bias_correction(adam_w_mode: bool) -> None:
    n = 1023
    p, _ = _pair(n)
    start = p.detach().clone()
    grads = _grads(n, STEPS, seed=3)
    opt = FusedAdam([p], lr=1e-2, bias_correction=False, weight_decay=0.05, adam_w_mode=adam_w_mode)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = _adam_reference(start, grads, 1e-2, (0.9, 0.999), 1e-8, 0.05, adam_w_mode, False, torch.float32)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype,ulp", [(torch.float16, 2.0**-10), (torch.bfloat16, 2.0**-7)])
def test_fused_adam_16bit_params(dtype: torch.dtype, ulp: float) -> None:
    n = 4096
    p, _ = _pair(n, dtype=dtype)
    start = p.detach().float().clone()
    grads = _grads(n, STEPS, seed=5)
    opt = FusedAdam([p], lr=5e-2, weight_decay=0.01)
    for g in grads:
        p.grad = g.to(dtype)
        opt.step()
    assert p.dtype == dtype and opt.state[p]["exp_avg"].dtype == dtype
    expected = _adam_reference(start, grads, 5e-2, (0.9, 0.999), 1e-8, 0.01, True, True, dtype)
    # fp32 arithmetic with storage in `dtype` after each step: equal up to a
    # last-bit difference in the occasional rounding tie.
    torch.testing.assert_close(p.detach().float(), expected.float(), rtol=2 * ulp, atol=1e-6)


def test_fused_adam_multiple_tensors_groups_and_lr_edits() -> None:
    sizes = [7, 1, 4096, 1023]
    ours = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(s))) for s in sizes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = FusedAdam([{"params": ours[:2]}, {"params": ours[2:], "weight_decay": 0.2}], lr=1e-2)
    ref = torch.optim.AdamW([{"params": theirs[:2]}, {"params": theirs[2:], "weight_decay": 0.2}], lr=1e-2,
                            weight_decay=0.0, foreach=False)
    for step in range(STEPS):
        if step == 4:  # schedulers edit param_groups in place
            for group in opt.param_groups + ref.param_groups:
                group["lr"] = 3e-3
        for i, (a, b) in enumerate(zip(ours, theirs)):
            g = torch.randn(a.shape, generator=torch.Generator().manual_seed(100 * step + i))
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_fused_adam_skips_params_without_grad_and_add_param_group() -> None:
    a, b = _pair(16)
    frozen = torch.nn.Parameter(torch.ones(3))
    opt = FusedAdam([a, frozen], lr=1e-2)
    a.grad = torch.ones(16)
    opt.step()
    assert torch.equal(frozen.detach(), torch.ones(3)) and frozen not in opt.state
    opt.add_param_group({"params": [b], "lr": 1e-1})
    b.grad = torch.ones(16)
    start = b.detach().clone()
    opt.step()
    # First Adam step with bias correction moves each element by ~lr.
    torch.testing.assert_close(start - b.detach(), torch.full((16, ), 1e-1), rtol=1e-5, atol=0)
    assert opt.param_groups[1]["step"] == 1 and opt.param_groups[0]["step"] == 2


def _train(opt: torch.optim.Optimizer, params: List[torch.Tensor], steps: range) -> None:
    for s in steps:
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 * s + i))
        opt.step()


@pytest.mark.parametrize("make", [
    lambda ps: FusedAdam(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: FusedAdam(ps, lr=1e-2, weight_decay=0.1, adam_w_mode=False),
    lambda ps: FusedLion(ps, lr=1e-3, weight_decay=0.1),
],
                         ids=["adamw", "adam", "lion"])
def test_state_dict_round_trip_resumes_identically(make) -> None:
    base = [torch.randn(33), torch.randn(4, 5)]
    straight = [torch.nn.Parameter(t.clone()) for t in base]
    opt = make(straight)
    _train(opt, straight, range(10))

    first = [torch.nn.Parameter(t.clone()) for t in base]
    opt1 = make(first)
    _train(opt1, first, range(5))
    saved = copy.deepcopy(opt1.state_dict())
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = make(resumed)
    opt2.load_state_dict(saved)
    _train(opt2, resumed, range(5, 10))
    for a, b in zip(straight, resumed):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("cls", [FusedAdam, FusedLion])
@pytest.mark.parametrize("set_grad_none", [True, False])
def test_zero_grad_honours_set_grad_none(cls, set_grad_none: bool) -> None:
    p = torch.nn.Parameter(torch.randn(5))
    opt = cls([p], set_grad_none=set_grad_none)
    p.grad = torch.randn(5)
    opt.zero_grad()
    if set_grad_none:
        assert p.grad is None
    else:
        assert torch.equal(p.grad, torch.zeros(5))
    p.grad = torch.randn(5)
    opt.zero_grad(set_to_none=True)  # an explicit argument still wins
    assert p.grad is None
    clone = copy.deepcopy(opt)
    assert clone.set_grad_none == set_grad_none


def test_fused_adam_rejects_amsgrad_and_legacy_step_args() -> None:
    p = torch.nn.Parameter(torch.randn(3))
    with pytest.raises(RuntimeError, match="AMSGrad"):
        FusedAdam([p], amsgrad=True)
    opt = FusedAdam([p])
    p.grad = torch.randn(3)
    with pytest.raises(RuntimeError, match="param.grad"):
        opt.step(grads=[p.grad])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_lion_equals_runtime_lion(n: int, weight_decay: float, dtype: torch.dtype) -> None:
    ours, theirs = _pair(n, dtype=dtype)
    opt = FusedLion([ours], lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
    ref = Lion([theirs], lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay)
    for g in _grads(n, STEPS, seed=7 + n):
        ours.grad, theirs.grad = g.to(dtype), g.to(dtype)
        opt.step()
        ref.step()
    assert torch.equal(ours.detach(), theirs.detach())
    assert torch.equal(opt.state[ours]["exp_avg"], ref.state[theirs]["exp_avg"])
    assert not torch.equal(ours.detach(), _pair(n, dtype=dtype)[0].detach())


def test_fused_lion_closed_form_first_step() -> None:
    # From m = 0: update = sign((1-b1)*g) = sign(g); p' = p*(1-lr*wd) - lr*sign(g).
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5, 3.0]))
    opt = FusedLion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.7, 0.0, 2.0])
    opt.step()
    expected = torch.tensor([1.0, -2.0, 0.5, 3.0]) * 0.95 - 0.1 * torch.tensor([1.0, -1.0, 0.0, 1.0])
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(opt.state[p]["exp_avg"], 0.01 * torch.tensor([0.3, -0.7, 0.0, 2.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the fused_adam kernel)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("adam_w_mode", [True, False])
def test_fused_adam_cuda_kernel_matches_cpu_path(dtype: torch.dtype, adam_w_mode: bool) -> None:
    sizes = [1, 7, 1023, 4096, 70000, 3] + [5] * 40  # multi-chunk and >36 tensors per launch
    base = [torch.randn(s, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(sizes)]
    gpu = [torch.nn.Parameter(t.to("cuda", dtype)) for t in base]
    cpu = [torch.nn.Parameter(t.to(dtype)) for t in base]
    opt_gpu = FusedAdam(gpu, lr=1e-2, weight_decay=0.1, adam_w_mode=adam_w_mode)
    opt_cpu = FusedAdam(cpu, lr=1e-2, weight_decay=0.1, adam_w_mode=adam_w_mode)
    for s in range(STEPS):
        for i, (a, b) in enumerate(zip(gpu, cpu)):
            g = torch.randn(a.shape, generator=torch.Generator().manual_seed(100 * s + i)).to(dtype)
            a.grad, b.grad = g.cuda(), g.clone()
        opt_gpu.step()
        opt_cpu.step()
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for a, b in zip(gpu, cpu):
        torch.testing.assert_close(a.detach().cpu().float(), b.detach().float(), rtol=tol, atol=tol)
