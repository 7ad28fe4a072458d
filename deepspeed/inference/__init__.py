"""Inference side of the Hybrid Engine: container policies, LoRA fusion, the KV-cache decode loop, TP sharding."""
