"""Fold LoRA updates into the base weights for generation, and take them out again.

Two LoRA flavours are recognised by their attributes, never by import:

* DS-Chat's `LinearLayer_LoRA`: `lora_right_weight` (in, r),
  `lora_left_weight` (r, out), `lora_scaling`, `weight`, `fuse_lora`;
  update = scaling * left^T @ right^T, shape (out, in).
* peft's `LoraLayer`: `lora_A` / `lora_B` ModuleDicts, `scaling` dict,
  `active_adapters`, `base_layer`; update = scaling[a] * B_a @ A_a for each
  active, not yet merged adapter (transposed when `fan_in_fan_out`).

The update is computed in fp32 and added to the weight in place, so under
ZeRO-3 it lands in the gathered tensor (the caller gathers weight and
factors first) and needs no extra memory. Unfusing subtracts the same
update. Before fusing, each weight's fp64 sum is recorded; after unfusing
the sum must come back to within the rounding of the two casts, which
catches a double unfuse, a missed one, or factors that changed in between.
`LoraFusion` refuses to fuse twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional

import torch

__all__ = ["LoraAdapter", "find_lora_adapter", "collect_lora_adapters", "LoraFusion", "LoraRestoreError"]


class LoraRestoreError(RuntimeError):
    """Unfusing did not bring a base weight back to its pre-fusion value."""


def _base_linear(module: torch.nn.Module) -> torch.nn.Module:
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


@dataclass
class LoraAdapter:
    """One LoRA-carrying linear: how to read its update and which weight receives it."""

    module: torch.nn.Module
    kind: str  # "dschat" | "peft"

    @property
    def weight(self) -> torch.nn.Parameter:
        return self.module.weight if self.kind == "dschat" else _base_linear(self.module).weight

    def factor_params(self) -> List[torch.nn.Parameter]:
        """The trainable LoRA tensors (gathered together with the weight under ZeRO-3)."""
        if self.kind == "dschat":
            return [self.module.lora_right_weight, self.module.lora_left_weight]
        params: List[torch.nn.Parameter] = []
        for name in self._peft_adapters():
            params += list(self.module.lora_A[name].parameters()) + list(self.module.lora_B[name].parameters())
        return params

    def _peft_adapters(self) -> List[str]:
        m = self.module
        if getattr(m, "disable_adapters", False):
            return []
        active = m.active_adapters if isinstance(m.active_adapters, (list, tuple)) else [m.active_adapters]
        merged = set(getattr(m, "merged_adapters", []))
        return [a for a in active if a in m.lora_A and a not in merged]

    def already_fused(self) -> bool:
        """Fused by someone else (e.g. DS-Chat before saving): leave it alone."""
        return self.kind == "dschat" and bool(getattr(self.module, "fuse_lora", False))

    def delta(self) -> Optional[torch.Tensor]:
        """The update, (out, in) in fp32, or None if there is nothing to add."""
        m = self.module
        if self.kind == "dschat":
            left, right = m.lora_left_weight.float(), m.lora_right_weight.float()
            return (left.t() @ right.t()) * float(m.lora_scaling)
        total: Optional[torch.Tensor] = None
        for name in self._peft_adapters():
            if getattr(m, "use_dora", {}).get(name, False):
                raise NotImplementedError("hybrid engine: DoRA adapters cannot be fused by the decode path")
            a, b = m.lora_A[name].weight.float(), m.lora_B[name].weight.float()
            update = (b @ a) * float(m.scaling[name])
            if getattr(m, "fan_in_fan_out", False):
                update = update.t()
            total = update if total is None else total + update
        return total

    def mark(self, fused: bool) -> None:
        """Tell the layer's own forward that the update is (not) in the weight, so it is not added twice."""
        if self.kind == "dschat":
            self.module.fuse_lora = fused


def find_lora_adapter(module: torch.nn.Module) -> Optional[LoraAdapter]:
    if all(hasattr(module, a) for a in ("lora_right_weight", "lora_left_weight", "lora_scaling", "weight")):
        return LoraAdapter(module, "dschat")
    if all(hasattr(module, a) for a in ("lora_A", "lora_B", "scaling", "base_layer", "active_adapters")):
        return LoraAdapter(module, "peft")
    return None


def collect_lora_adapters(modules: Iterable[torch.nn.Module]) -> List[LoraAdapter]:
    """Every LoRA linear found in (the subtrees of) `modules`, each once."""
    found, seen = [], set()
    for root in modules:
        for m in root.modules():
            adapter = find_lora_adapter(m)
            if adapter is not None and id(m) not in seen:
                seen.add(id(m))
                found.append(adapter)
    return found


def _apply(weight: torch.Tensor, delta: torch.Tensor, sign: float) -> None:
    with torch.no_grad():
        if weight.dtype == torch.float32:
            weight.data.add_(delta.to(weight.device), alpha=sign)
        else:
            # Add in fp32 and round once, instead of rounding the update first.
            weight.data.copy_((weight.data.float() + sign * delta.to(weight.device)).to(weight.dtype))


class LoraFusion:
    """Fuse a set of adapters into their weights, then unfuse them (checked).

    The caller makes the weights and LoRA factors readable first (under
    ZeRO-3: gathered) and keeps them so until `unfuse` returns.
    """

    def __init__(self, adapters: List[LoraAdapter]) -> None:
        self.adapters = adapters
        self.is_lora_fused = False
        # Per fused adapter: (adapter, fp64 sum before, tolerance).
        self._records: List[tuple] = []

    @torch.no_grad()
    def fuse(self) -> None:
        if self.is_lora_fused:
            raise RuntimeError("LoRA is already fused into the base weights; unfuse before fusing again")
        self._records = []
        for adapter in self.adapters:
            if adapter.already_fused():
                continue
            delta = adapter.delta()
            if delta is None:
                continue
            w = adapter.weight
            if tuple(delta.shape) != tuple(w.shape):
                raise ValueError(f"LoRA update of shape {tuple(delta.shape)} does not match its base weight "
                                 f"{tuple(w.shape)} in {type(adapter.module).__name__}")
            before = float(w.detach().double().sum())
            eps = torch.finfo(w.dtype).eps
            tol = 4 * eps * (float(w.detach().double().abs().sum()) + float(delta.double().abs().sum())) + 1e-30
            _apply(w, delta, 1.0)
            adapter.mark(True)
            self._records.append((adapter, before, tol))
        self.is_lora_fused = True

    @torch.no_grad()
    def unfuse(self, check: bool = True) -> None:
        if not self.is_lora_fused:
            return
        bad = []
        for adapter, before, tol in self._records:
            w = adapter.weight
            _apply(w, adapter.delta(), -1.0)
            adapter.mark(False)
            if check and abs(float(w.detach().double().sum()) - before) > tol:
                bad.append(type(adapter.module).__name__)
        self._records = []
        self.is_lora_fused = False
        if bad:
            raise LoraRestoreError(f"unfusing LoRA did not restore {len(bad)} base weight(s) ({bad[:3]}...): "
                                   f"were the LoRA factors changed while fused?")
