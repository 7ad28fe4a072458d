"""LoRA layers, their conversion helpers and the optimizer groups with a separate LoRA lr (spec §5)."""
from dschat.lora.lora import (
    LORA_PARAM_NAMES,
    LinearLayer_LoRA,
    convert_linear_layer_to_lora,
    convert_lora_to_linear_layer,
    make_model_gradient_checkpointing_compatible,
    only_optimize_lora_parameters,
    unfuse_lora_layers,
)
from dschat.lora.param_groups import NO_DECAY_NAME_LIST, get_optimizer_grouped_parameters

__all__ = [
    "LinearLayer_LoRA",
    "LORA_PARAM_NAMES",
    "NO_DECAY_NAME_LIST",
    "convert_linear_layer_to_lora",
    "convert_lora_to_linear_layer",
    "unfuse_lora_layers",
    "only_optimize_lora_parameters",
    "make_model_gradient_checkpointing_compatible",
    "get_optimizer_grouped_parameters",
]
