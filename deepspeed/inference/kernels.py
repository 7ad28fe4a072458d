"""Torch references of the decode-path kernels, and the dispatch to the CUDA ones.

Each function here is both the CPU implementation and the test oracle of
the matching kernel in csrc/transformer/inference/ (built by
`InferenceBuilder`). The references compute exactly what the HF modules
compute, op for op, so the CPU decode path matches HF's greedy tokens.
The linear layers of CPU decode steps run through the skinny C++ kernel
(`SkinnyWeight`, the `cpu_inference` op) or on MKL-packed weights
(`PackedWeight`): the same fp32 products, summed in another order.
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["rms_norm_ref", "layer_norm_ref", "rotate_half", "rotary_ref", "bias_act_ref", "InferenceKernels",
           "ACTIVATIONS", "PackedWeight", "linear", "mkl_packing_available", "packing_possible",
           "packing_pays", "SkinnyWeight", "skinny_linear_op", "DECODE_PRODUCTS", "decode_products"]

logger = logging.getLogger(__name__)

#: activation name -> code shared with the CUDA kernel (csrc/transformer/inference/bias_activation.cu)
ACTIVATIONS = {"relu": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., H) -> weight * x / rms(x); statistics in fp32 (Llama's RMSNorm)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def layer_norm_ref(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                   eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotary_ref(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rotary_dims: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first `rotary_dims` channels of q and k (NeoX half-split convention).

    q (B, nq, S, hd), k (B, nkv, S, hd), cos/sin broadcastable to (B, 1, S, rotary_dims).
    """
    if rotary_dims == q.shape[-1]:
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    q_rot, q_pass = q[..., :rotary_dims], q[..., rotary_dims:]
    k_rot, k_pass = k[..., :rotary_dims], k[..., rotary_dims:]
    q = torch.cat((q_rot * cos + rotate_half(q_rot) * sin, q_pass), dim=-1)
    k = torch.cat((k_rot * cos + rotate_half(k_rot) * sin, k_pass), dim=-1)
    return q, k


