"""GPT-NeoX / Pythia: fused per-head qkv, partial rotary, parallel (or sequential) residual."""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from deepspeed.inference.containers.base import (KERNEL_ACTIVATIONS, LayerView, ModelPolicy, NormSpec, activation_fn,
                                                 linear_params, rotary_table_from)

__all__ = ["GPTNeoXPolicy"]


def _norm(module: torch.nn.LayerNorm) -> NormSpec:
    return NormSpec("layer", module.weight, module.bias, module.eps)


class GPTNeoXPolicy(ModelPolicy):
    layer_class_names = ("GPTNeoXLayer",)

    @classmethod
    def _find_layers(cls, model: torch.nn.Module) -> torch.nn.ModuleList:
        return model.gpt_neox.layers

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__(model)
        self.base = model.gpt_neox
        self.act = activation_fn(self.config.hidden_act)
        self.act_name = KERNEL_ACTIVATIONS.get(self.config.hidden_act, "")

    def lora_roles(self, layer: torch.nn.Module) -> Dict[str, torch.nn.Module]:
        return {"qkv": layer.attention.query_key_value, "out": layer.attention.dense,
                "mlp_in": layer.mlp.dense_h_to_4h, "mlp_out": layer.mlp.dense_4h_to_h}

    def layer_view(self, layer: torch.nn.Module) -> LayerView:
        attn = layer.attention
        # The HF weight already is the per-head fused layout: used as is, no copy.
        qkv_w, qkv_b = linear_params(attn.query_key_value)
        out_w, out_b = linear_params(attn.dense)
        in_w, in_b = linear_params(layer.mlp.dense_h_to_4h)
        down_w, down_b = linear_params(layer.mlp.dense_4h_to_h)
        n_heads = qkv_w.shape[0] // (3 * attn.head_size)
        return LayerView(qkv_w=qkv_w, qkv_b=qkv_b, qkv_layout="per_head", n_heads=n_heads, n_kv_heads=n_heads,
                         head_dim=attn.head_size, out_w=out_w, out_b=out_b, mlp_in_w=in_w, mlp_in_b=in_b,
                         mlp_out_w=down_w, mlp_out_b=down_b, act=self.act, gated=False,
                         act_name=self.act_name,
                         attn_norm=_norm(layer.input_layernorm), mlp_norm=_norm(layer.post_attention_layernorm),
                         residual="parallel" if layer.use_parallel_residual else "pre",
                         rotary_dims=attn.rotary_ndims, attn_scale=attn.scaling)

    def non_layer_modules(self) -> List[torch.nn.Module]:
        return [self.base.embed_in, self.base.final_layer_norm, self.model.get_output_embeddings()]

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.base.embed_in.weight)

    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        return _norm(self.base.final_layer_norm)(hidden)

    def lm_head(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        head = self.model.get_output_embeddings()
        return head.weight, head.bias

    def rotary_table(self, length: int, device: torch.device,
                     dtype: torch.dtype) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        return rotary_table_from(self.base.rotary_emb, length, device, dtype)
