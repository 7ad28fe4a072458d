"""Per-group symmetric int8 quantizer: reference maths, C++ CPU op, dispatch.

The reference is checked against values worked out by hand; the C++ op
must equal the reference bit for bit (q and scales, and the fused
dequantize+cast) on fp32, fp16 and bf16; round trips stay within s/2.
The first run JIT-compiles the cpu_quantizer op (about a minute on 2 cores);
later runs reuse torch's extension cache.
"""
import pytest
import torch

from deepspeed.ops.op_builder import CPUQuantizerBuilder, OpBuildError
from deepspeed.ops.quantizer import dequantize, dequantize_reference, quantize, quantize_reference
from deepspeed.ops.quantizer import quantizer as quantizer_module

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_reference_hand_computed_example() -> None:
    # Group 0: absmax 127 -> s = 1, so q = round_half_even(x):
    #   127 -> 127, -2.5 -> -2, 3.5 -> 4, 0.5 -> 0, -0.5 -> -0, 1.5 -> 2.
    # Group 1: absmax 254 -> s = 2, x/s = 127, 2.5, -1.5, 0.5, 0.25, -63.75
    #   -> 127, 2, -2, 0, 0, -64.
    # Group 2: all zeros -> s = 1 (guard), q = 0.
    x = torch.tensor([127.0, -2.5, 3.5, 0.5, -0.5, 1.5, 254.0, 5.0, -3.0, 1.0, 0.5, -127.5, 0, 0, 0, 0, 0, 0])
    q, s = quantize_reference(x, groups=3)
    assert q.dtype == torch.int8 and s.dtype == torch.float32
    assert q.tolist() == [127, -2, 4, 0, 0, 2, 127, 2, -2, 0, 0, -64, 0, 0, 0, 0, 0, 0]
    assert s.tolist() == [1.0, 2.0, 1.0]
    back = dequantize_reference(q, s, 3, torch.float32)
    assert back.tolist() == [127, -2, 4, 0, 0, 2, 254, 4, -4, 0, 0, -128, 0, 0, 0, 0, 0, 0]


def test_reference_4bit_and_shape() -> None:
    # bits=4: qmax = 7; absmax 14 -> s = 2; x/s = -7, 3.5, 0.25, 1.5 -> -7, 4, 0, 2.
    x = torch.tensor([[-14.0, 7.0], [0.5, 3.0]])
    q, s = quantize_reference(x, groups=1, bits=4)
    assert q.shape == (2, 2) and s.shape == (1, )
    assert q.flatten().tolist() == [-7, 4, 0, 2] and s.tolist() == [2.0]


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_non_divisible_size_is_a_clear_error(backend: str) -> None:
    with pytest.raises(ValueError, match="not divisible by groups=4"):
        quantize(torch.randn(10), 4, backend=backend)
    with pytest.raises(ValueError, match="not divisible"):
        dequantize(torch.zeros(10, dtype=torch.int8), torch.ones(3), 3, torch.float32, backend=backend)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        quantize(torch.randn(10), 0, backend=backend)


def test_cpp_op_itself_rejects_bad_sizes() -> None:
    op = CPUQuantizerBuilder().load()
    with pytest.raises(RuntimeError, match="not divisible by groups=3"):
        op.quantize(torch.randn(10), 3, 8)


