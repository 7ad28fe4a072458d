"""Transformer ops (the inference kernels of the Hybrid Engine)."""