def bias_act_ref(x: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
    """act(x + bias), the epilogue of an MLP-in matmul."""
    if bias is not None:
        x = x + bias
    if activation == "relu":
        return F.relu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")


# [Note: decode weight packing]
# A decode step multiplies a few rows (M = batch) by every weight matrix, and
# on CPU that GEMM is bound by how fast the weights stream from memory. MKL's
# sgemm repacks B on every call; with M = 8 that repacking costs as much as
# the product, and plain F.linear streams weights at ~6 GB/s on our 2-core
# Xeon, of the ~14 GB/s one core reads. Two remedies, picked per generate
# call by `decode_products`:
#
# * "skinny" (M <= 16): our C++ kernel (csrc/cpu/inference/decode_linear.cpp)
#   reads each weight once, in place, as one prefetched stream, and keeps
#   the M x 2 dot products of a tile in registers: ~11 GB/s at M = 8 and
#   ~8.7 at M = 16. It needs no copy and no set-up, so it applies to any call.
#   On a core with half the FMA width (Zen 1 EPYC, AVX2) the same products
#   are compute-bound instead: ~12 GFMA/s, 80% of sgemm's rate and 1.6-2x
#   F.linear's at M = 8, while only ~6 GB/s of weights stream.
# * "packed" (M <= 64, at least 8 steps, or no C++ op): MKL packs each weight
#   once for a fixed M (cblas_sgemm_pack, exposed by torch as
#   mkl::_mkl_reorder_linear_weight / _mkl_linear, the ops torch's own
#   inductor freezing uses) and then streams it at ~8-9 GB/s. Packing costs
#   ~0.3 ms per MB, what 4-5 decode steps save, and a copy of the weights.
#
# Either way the prefill keeps F.linear (many rows: compute-bound, where
# MKL's own packing is amortised), and on CUDA nothing changes. With the
# skinny products the dynamic decode steps also attend through the op's
# `decode_attention` (csrc/cpu/inference/decode_attention.cpp), which reads
# the K/V caches in place: torch's CPU flash kernel spends ~470 us per
# layer of the benchmark on set-up and tiny sgemm calls for one query per
# head. Fixed-shape (CUDA-graph) steps keep scaled_dot_product_attention.

#: pack only when at least this many decode steps follow, over at most this many rows
_PACK_MIN_STEPS, _PACK_MAX_ROWS = 8, 64
#: the skinny kernel takes products of at most this many rows (past it, FMAs and not memory bound it)
SKINNY_MAX_ROWS = 16
#: the choices of `decode_products`, and what DecodeLoop(products=...) accepts besides "auto"
DECODE_PRODUCTS = ("skinny", "packed", "plain")


@functools.lru_cache(maxsize=1)
def skinny_linear_op() -> Optional[Any]:
    """The `cpu_inference` op (built on first use), or None where it cannot be built (logged once)."""
    try:
        from deepspeed.ops.op_builder import CPUInferenceBuilder
        builder = CPUInferenceBuilder()
        if not builder.is_compatible(verbose=False):
            logger.warning("decode: the cpu_inference op is unavailable (%s); CPU decode steps use MKL-packed "
                           "weights or F.linear", builder.error_log)
            return None
        return builder.load(verbose=False)
    except Exception as exc:  # noqa: BLE001  (a failed build must degrade to the torch products)
        logger.warning("decode: building the cpu_inference op failed (%s); CPU decode steps use MKL-packed "
                       "weights or F.linear", exc)
        return None


@functools.lru_cache(maxsize=1)
def mkl_packing_available() -> bool:
    """Whether this torch build has MKL's packed linear ops, checked once on a tiny product."""
    try:
        if not torch.backends.mkl.is_available():
            return False
        w, x = torch.randn(5, 3), torch.randn(2, 3)
        packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 2)
        return bool(torch.allclose(torch.ops.mkl._mkl_linear(x, packed, w, None, 2), x @ w.t(), atol=1e-5))
    except (AttributeError, RuntimeError):
        return False