def _inputs(dtype: torch.dtype, numel: int, groups: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(numel * 31 + groups)
    x = torch.randn(numel, generator=gen) * torch.logspace(-3, 3, groups).repeat_interleave(numel // groups)
    x = x.to(dtype)
    gs = numel // groups
    x[:gs] = 0  # an all-zero group
    if groups > 2:
        # Exact rounding ties: absmax 127 gives s = 1, so k + 0.5 must round to even.
        x[gs:2 * gs] = torch.arange(gs, dtype=torch.float32).remainder(8).sub(4).add(0.5).to(dtype)
        x[gs] = 127
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numel,groups", [(4096, 1), (4096, 4), (3 * 1024, 3), (64 * 100, 64), (8, 8)])
def test_cpp_equals_reference_bit_for_bit(dtype: torch.dtype, numel: int, groups: int) -> None:
    x = _inputs(dtype, numel, groups)
    q_ref, s_ref = quantize_reference(x, groups)
    q, s = quantize(x, groups, backend="cpp")
    assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == (groups, )
    assert torch.equal(q, q_ref)
    assert torch.equal(s, s_ref)
    for out_dtype in DTYPES:
        assert torch.equal(dequantize(q, s, groups, out_dtype, backend="cpp"),
                           dequantize_reference(q_ref, s_ref, groups, out_dtype))


@pytest.mark.parametrize("bits", [4, 6])
def test_cpp_equals_reference_fewer_bits(bits: int) -> None:
    x = torch.randn(3, 512, generator=torch.Generator().manual_seed(bits))
    q_ref, s_ref = quantize_reference(x, 6, bits)
    q, s = quantize(x, 6, bits, backend="cpp")
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    assert int(q.max()) <= 2**(bits - 1) - 1 and int(q.min()) >= -2**(bits - 1)


def test_cpp_handles_non_contiguous_input() -> None:
    x = torch.randn(64, 32).t()  # transposed view: quantized in logical (row-major) order
    q, s = quantize(x, 8, backend="cpp")
    q_ref, s_ref = quantize_reference(x.contiguous(), 8)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_error_within_half_a_step(backend: str, dtype: torch.dtype) -> None:
    groups = 16
    x = _inputs(dtype, 16 * 256, groups)
    q, s = quantize(x, groups, backend=backend)
    back = dequantize(q, s, groups, torch.float32, backend=backend)
    err = (back - x.float()).abs().reshape(groups, -1)
    # s/2 from rounding to an integer, plus fp32 rounding of x/s and q*s
    # (each <= 2^-24 relative, on values up to 127*s): 2*127*2^-24 < 2e-5 of s.
    bound = (s * (0.5 + 2e-5)).reshape(groups, 1)
    assert bool((err <= bound).all()), (err - bound).max()
    # The group's absmax element is reproduced almost exactly (q = +-127).
    assert int(q.abs().max()) == 127


@pytest.mark.slow
def test_scalar_build_equals_reference() -> None:
    op = CPUQuantizerBuilder(simd="scalar").load()
    for dtype in DTYPES:
        x = _inputs(dtype, 4096, 8)
        q, s = op.quantize(x, 8, 8)
        q_ref, s_ref = quantize_reference(x, 8)
        assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
        assert torch.equal(op.dequantize(q, s, 8, torch.bfloat16), dequantize_reference(q, s, 8, torch.bfloat16))


def test_auto_backend_falls_back_to_reference_when_the_op_is_unavailable(monkeypatch) -> None:
    monkeypatch.setattr(quantizer_module, "_load_op", lambda kind: (None, "simulated build failure"))
    x = torch.randn(128)
    q, s = quantize(x, 4)  # auto: quietly uses the reference
    q_ref, s_ref = quantize_reference(x, 4)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    with pytest.raises(OpBuildError, match="simulated build failure"):
        quantize(x, 4, backend="cpp")


def test_backend_argument_validation() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        quantize(torch.randn(8), 2, backend="triton")
    with pytest.raises(ValueError, match="cannot run on a cpu tensor"):
        quantize(torch.randn(8), 2, backend="cuda")
    with pytest.raises(TypeError, match="unsupported dtype"):
        quantize(torch.arange(8), 2, backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the quantizer kernels)")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_equals_reference_bit_for_bit(dtype: torch.dtype) -> None:
    for numel, groups in [(4096, 1), (3 * 1024, 3), (64 * 100, 64), (1 << 20, 128)]:
        x = _inputs(dtype, numel, groups)
        q_ref, s_ref = quantize_reference(x, groups)
        q, s = quantize(x.cuda(), groups, backend="cuda")
        assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)
        for out_dtype in DTYPES:
            out = dequantize(q, s, groups, out_dtype, backend="cuda")
            assert torch.equal(out.cpu(), dequantize_reference(q_ref, s_ref, groups, out_dtype))
