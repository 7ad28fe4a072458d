"""Per-group symmetric int8 quantize/dequantize with backend dispatch.

One convention ([Note: quantizer convention], reference.py), three
implementations: a CUDA op (``QuantizerBuilder``), a C++ CPU op
(``CPUQuantizerBuilder``) and the pure-torch reference. ``backend="auto"``
picks the op for the tensor's device and falls back to the reference (with
one warning per process) when that op cannot be built, so ZeRO++ keeps
working on machines without a compiler; an explicit backend never falls
back, which is what tests want.
"""
import functools
import logging
from types import ModuleType
from typing import Optional, Tuple

import torch

from deepspeed.ops.op_builder import CPUQuantizerBuilder, OpBuildError, QuantizerBuilder

from .reference import SUPPORTED_DTYPES, check_quantize_args, dequantize_reference, quantize_reference

__all__ = ["BACKENDS", "quantize", "dequantize", "resolve_backend"]

logger = logging.getLogger(__name__)

#: Accepted values of the ``backend`` argument.
BACKENDS = ("auto", "torch", "cpp", "cuda")


@functools.lru_cache(maxsize=None)
def _load_op(kind: str) -> Tuple[Optional[ModuleType], Optional[str]]:
    """(module, None) for the "cpp" or "cuda" op, or (None, why it is unavailable).

    Cached so a failed build is attempted (and reported) once per process,
    not on every call of a hot collective.
    """
    builder = CPUQuantizerBuilder() if kind == "cpp" else QuantizerBuilder()
    try:
        return builder.load(), None
    except (OpBuildError, RuntimeError, OSError, ImportError) as err:
        why = f"{type(err).__name__}: {err}"
        logger.warning("quantizer: the %s op is unavailable (%s); backend='auto' uses the pure-torch reference",
                       kind, why)
        return None, why


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The concrete backend ("torch", "cpp" or "cuda") used for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"quantizer: unknown backend {backend!r}; expected one of {BACKENDS}")
    native = "cuda" if device.type == "cuda" else "cpp" if device.type == "cpu" else "torch"
    if backend == "torch":
        return "torch"
    if backend != "auto":
        if backend != native:
            raise ValueError(f"quantizer: backend {backend!r} cannot run on a {device.type} tensor")
        op, why = _load_op(backend)
        if op is None:
            raise OpBuildError(f"quantizer: the {backend} op is unavailable: {why}")
        return backend
    if native == "torch":
        return "torch"
    op, _ = _load_op(native)
    return native if op is not None else "torch"


def quantize(x: torch.Tensor, groups: int, bits: int = 8, backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x`` (any shape, fp32/fp16/bf16) in ``groups`` equal contiguous groups.

    Returns ``(q, scales)``: ``q`` int8 with ``x``'s shape, ``scales`` fp32
    ``(groups,)``, both on ``x``'s device. Raises ValueError when
    ``x.numel()`` is not divisible by ``groups``.
    """
    check_quantize_args(x.numel(), groups, bits)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"quantize: unsupported dtype {x.dtype}; expected one of {SUPPORTED_DTYPES}")
    chosen = resolve_backend(x.device, backend)
    if chosen == "torch":
        return quantize_reference(x, groups, bits)
    op, _ = _load_op(chosen)
    return op.quantize(x.detach(), groups, bits)


def dequantize(q: torch.Tensor, scales: torch.Tensor, groups: int, out_dtype: torch.dtype,
               backend: str = "auto") -> torch.Tensor:
    """``q * scale`` per group, cast to ``out_dtype`` in the same pass; ``q``'s shape.

    ``q``: int8 from :func:`quantize`; ``scales``: its ``(groups,)`` fp32 scales.
    """
    check_quantize_args(q.numel(), groups)
    if q.dtype != torch.int8:
        raise TypeError(f"dequantize: q must be int8, got {q.dtype}")
    if scales.numel() != groups:
        raise ValueError(f"dequantize: expected {groups} scales, got {scales.numel()}")
    if out_dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dequantize: unsupported out_dtype {out_dtype}; expected one of {SUPPORTED_DTYPES}")
    chosen = resolve_backend(q.device, backend)
    if chosen == "torch":
        return dequantize_reference(q, scales, groups, out_dtype)
    op, _ = _load_op(chosen)
    return op.dequantize(q, scales.float(), groups, out_dtype)
