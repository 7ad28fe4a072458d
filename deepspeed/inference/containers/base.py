"""The uniform view of one decoder layer, and the policy interface each model family implements.

[Note: container views]
The decode loop (decode.py) never calls an HF module. A *policy* maps each
HF decoder layer to a `LayerView`: the tensors the loop needs, already in
the layout it expects:

* attention in: one fused qkv weight, either *blocked* (all q rows, then
  all k rows, then all v rows; built once per generate call from separate
  q/k/v linears) or *per-head* (GPT-NeoX's native ``query_key_value``:
  for each head its q, k and v rows, used as is, no copy),
* the attention output, MLP in (or gate and up stacked, for gated MLPs),
  MLP out,
* the two norms, the residual arrangement, and the rotary width.

Views read the training tensors at the moment they are built, so LoRA must
be fused (and, under ZeRO-3, parameters gathered) before `layer_view` is
called. The model-level parts (embeddings, positions, final norm, LM head,
rotary table) are methods of the policy. Adding a family means adding one
policy file and listing it in `containers/__init__.py`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F


__all__ = ["NormSpec", "LayerView", "LINEAR_ROLES", "ModelPolicy", "linear_params", "activation_fn", "rotary_table_from",
           "KERNEL_ACTIVATIONS"]


def linear_params(module: torch.nn.Module) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of a linear layer, looking through LoRA wrappers.

    DS-Chat's LoRA layer keeps the frozen `weight`/`bias` itself; peft's
    wraps the original linear as `base_layer`.
    """
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module.weight, getattr(module, "bias", None)


