"""Generation helpers for ZeRO-3 models."""
import contextlib
from typing import Iterator

import torch

from deepspeed.runtime.zero.partition_parameters import GatheredParameters

__all__ = ["unwrap_model_for_generation"]


@contextlib.contextmanager
def unwrap_model_for_generation(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Gather every parameter once and suspend the ZeRO-3 hooks for a whole generate call.

    `model` may be a DeepSpeed engine or the module itself; the unwrapped
    module is yielded. Without per-module gathers, each decoding step costs no
    communication. Afterwards the parameters are released and the hooks resume.
    """
    module = getattr(model, "module", model)
    offload = getattr(module, "_ds_zero_offload", None)
    if offload is None:
        yield module
        return
    offload.coordinator.end_iteration()
    with GatheredParameters(list(module.parameters())):
        offload.suspended = True
        try:
            yield module
        finally:
            offload.suspended = False