def packing_possible(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether weights of this device and dtype can be `PackedWeight`s (fp32 on CPU, with MKL)."""
    return device.type == "cpu" and dtype == torch.float32 and mkl_packing_available()


def packing_pays(device: torch.device, dtype: torch.dtype, rows: int, steps: int) -> bool:
    """Whether `PackedWeight`s speed up a call of `steps` decode steps over `rows` rows."""
    return rows <= _PACK_MAX_ROWS and steps >= _PACK_MIN_STEPS and packing_possible(device, dtype)


def decode_products(device: torch.device, dtype: torch.dtype, rows: int, steps: int) -> str:
    """How a call's decode-step products run: "skinny", "packed" or "plain" (F.linear); see the note above."""
    if device.type == "cpu" and dtype == torch.float32 and rows <= SKINNY_MAX_ROWS and skinny_linear_op() is not None:
        return "skinny"
    return "packed" if packing_pays(device, dtype, rows, steps) else "plain"


class PackedWeight:
    """A (out, in) fp32 CPU weight with MKL's packed copy for products over exactly `rows` rows."""

    __slots__ = ("weight", "packed", "rows")

    def __init__(self, weight: torch.Tensor, rows: int) -> None:
        self.weight = weight
        self.rows = rows
        self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight.contiguous(), rows)

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x (..., in) -> (..., out); the packed product when x has `rows` rows, else F.linear."""
        if x.numel() // x.shape[-1] != self.rows:
            return F.linear(x, self.weight, bias)
        y = torch.ops.mkl._mkl_linear(x.reshape(self.rows, x.shape[-1]), self.packed, self.weight, bias, self.rows)
        return y.view(*x.shape[:-1], y.shape[-1])


class SkinnyWeight:
    """A (out, in) fp32 CPU weight whose `rows`-row products run through the skinny C++ kernel (no copy)."""

    __slots__ = ("weight", "rows", "op")

    def __init__(self, weight: torch.Tensor, rows: int, op: Any) -> None:
        if rows > SKINNY_MAX_ROWS:
            raise ValueError(f"the skinny decode kernel takes at most {SKINNY_MAX_ROWS} rows, got {rows}")
        self.weight = weight.contiguous()
        self.rows = rows
        self.op = op

    def linear(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        """x (..., in) -> (..., out); the skinny kernel when x has `rows` rows, else F.linear."""
        if x.numel() // x.shape[-1] != self.rows:
            return F.linear(x, self.weight, bias)
        b = bias.contiguous() if bias is not None else None
        y = self.op.decode_linear(x.reshape(self.rows, x.shape[-1]).contiguous(), self.weight, b)
        return y.view(*x.shape[:-1], y.shape[-1])


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           packed: Optional[Any] = None) -> torch.Tensor:
    """F.linear, through `packed` (a PackedWeight or SkinnyWeight) when the call has one."""
    if packed is not None:
        return packed.linear(x, bias)
    return F.linear(x, weight, bias)


class InferenceKernels:
    """The decode-path ops: the CUDA op when it is built and the tensor is on CUDA, else the reference.

    `op` is the loaded `transformer_inference` extension, or None (CPU, or
    no compiler): nothing is built or loaded at construction.
    """

    def __init__(self, op: Optional[Any] = None) -> None:
        self.op = op

    @classmethod
    def load(cls) -> "InferenceKernels":
        """Try to JIT-build the CUDA op; fall back to the references if that is impossible."""
        try:
            from deepspeed.ops.op_builder import InferenceBuilder
            builder = InferenceBuilder()
            if not builder.is_compatible(verbose=False):
                return cls(None)
            return cls(builder.load(verbose=False))
        except Exception:  # no nvcc / no CUDA: the references are exact, only slower
            return cls(None)

    def _use(self, t: torch.Tensor) -> bool:
        return self.op is not None and t.is_cuda and t.dtype in (torch.float16, torch.bfloat16, torch.float32)

    def fuses(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
        """Whether `bias_act(x, bias, ...)` runs as one CUDA kernel (worth skipping the matmul's own bias)."""
        return bias is not None and self._use(x)

    def norm(self, spec: Any, x: torch.Tensor) -> torch.Tensor:
        """Apply a `NormSpec` (containers/base.py): the CUDA kernel when it applies, else the spec itself."""
        if self._use(x):
            if spec.kind == "rms":
                return self.op.rms_norm(x.contiguous(), spec.weight, spec.eps)
            if spec.weight is not None and spec.bias is not None:
                return self.op.layer_norm(x.contiguous(), spec.weight, spec.bias, spec.eps)
        return spec(x)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if self._use(x):
            return self.op.rms_norm(x.contiguous(), weight, eps)
        return rms_norm_ref(x, weight, eps)

    def layer_norm(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float) -> torch.Tensor:
        if self._use(x) and weight is not None and bias is not None:
            return self.op.layer_norm(x.contiguous(), weight, bias, eps)
        return layer_norm_ref(x, weight, bias, eps)

    def bias_act(self, x: torch.Tensor, bias: Optional[torch.Tensor], activation: str) -> torch.Tensor:
        if self._use(x) and bias is not None:
            return self.op.bias_activation(x.contiguous(), bias, ACTIVATIONS[activation])
        return bias_act_ref(x, bias, activation)

    def rotary(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               rotary_dims: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """As `rotary_ref`; cos/sin (B, 1, S, rotary_dims)."""
        if self._use(q):
            b, s = cos.shape[0], cos.shape[-2]
            cos3, sin3 = cos.reshape(b, s, rotary_dims), sin.reshape(b, s, rotary_dims)
            return self.op.rotary(q, cos3, sin3, rotary_dims), self.op.rotary(k, cos3, sin3, rotary_dims)
        return rotary_ref(q, k, cos, sin, rotary_dims)


RotaryFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], Tuple[torch.Tensor, torch.Tensor]]