#: HF activation name -> the name the fused bias+activation kernel knows it by
KERNEL_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                      "silu": "silu", "swish": "silu"}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The torch function of an HF activation name (the subset our families use)."""
    table: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "relu": F.relu,
        "gelu": F.gelu,
        "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "silu": F.silu,
        "swish": F.silu,
    }
    if name not in table:
        raise NotImplementedError(f"hybrid engine: activation {name!r} has no decode-path implementation")
    return table[name]


@dataclass
class NormSpec:
    """A LayerNorm or an RMSNorm, as the HF module computes it."""

    kind: str  # "layer" | "rms"
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    eps: float

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layer":
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        # Llama's RMSNorm: statistics in fp32, scale after casting back.
        dtype = x.dtype
        h = x.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


#: the view's linear layers: `<role>_w` and `<role>_b` are each one's weight and bias
LINEAR_ROLES = ("qkv", "out", "mlp_in", "mlp_out")


@dataclass
class LayerView:
    """Everything the decode loop needs from one layer (see the note at the top).

    Weight shapes are (out_features, in_features), as in nn.Linear. Under
    tensor parallelism (tp.py) the head counts and MLP width are the local
    shard's, and `reduce_group` names the group the attention and MLP
    outputs are summed over.
    """

    qkv_w: torch.Tensor
    qkv_b: Optional[torch.Tensor]
    qkv_layout: str  # "blocked" | "per_head"
    n_heads: int
    n_kv_heads: int
    head_dim: int
    out_w: torch.Tensor
    out_b: Optional[torch.Tensor]
    mlp_in_w: torch.Tensor  # gated: gate rows then up rows
    mlp_in_b: Optional[torch.Tensor]
    mlp_out_w: torch.Tensor
    mlp_out_b: Optional[torch.Tensor]
    act: Callable[[torch.Tensor], torch.Tensor]
    gated: bool
    attn_norm: NormSpec
    mlp_norm: NormSpec
    residual: str  # "pre" (pre-LN), "post" (post-LN, OPT-350m), "parallel" (GPT-NeoX)
    rotary_dims: int = 0
    #: softmax scale of the attention scores (HF passes head_dim ** -0.5 explicitly)
    attn_scale: float = 1.0
    #: OPT scales q after the projection and runs attention with scale 1
    q_scale: Optional[float] = None
    reduce_group: Optional[object] = None
    #: the activation's name in kernels.ACTIVATIONS, when the fused bias+activation kernel computes it
    act_name: str = ""
    #: tensors this view owns (copies), for accounting
    owned: List[torch.Tensor] = field(default_factory=list)
    #: role -> packed copy of that weight for one call's decode steps (kernels.PackedWeight)
    packed: Dict[str, Any] = field(default_factory=dict)

    def with_packed(self, pack: Callable[[torch.Tensor], Any]) -> "LayerView":
        """A copy of the view that also carries `pack(weight)` for each of its four matrices, by role
        ("qkv", "out", "mlp_in", "mlp_out"); see [Note: decode weight packing] in kernels.py."""
        return replace(self, packed={role: pack(getattr(self, role + "_w")) for role in LINEAR_ROLES})

    def split_qkv(self, qkv: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """qkv (B, S, D) -> q (B, nq, S, hd), k and v (B, nkv, S, hd)."""
        b, s, _ = qkv.shape
        hd = self.head_dim
        if self.qkv_layout == "per_head":
            q, k, v = qkv.view(b, s, self.n_heads, 3 * hd).split(hd, dim=-1)
        else:
            q, k, v = qkv.split([self.n_heads * hd, self.n_kv_heads * hd, self.n_kv_heads * hd], dim=-1)
            q = q.view(b, s, self.n_heads, hd)
            k = k.view(b, s, self.n_kv_heads, hd)
            v = v.view(b, s, self.n_kv_heads, hd)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class ModelPolicy(abc.ABC):
    """Maps one HF causal-LM family onto the uniform view.

    Subclasses name the HF layer classes they handle (`layer_class_names`)
    and implement the per-layer and model-level accessors below.
    """

    #: HF decoder-layer class names this policy handles
    layer_class_names: Tuple[str, ...] = ()

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.config = model.config
        self.layers: List[torch.nn.Module] = list(self._layer_list())

    # ------------------------------------------------------------ detection
    @classmethod
    def matches(cls, model: torch.nn.Module) -> bool:
        """Whether `model` is a causal LM whose decoder layers this policy handles."""
        try:
            layers = cls._find_layers(model)
        except AttributeError:
            return False
        return bool(layers) and all(type(m).__name__ in cls.layer_class_names for m in layers)

    @classmethod
    @abc.abstractmethod
    def _find_layers(cls, model: torch.nn.Module) -> torch.nn.ModuleList:
        """The decoder layers; raises AttributeError if the structure does not fit."""

    def _layer_list(self) -> torch.nn.ModuleList:
        return self._find_layers(self.model)

    # ---------------------------------------------------------------- layers
    @abc.abstractmethod
    def lora_roles(self, layer: torch.nn.Module) -> Dict[str, torch.nn.Module]:
        """role -> linear module: q, k, v (or qkv), out, mlp_in (or gate, up), mlp_out."""

    @abc.abstractmethod
    def layer_view(self, layer: torch.nn.Module) -> LayerView:
        """Build the view from the layer's current (gathered, LoRA-fused) tensors."""

    def supports(self, total_len: int) -> Optional[str]:
        """None if the decode path handles sequences of `total_len`; else why not."""
        return None

    # ----------------------------------------------------------- model level
    @abc.abstractmethod
    def non_layer_modules(self) -> List[torch.nn.Module]:
        """Modules outside the decoder layers whose parameters generation reads."""

    @abc.abstractmethod
    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """input_ids, positions (B, S) -> hidden states (B, S, H)."""

    @abc.abstractmethod
    def final_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """What the LM head reads: hidden (B, H) after the final norm (and output projection, if any)."""

    @abc.abstractmethod
    def lm_head(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(weight (V, H'), bias (V,) or None) of the LM head."""

    def rotary_table(self, length: int, device: torch.device,
                     dtype: torch.dtype) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """(cos, sin) of shape (length, rotary_dims) for positions 0..length-1, or None."""
        return None

    def non_layer_params(self) -> List[torch.nn.Parameter]:
        seen: Dict[int, torch.nn.Parameter] = {}
        for module in self.non_layer_modules():
            for p in module.parameters():
                seen[id(p)] = p
        return list(seen.values())

    def layer_params(self, layer: torch.nn.Module) -> List[torch.nn.Parameter]:
        return list(layer.parameters())


def rotary_table_from(rotary: torch.nn.Module, length: int, device: torch.device,
                      dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """Ask an HF rotary module for cos/sin at positions 0..length-1.

    Using the model's own module keeps every RoPE variant (scaled, llama3,
    partial) exactly as HF computes it; each entry depends only on its own
    position, so a table lookup equals HF's per-call computation.
    """
    positions = torch.arange(length, device=device).unsqueeze(0)
    probe = torch.empty(1, 1, 1, device=device, dtype=dtype)
    cos, sin = rotary(probe, positions)
    return cos[0], sin[0]
