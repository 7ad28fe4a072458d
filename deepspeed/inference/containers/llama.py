"""Llama / Llama-2 / Llama-3 (grouped-query attention included), plus Mistral and Qwen2, which share the layout.

GQA: `num_key_value_heads` may be smaller than `num_attention_heads`; the
fused qkv weight then has nq*hd q rows and nkv*hd rows each for k and v,
and the decode loop lets each group of nq/nkv query heads read one cached
kv head (no repeated K/V in the cache).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from deepspeed.inference.containers.base import (LayerView, ModelPolicy, NormSpec, activation_fn, linear_params,
                                                  rotary_table_from)

__all__ = ["LlamaPolicy"]


def _rms(module: torch.nn.Module) -> NormSpec:
    eps = getattr(module, "variance_epsilon", None)
    return NormSpec("rms", module.weight, None, float(eps if eps is not None else module.eps))


class LlamaPolicy(ModelPolicy):
    layer_class_names = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")

    @classmethod
    def _find_layers(cls, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.model.layers

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.base = model.model
        self.act = activation_fn(self.config.hidden_act)

    def supports(self, total_len: int) -> Optional[str]:
        window = getattr(self.config, "sliding_window", None)
        uses_window = getattr(self.config, "use_sliding_window", True)
        if window is not None and uses_window and total_len > window:
            return f"sliding-window attention (window {window} < {total_len} tokens)"
        return None

    def lora_roles(self, layer: torch.nn.Module) -> Dict[str, torch.nn.Module]:
        attn, mlp = layer.self_attn, layer.mlp
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "out": attn.o_proj,
                "gate": mlp.gate_proj, "up": mlp.up_proj, "mlp_out": mlp.down_proj}

    def layer_view(self, layer: torch.nn.Module) -> LayerView:
        attn, mlp = layer.self_attn, layer.mlp
        (qw, qb), (kw, kb), (vw, vb) = (linear_params(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        head_dim = attn.head_dim
        qkv_w = torch.cat([qw, kw, vw])
        qkv_b = torch.cat([qb, kb, vb]) if qb is not None else None
        (gw, gb), (uw, ub) = linear_params(mlp.gate_proj), linear_params(mlp.up_proj)
        gate_up_w = torch.cat([gw, uw])
        gate_up_b = torch.cat([gb, ub]) if gb is not None else None
        out_w, out_b = linear_params(attn.o_proj)
        down_w, down_b = linear_params(mlp.down_proj)
        owned = [t for t in (qkv_w, qkv_b, gate_up_w, gate_up_b) if t is not None]
        return LayerView(qkv_w=qkv_w, qkv_b=qkv_b, qkv_layout="blocked", n_heads=qw.shape[0] // head_dim,
                         n_kv_heads=kw.shape[0] // head_dim, head_dim=head_dim, out_w=out_w, out_b=out_b,
                         mlp_in_w=gate_up_w, mlp_in_b=gate_up_b, mlp_out_w=down_w, mlp_out_b=down_b, act=self.act,
                         gated=True, attn_norm=_rms(layer.input_layernorm), mlp_norm=_rms(layer.post_attention_layernorm),
                         residual="pre", rotary_dims=head_dim, attn_scale=attn.scaling, owned=owned)

    def non_layer_modules(self) -> List[torch.nn.Module]:
        return [self.base.embed_tokens, self.base.norm, self.model.lm_head]

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.base.embed_tokens.weight)

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return _rms(self.base.norm)(hidden)

    def lm_head(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        lm = self.model.lm_head
        return lm.weight, lm.bias

    def rotary_table(self, length: int, device: torch.device,
                     dtype: torch.dtype) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return rotary_table_from(self.base.rotary_emb, length, device, dtype)
