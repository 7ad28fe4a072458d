"""The cpu_inference op (decode steps), scalar and SIMD builds: the skinny linear against F.linear,
the step attention against scaled_dot_product_attention.

Oracle: F.linear on the same fp32 inputs. The kernel sums the same products in
another order (per-lane partial sums, then a reduction tree), so each output
must lie within a few roundings of sum_k |x_k w_k| (+ |bias|) of F.linear's:
4 eps, the bound the MKL-packed products are held to (test_he_decode.py). A
dropped or doubled term, or a wrong row or column, is off by far more.
"""
from typing import Optional

import pytest
import torch
import torch.nn.functional as F

from deepspeed.inference.kernels import SKINNY_MAX_ROWS, SkinnyWeight
from deepspeed.ops.op_builder import CPUInferenceBuilder
from deepspeed.ops.op_builder.simd import SIMD_WIDTH, detect_simd

BUILDS = ["scalar", "avx2", None]  # None: the SIMD level detected on this CPU (on an AVX-512 CPU: all three paths)


def load(simd: Optional[str]):
    builder = CPUInferenceBuilder(simd=simd)
    if not builder.is_compatible():
        pytest.skip(f"cpu_inference {builder.simd} build is not possible here: {builder.error_log}")
    return builder.load()  # a compile error must fail the test, not fall back silently


def assert_within_reordering(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor]) -> None:
    ref = F.linear(x, w, b)
    bound = 4 * torch.finfo(torch.float32).eps * F.linear(x.abs(), w.abs(), b.abs() if b is not None else None)
    assert y.shape == ref.shape
    err = (y - ref).abs()
    assert bool((err <= bound).all()), f"max error {err.max().item():.3g} over the bound {bound.max().item():.3g}"


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "avx2", "detected"])
def test_simd_width_is_the_build_level(simd):
    assert load(simd).simd_width() == SIMD_WIDTH[simd or detect_simd()]


