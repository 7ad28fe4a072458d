"""OPT (OPTForCausalLM): learned positions with offset 2, q scaled after projection, pre- or post-LN."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from deepspeed.inference.containers.base import (KERNEL_ACTIVATIONS, LayerView, ModelPolicy, NormSpec, activation_fn,
                                                 linear_params)

__all__ = ["OPTPolicy"]

# OPT's learned position table is shifted by two rows (a fairseq leftover).
_POSITION_OFFSET = 2


def _norm(module: torch.nn.LayerNorm) -> NormSpec:
    return NormSpec("layer", module.weight, module.bias, module.eps)


class OPTPolicy(ModelPolicy):
    layer_class_names = ("OPTDecoderLayer",)

    @classmethod
    def _find_layers(cls, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.model.decoder.layers

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.decoder = model.model.decoder
        self.act = activation_fn(self.config.activation_function)
        self.act_name = KERNEL_ACTIVATIONS.get(self.config.activation_function, "")

    def lora_roles(self, layer: torch.nn.Module) -> Dict[str, torch.nn.Module]:
        attn = layer.self_attn
        return {"q": attn.q_proj, "k": attn.k_proj, "v": attn.v_proj, "out": attn.out_proj,
                "mlp_in": layer.fc1, "mlp_out": layer.fc2}

    def layer_view(self, layer: torch.nn.Module) -> LayerView:
        attn = layer.self_attn
        (qw, qb), (kw, kb), (vw, vb) = (linear_params(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        qkv_w = torch.cat([qw, kw, vw])
        qkv_b = torch.cat([qb, kb, vb]) if qb is not None else None
        out_w, out_b = linear_params(attn.out_proj)
        in_w, in_b = linear_params(layer.fc1)
        down_w, down_b = linear_params(layer.fc2)
        return LayerView(qkv_w=qkv_w, qkv_b=qkv_b, qkv_layout="blocked", n_heads=attn.num_heads,
                         n_kv_heads=attn.num_heads, head_dim=attn.head_dim, out_w=out_w, out_b=out_b,
                         mlp_in_w=in_w, mlp_in_b=in_b, mlp_out_w=down_w, mlp_out_b=down_b, act=self.act,
                         act_name=self.act_name,
                         gated=False, attn_norm=_norm(layer.self_attn_layer_norm), mlp_norm=_norm(layer.final_layer_norm),
                         residual="pre" if layer.do_layer_norm_before else "post", q_scale=attn.scaling, attn_scale=1.0,
                         owned=[qkv_w] + ([qkv_b] if qkv_b is not None else []))

    def non_layer_modules(self) -> List[torch.nn.Module]:
        d = self.decoder
        mods = [d.embed_tokens, d.embed_positions, self.model.lm_head]
        mods += [m for m in (d.project_in, d.project_out, d.final_layer_norm) if m is not None]
        return mods

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        h = F.embedding(input_ids, d.embed_tokens.weight)
        if d.project_in is not None:
            h = F.linear(h, d.project_in.weight)
        return h + F.embedding(positions + _POSITION_OFFSET, d.embed_positions.weight)

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        if d.final_layer_norm is not None:
            hidden = F.layer_norm(hidden, (hidden.shape[-1],), d.final_layer_norm.weight, d.final_layer_norm.bias,
                                  d.final_layer_norm.eps)
        if d.project_out is not None:
            hidden = F.linear(hidden, d.project_out.weight)
        return hidden

    def lm_head(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        lm = self.model.lm_head
        return lm.weight, lm.bias
