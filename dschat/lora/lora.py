"""LoRA for DS-Chat (spec §5): a low-rank update beside a frozen linear weight.

`LinearLayer_LoRA` computes ``x W^T + b + (drop(x) @ R @ L) * s`` with
R = `lora_right_weight` (in, r), L = `lora_left_weight` (r, out) and
s = `lora_scaling / r`. L starts at zero, so a freshly converted model
computes exactly what it computed before.

Fusing folds the update into W (``W += s * L^T R^T``) so that generation and
saving see a plain linear layer; unfusing subtracts the same term. The
`fuse_lora` flag makes each direction idempotent. The delta is computed in
fp32 and cast once, so a fuse/unfuse round trip on a 16-bit weight loses only
the rounding of that one cast.

Under ZeRO-3 a weight may be partitioned (it carries `ds_id` and an empty
`.data`); then its shape comes from `ds_shape` and fuse/unfuse gather the
three tensors with `GatheredParameters(modifier_rank=0)`, a collective all
ranks enter together. That branch is never taken before ZeRO-3 exists.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dschat.utils import gathered_parameters

__all__ = [
    "LinearLayer_LoRA",
    "LORA_PARAM_NAMES",
    "convert_linear_layer_to_lora",
    "convert_lora_to_linear_layer",
    "unfuse_lora_layers",
    "only_optimize_lora_parameters",
    "make_model_gradient_checkpointing_compatible",
]

# Name fragments of the trainable LoRA factors; saving drops them, the
# optimizer groups give them their own learning rate.
LORA_PARAM_NAMES = ("lora_right_weight", "lora_left_weight")


class LinearLayer_LoRA(nn.Module):
    """A frozen linear layer plus a trainable rank-`lora_dim` update.

    `weight` (out, in) and `bias` (out,) are the original layer's parameters,
    reused (not copied) so ZeRO-3 partitions and optimizer references stay
    valid. The `lora_droppout` spelling is DS-Chat's.
    """

    def __init__(self, weight: nn.Parameter, lora_dim: int = 0, lora_scaling: float = 1,
                 lora_droppout: float = 0, bias: Optional[nn.Parameter] = None) -> None:
        super().__init__()
        if lora_dim <= 0:
            raise ValueError(f"LoRA rank must be > 0, got lora_dim={lora_dim}")
        self.weight = weight
        self.bias = bias
        # A partitioned ZeRO-3 weight has an empty .data; its real shape is ds_shape.
        rows, columns = tuple(getattr(weight, "ds_shape", weight.shape))
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.lora_right_weight = nn.Parameter(torch.zeros(columns, lora_dim, **factory))  # (in, r)
        self.lora_left_weight = nn.Parameter(torch.zeros(lora_dim, rows, **factory))  # (r, out)
        self.lora_scaling = lora_scaling / lora_dim
        self.lora_dropout: nn.Module = nn.Dropout(lora_droppout) if lora_droppout > 0 else nn.Identity()
        self.reset_parameters()
        self.weight.requires_grad = False
        # True while the update is folded into `weight` (generation, saving).
        self.fuse_lora = False

    def reset_parameters(self) -> None:
        """Right factor kaiming-uniform (a=sqrt(5)), left factor zero: the update starts at 0."""
        nn.init.kaiming_uniform_(self.lora_right_weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_left_weight)

    def _delta(self) -> torch.Tensor:
        """The fused update ``s * L^T R^T`` of shape (out, in), in fp32."""
        left, right = self.lora_left_weight.float(), self.lora_right_weight.float()
        return (left.t() @ right.t()) * self.lora_scaling

    def _apply_delta(self, sign: float) -> None:
        with torch.no_grad(), gathered_parameters(
                [self.weight, self.lora_right_weight, self.lora_left_weight], modifier_rank=0):
            updated = self.weight.data.float() + sign * self._delta()
            self.weight.data.copy_(updated.to(self.weight.dtype))

    def fuse_lora_weight(self) -> None:
        """Fold the update into `weight` (once; a second call is a no-op)."""
        if not self.fuse_lora:
            self._apply_delta(1.0)
        self.fuse_lora = True

    def unfuse_lora_weight(self) -> None:
        """Take the update out of `weight` again (only if it was fused)."""
        if self.fuse_lora:
            self._apply_delta(-1.0)
        self.fuse_lora = False

    def fused_weight(self) -> torch.Tensor:
        """`weight` with the update applied, without changing the module (for saving).

        Reads the parameters as they are: under ZeRO-3 the caller gathers them.
        """
        with torch.no_grad():
            if self.fuse_lora:
                return self.weight.detach()
            return (self.weight.float() + self._delta()).to(self.weight.dtype)

    def train(self, mode: bool = True) -> "LinearLayer_LoRA":
        """Standard recursive `train`: the original toggled only the dropout and skipped children (spec §13)."""
        return super().train(mode)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out = F.linear(input, self.weight, self.bias)
        if self.fuse_lora:
            return out
        update = self.lora_dropout(input) @ self.lora_right_weight @ self.lora_left_weight
        return out + update * self.lora_scaling

    def extra_repr(self) -> str:
        rows, columns = tuple(getattr(self.weight, "ds_shape", self.weight.shape))
        return (f"in_features={columns}, out_features={rows}, lora_dim={self.lora_right_weight.shape[1]}, "
                f"lora_scaling={self.lora_scaling}, fused={self.fuse_lora}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def convert_linear_layer_to_lora(model: nn.Module, part_module_name: str, lora_dim: int = 0,
                                 lora_scaling: float = 1, lora_droppout: float = 0) -> nn.Module:
    """Replace every `nn.Linear` whose qualified name contains `part_module_name` by a LoRA layer.

    OPT uses "decoder.layers.", Llama "layers."; the LM head and the reward
    `v_head` never match those. Matching nothing is an error: a misspelt (or
    other-architecture) module name would otherwise train no LoRA at all,
    and with `only_optimize_lora` nothing whatsoever.
    """
    if lora_dim <= 0:
        raise ValueError(f"LoRA rank must be > 0, got lora_dim={lora_dim}")
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and part_module_name in name]
    if not names:
        linear = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
        raise ValueError(f"no nn.Linear module name contains {part_module_name!r} (lora_module_name); "
                         f"linear layers are e.g. {linear[:4]}")
    for name in names:
        linear = model.get_submodule(name)
        lora = LinearLayer_LoRA(linear.weight, lora_dim, lora_scaling, lora_droppout, linear.bias)
        lora.train(linear.training)
        _set_submodule(model, name, lora)
    return model


def _lora_layers(model: nn.Module) -> list[LinearLayer_LoRA]:
    return [m for m in model.modules() if isinstance(m, LinearLayer_LoRA)]


def convert_lora_to_linear_layer(model: nn.Module) -> nn.Module:
    """Fuse every LoRA layer in place; the modules stay `LinearLayer_LoRA`, now fused."""
    for layer in _lora_layers(model):
        layer.fuse_lora_weight()
    return model


def unfuse_lora_layers(model: nn.Module) -> nn.Module:
    """Undo `convert_lora_to_linear_layer`, so that training can continue."""
    for layer in _lora_layers(model):
        layer.unfuse_lora_weight()
    return model


def only_optimize_lora_parameters(model: nn.Module, force_optimize_params: Sequence[str] = ()) -> nn.Module:
    """Freeze everything except the LoRA factors and the names listed in `force_optimize_params`.

    Step 2 forces `v_head.weight`, the reward head. A forced name that does
    not exist is an error, since the head would otherwise stay frozen at its
    random initialisation.
    """
    names = {name for name, _ in model.named_parameters()}
    unknown = [name for name in force_optimize_params if name not in names]
    if unknown:
        raise ValueError(f"force_optimize_params names no parameter of the model: {unknown}")
    forced = set(force_optimize_params)
    for name, param in model.named_parameters():
        param.requires_grad = name in forced or any(part in name for part in LORA_PARAM_NAMES)
    return model


def _hf_models(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "enable_input_require_grads")]


def make_model_gradient_checkpointing_compatible(model: nn.Module) -> nn.Module:
    """Make the embedding output require grad, so checkpointed blocks backpropagate into LoRA.

    With frozen embeddings the input of the first checkpointed block does not
    require grad, and reentrant checkpointing then produces no gradient for
    anything inside it. HF models provide `enable_input_require_grads`; it is
    also found on a wrapped base model (the critic's `rwtransformer`). Any
    other model gets a forward hook on its input embeddings.
    """
    hf = _hf_models(model)
    if hf:
        hf[0].enable_input_require_grads()
        return model
    if hasattr(model, "get_input_embeddings"):

        def make_output_require_grad(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        model.get_input_embeddings().register_forward_hook(make_output_require_grad)
    return model
