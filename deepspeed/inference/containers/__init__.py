"""Container policies: one file per model family (see [Note: container views] in base.py)."""
from typing import Optional, Tuple, Type

import torch

from deepspeed.inference.containers.base import LayerView, ModelPolicy, NormSpec
from deepspeed.inference.containers.gpt_neox import GPTNeoXPolicy
from deepspeed.inference.containers.llama import LlamaPolicy
from deepspeed.inference.containers.opt import OPTPolicy

__all__ = ["POLICIES", "find_policy", "LayerView", "ModelPolicy", "NormSpec", "OPTPolicy", "LlamaPolicy",
           "GPTNeoXPolicy"]

#: Every family the decode path supports; the first match wins.
POLICIES: Tuple[Type[ModelPolicy], ...] = (OPTPolicy, LlamaPolicy, GPTNeoXPolicy)


def find_policy(model: torch.nn.Module) -> Optional[ModelPolicy]:
    """The policy for `model` (an HF causal LM, possibly wrapped by peft), or None if no family matches."""
    if hasattr(model, "get_base_model"):  # peft's PeftModel: the HF model sits underneath
        model = model.get_base_model()
    for cls in POLICIES:
        if cls.matches(model):
            return cls(model)
    return None