# rows: full row blocks (8 rows under AVX-512, 4 under AVX2 and scalar), partial blocks and both at
# once; k: multiples of every vector width and tails; n: odd counts that leave a row of w outside the
# 2-wide tiles.
@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "avx2", "detected"])
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 13, 16])
@pytest.mark.parametrize("k,n", [(512, 1536), (16, 7), (37, 33), (2048, 64), (5, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_decode_linear_matches_f_linear(simd, rows, k, n, bias):
    op = load(simd)
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    x = torch.randn(rows, k, generator=g)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    assert_within_reordering(op.decode_linear(x, w, b), x, w, b)


def test_decode_linear_uses_every_thread_range():
    """Threads split the tiles of w; every output column must be written exactly once."""
    op = load(None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        g = torch.Generator().manual_seed(3)
        x, w, b = torch.randn(8, 64, generator=g), torch.randn(1001, 64, generator=g), torch.randn(1001, generator=g)
        assert_within_reordering(op.decode_linear(x, w, b), x, w, b)
    finally:
        torch.set_num_threads(threads)


def test_decode_linear_rejects_bad_inputs_by_name():
    op = load(None)
    x, w = torch.randn(4, 8), torch.randn(6, 8)
    with pytest.raises(RuntimeError, match="float32"):
        op.decode_linear(x.double(), w.double())
    with pytest.raises(RuntimeError, match=r"x \(M, K\) and w \(N, K\)"):
        op.decode_linear(x, torch.randn(6, 9))
    with pytest.raises(RuntimeError, match="contiguous"):
        op.decode_linear(torch.randn(8, 4).t(), w)
    with pytest.raises(RuntimeError, match="bias must be"):
        op.decode_linear(x, w, torch.randn(5))


@pytest.mark.parametrize("shape", [(3, 32, 96), (8, 512, 1536), (16, 48, 7)])
@pytest.mark.parametrize("bias", [False, True])
def test_skinny_weight_runs_its_row_count_and_defers_the_rest(shape, bias):
    rows, k, n = shape
    op = load(None)
    g = torch.Generator().manual_seed(rows * n)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    skinny = SkinnyWeight(w, rows, op)
    for x in (torch.randn(rows, k, generator=g), torch.randn(rows, 1, k, generator=g),  # the kernel's row count
              torch.randn(rows + 2, k, generator=g), torch.randn(2, rows, k, generator=g)):  # others: F.linear
        assert_within_reordering(skinny.linear(x, b), x, w, b)


def test_skinny_weight_refuses_too_many_rows():
    with pytest.raises(ValueError, match=f"at most {SKINNY_MAX_ROWS} rows"):
        SkinnyWeight(torch.randn(4, 4), SKINNY_MAX_ROWS + 1, op=None)


# ------------------------------------------------------------------ decode attention
# Oracle: F.scaled_dot_product_attention over the same cache slices and mask, as the decode
# loop calls it. The kernel's softmax sums in another order (exact max first, then one pass),
# so outputs agree to a few fp32 roundings of sum_l p_l |v_l|; the bound is 1e-5 on randn data.
def sdpa_step(q, k, v, valid, length, scale):
    b, h, _, _ = q.shape
    mask = valid[:, None, None, :length]
    return F.scaled_dot_product_attention(q, k[:b, :, :length], v[:b, :, :length], attn_mask=mask, scale=scale)


# (batch, kv heads, queries per kv head, head dim, cache rows, cache slots, length): plain heads,
# grouped-query folds, head dims with a vector tail or shorter than a vector, lengths under the
# 4-key blocks, and caches bigger than what is read.
ATTENTION_SHAPES = [(8, 8, 1, 64, 8, 128, 96), (3, 4, 2, 64, 5, 40, 37), (2, 2, 4, 20, 2, 9, 9),
                    (1, 1, 1, 5, 1, 3, 1), (4, 3, 3, 16, 6, 70, 66)]


@pytest.mark.parametrize("simd", BUILDS, ids=["scalar", "avx2", "detected"])
@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_decode_attention_matches_sdpa(simd, shape):
    op = load(simd)
    b, h, g, d, bcap, lcap, length = shape
    gen = torch.Generator().manual_seed(sum(shape))
    q = torch.randn(b, h, g, d, generator=gen)
    k, v = torch.randn(bcap, h, lcap, d, generator=gen), torch.randn(bcap, h, lcap, d, generator=gen)
    valid = torch.rand(b, lcap + 3, generator=gen) > 0.3  # left padding and holes; wider than the cache
    valid[:, length - 1] = True  # the newest token always sees itself
    scale = d ** -0.5
    out = op.decode_attention(q, k, v, valid, length, scale)
    ref = sdpa_step(q, k, v, valid, length, scale)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_decode_attention_reads_only_valid_slots_below_length():
    """Poisoned slots (masked, or at or past `length`) must not reach the output."""
    op = load(None)
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(2, 2, 1, 8, generator=gen)
    k, v = torch.randn(3, 2, 12, 8, generator=gen), torch.randn(3, 2, 12, 8, generator=gen)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[0, :3] = False
    ref = sdpa_step(q, k, v, valid, 9, 0.5)
    k[0, :, :3], v[0, :, :3] = float("nan"), float("nan")  # masked
    k[:, :, 9:], v[:, :, 9:] = float("nan"), float("nan")  # past length
    k[2], v[2] = float("nan"), float("nan")  # a cache row past the batch
    torch.testing.assert_close(op.decode_attention(q, k, v, valid, 9, 0.5), ref, atol=1e-5, rtol=1e-5)


def test_decode_attention_of_a_row_without_valid_slots_is_zero():
    op = load(None)
    q, k, v = torch.randn(2, 1, 1, 8), torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8)
    valid = torch.ones(2, 4, dtype=torch.bool)
    valid[1] = False
    out = op.decode_attention(q, k, v, valid, 4, 1.0)
    assert bool((out[1] == 0).all()) and bool(torch.isfinite(out).all())


def test_decode_attention_rejects_bad_inputs_by_name():
    op = load(None)
    q, k = torch.randn(2, 2, 1, 8), torch.randn(2, 2, 6, 8)
    valid = torch.ones(2, 6, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="float32"):
        op.decode_attention(q.double(), k.double(), k.double(), valid, 6, 1.0)
    with pytest.raises(RuntimeError, match="do not hold"):
        op.decode_attention(torch.randn(3, 2, 1, 8), k, k, torch.ones(3, 6, dtype=torch.bool), 6, 1.0)
    with pytest.raises(RuntimeError, match="length 7 outside"):
        op.decode_attention(q, k, k, torch.ones(2, 7, dtype=torch.bool), 7, 1.0)
    with pytest.raises(RuntimeError, match="valid must be a bool"):
        op.decode_attention(q, k, k, valid.float(), 6, 1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        op.decode_attention(q, k.transpose(2, 3).contiguous().transpose(2, 3), k, valid, 6, 1.0)
