"""Symmetric per-group int8 quantization (ZeRO++ qwZ / MixZ++): CUDA, C++ CPU and torch reference."""
from .quantizer import BACKENDS, dequantize, quantize, resolve_backend
from .reference import dequantize_reference, quantize_reference

__all__ = ["BACKENDS", "quantize", "dequantize", "resolve_backend", "quantize_reference", "dequantize_reference"]
