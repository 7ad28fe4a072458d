"""Pure-torch per-group symmetric int8 quantizer: the oracle and CPU fallback.

[Note: quantizer convention] (also in csrc/quantization/quantize_launch.h)
``x`` is split into ``groups`` equal contiguous groups (``x.numel()`` must be
divisible by ``groups``). For group g, with ``qmax = 2**(bits-1) - 1``:

* ``s_g = absmax(x_g) / qmax`` in fp32, replaced by 1 when it is 0, so an
  all-zero group (or one whose scale underflows) dequantizes to zeros;
* ``q = clamp(round_half_to_even(x / s_g), -qmax-1, qmax)`` with an IEEE
  fp32 division (never a multiply by the reciprocal);
* ``dequantize = (float(q) * s_g).to(out_dtype)``.

The C++ CPU op and the CUDA kernels implement the same steps, so all three
agree bit for bit on finite inputs. Every op here is a tensor-tensor op (the
divisor of ``absmax / qmax`` is a tensor too) because torch's CUDA division
by a CPU scalar multiplies by the reciprocal, which would round differently.
"""
from typing import Tuple

import torch

__all__ = ["SUPPORTED_DTYPES", "check_quantize_args", "quantize_reference", "dequantize_reference"]

#: Input dtypes of quantize and output dtypes of dequantize.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_quantize_args(numel: int, groups: int, bits: int = 8) -> None:
    """Raise ValueError unless ``numel`` splits into ``groups`` and ``bits`` fits int8."""
    if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 0:
        raise ValueError(f"quantize: groups must be a positive int, got {groups!r}")
    if numel % groups != 0:
        raise ValueError(f"quantize: numel {numel} is not divisible by groups={groups}; "
                         f"pick a group count that divides the tensor size")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"quantize: bits must be an int in [2, 8] (values are stored as int8), got {bits!r}")


def quantize_reference(x: torch.Tensor, groups: int, bits: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (any shape, fp32/fp16/bf16) per group.

    Returns ``(q, scales)``: ``q`` is int8 with ``x``'s shape, ``scales`` is
    fp32 of shape ``(groups,)``; see [Note: quantizer convention].
    """
    check_quantize_args(x.numel(), groups, bits)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"quantize: unsupported dtype {x.dtype}; expected one of {SUPPORTED_DTYPES}")
    qmax = float(2**(bits - 1) - 1)
    xf = x.detach().reshape(groups, -1).float()
    absmax = xf.abs().amax(dim=1) if xf.shape[1] > 0 else xf.new_zeros(groups)
    scales = absmax / torch.full_like(absmax, qmax)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    q = torch.round(xf / scales[:, None]).clamp_(-qmax - 1, qmax).to(torch.int8)
    return q.reshape(x.shape), scales


def dequantize_reference(q: torch.Tensor, scales: torch.Tensor, groups: int, out_dtype: torch.dtype) -> torch.Tensor:
    """``(float(q) * scale_of_its_group).to(out_dtype)``, with ``q``'s shape.

    ``q``: int8, any shape with ``numel % groups == 0``; ``scales``: ``(groups,)`` fp32.
    """
    check_quantize_args(q.numel(), groups)
    if q.dtype != torch.int8:
        raise TypeError(f"dequantize: q must be int8, got {q.dtype}")
    if scales.numel() != groups:
        raise ValueError(f"dequantize: expected {groups} scales, got {scales.numel()}")
    if out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dequantize: unsupported out_dtype {out_dtype}; expected one of {SUPPORTED_DTYPES}")
    out = q.reshape(groups, -1).float() * scales.reshape(groups, 1).float()
    return out.to(out_dtype).reshape(q.shape)
