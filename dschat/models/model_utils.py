"""Building the actor (causal LM) and the critic/reward model, and loading their checkpoints (spec §4).

Nothing is ever downloaded: a preset name (`tiny-opt`, `tiny-llama`) builds
from a config, and anything else loads with `local_files_only=True`, from a
local folder (config.json plus `model.safetensors` or `pytorch_model.bin`)
or from a model already in the HF cache.

Critic/reward checkpoints load strictly (spec §12.8, §13): the original
copied whatever keys matched and ignored the rest, so a wrong folder (a
step-1 actor, a truncated file) silently left a random `v_head`. Here every
missing, unexpected or mis-shaped key is an error that names the keys.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

import deepspeed

from dschat.lora.lora import LORA_PARAM_NAMES
from dschat.models.presets import is_preset, padded_vocab_size, preset_config
from dschat.models.reward_model import RewardModel
from dschat.utils import gathered_parameters, is_rank_0

__all__ = [
    "CheckpointMismatchError",
    "configure_dropout",
    "create_hf_model",
    "create_critic_model",
    "causal_lm_model_to_fp32_loss",
    "find_weights_file",
    "load_weights_file",
    "load_state_dict_into_model",
    "SAFETENSORS_NAME",
    "BIN_NAME",
]

SAFETENSORS_NAME = "model.safetensors"
BIN_NAME = "pytorch_model.bin"
# DS-Chat before #749 (Oct 2023) spelled the base-model attribute this way.
_OLD_PREFIX, _PREFIX = "rwtranrsformer.", "rwtransformer."
_DROPOUT_KEYS = ("dropout", "attention_dropout", "hidden_dropout", "activation_dropout")


class CheckpointMismatchError(ValueError):
    """A checkpoint's keys or shapes do not match the model it is loaded into."""


def configure_dropout(config: PretrainedConfig, dropout: Optional[float]) -> None:
    """Write `dropout` into every dropout field the config has; None leaves the config as it is."""
    if dropout is None:
        return
    for key in _DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, dropout)


def _load_config(model_name_or_path: str, tokenizer: Any) -> PretrainedConfig:
    if is_preset(model_name_or_path):
        return preset_config(model_name_or_path, tokenizer)
    try:
        return AutoConfig.from_pretrained(model_name_or_path, local_files_only=True)
    except OSError as err:
        raise OSError(f"{model_name_or_path!r} is neither a model preset (tiny-opt, tiny-llama) nor a local "
                      f"HF model folder or cached model; downloads are disabled ({err})") from err


def _zero3_enabled(ds_config: Optional[Mapping[str, Any]]) -> bool:
    return bool(ds_config) and (ds_config.get("zero_optimization") or {}).get("stage") == 3


def _hf_deepspeed_config(ds_config: Optional[Mapping[str, Any]]) -> Any:
    """An `HfDeepSpeedConfig` under ZeRO-3, so HF constructs the model partitioned (`zero.Init`).

    The caller must keep the returned object alive while the model is built
    (transformers holds only a weak reference). Returns None when ZeRO-3 is
    off, or when transformers cannot create it (e.g. `accelerate` missing):
    the model is then built whole on each rank and partitioned by
    `deepspeed.initialize`, which is correct but needs more memory.
    """
    if not _zero3_enabled(ds_config):
        return None
    if not hasattr(deepspeed, "zero"):  # HF would call deepspeed.zero.Init
        if is_rank_0():
            print("[dschat] this deepspeed build has no ZeRO-3 (deepspeed.zero); building the model unpartitioned",
                  flush=True)
        return None
    try:
        from transformers.integrations.deepspeed import HfDeepSpeedConfig
        return HfDeepSpeedConfig(dict(ds_config))
    except Exception as err:  # optional integration: any failure means "build unpartitioned"
        if is_rank_0():
            print(f"[dschat] HfDeepSpeedConfig unavailable ({err}); building the model unpartitioned", flush=True)
        return None


def _no_init_weights() -> contextlib.AbstractContextManager:
    """HF's `no_init_weights` (skip random init; weights are loaded right after), wherever it lives."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _resize_embeddings(model: nn.Module, num_tokens: int) -> None:
    size = padded_vocab_size(num_tokens)
    if _full_shape(model.get_input_embeddings().weight)[0] == size:
        return
    try:
        # mean_resizing computes a covariance over the old rows: slow, and meaningless on unloaded weights.
        model.resize_token_embeddings(size, mean_resizing=False)
    except TypeError:
        model.resize_token_embeddings(size)


def create_hf_model(model_class: Any, model_name_or_path: str, tokenizer: Any,
                    ds_config: Optional[Mapping[str, Any]] = None, rlhf_training: bool = False,
                    dropout: Optional[float] = None) -> nn.Module:
    """Build `model_class` (e.g. `AutoModelForCausalLM`, `AutoModel`) for `model_name_or_path`.

    - `dropout` sets every dropout field of the config (None keeps them).
    - Under ZeRO-3 (`ds_config` stage 3) an `HfDeepSpeedConfig` is created
      first so that construction is partitioned.
    - `rlhf_training=True` builds from the config without loading or
      initialising weights; the caller loads a checkpoint next.
    - A preset builds from its config with fresh random weights.
    - Weights load in fp32, as in DS-Chat; the engine casts to fp16/bf16.
    - `config.end_token_id` is the tokenizer's EOS and `config.pad_token_id`
      the tokenizer's pad (EOS when it has none), so `generate` pads with the
      pad the data uses (Llama's added [PAD], OPT's pad = EOS).
    - The vocabulary is resized to `ceil(len(tokenizer) / 8) * 8`.
    """
    config = _load_config(model_name_or_path, tokenizer)
    configure_dropout(config, dropout)
    hf_ds_config = _hf_deepspeed_config(ds_config)  # noqa: F841  kept alive while the model is built
    if rlhf_training:
        with _no_init_weights():
            model = model_class.from_config(config)
    elif is_preset(model_name_or_path):
        model = model_class.from_config(config)
    else:
        model = model_class.from_pretrained(model_name_or_path, config=config, local_files_only=True,
                                            dtype=torch.float32)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    model.config.end_token_id = eos
    model.config.pad_token_id = pad
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = pad
    _resize_embeddings(model, len(tokenizer))
    return model


def causal_lm_model_to_fp32_loss(model: nn.Module) -> nn.Module:
    """Make `model(..., labels=...)` compute its shifted cross-entropy on fp32 logits.

    16-bit logits over a large vocabulary lose precision in the log-softmax.
    Labels of -100 are ignored, as in HF. The loss replaces `outputs.loss`.
    """
    original_forward = model.forward

    @functools.wraps(original_forward)
    def forward(*args: Any, labels: Optional[torch.Tensor] = None, **kwargs: Any) -> Any:
        outputs = original_forward(*args, **kwargs)
        if labels is None:
            return outputs
        logits = outputs.logits.float()
        shift_logits = logits[..., :-1, :].contiguous()
        shift_labels = labels[..., 1:].contiguous().to(shift_logits.device)
        outputs.loss = F.cross_entropy(shift_logits.view(-1, shift_logits.shape[-1]), shift_labels.view(-1),
                                       ignore_index=-100)
        return outputs

    model.forward = forward
    return model


# --------------------------------------------------------------------------
# Checkpoint files.
# --------------------------------------------------------------------------


def find_weights_file(folder: str) -> Optional[str]:
    """The weights file of an HF-format folder: `model.safetensors`, else `pytorch_model.bin`, else None."""
    for name in (SAFETENSORS_NAME, BIN_NAME):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch checkpoint to CPU tensors (torch files with `weights_only=True`)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        return load_file(path, device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointMismatchError(f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def _normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {(_PREFIX + k[len(_OLD_PREFIX):] if k.startswith(_OLD_PREFIX) else k): v for k, v in state_dict.items()}


def _full_shape(tensor: torch.Tensor) -> tuple:
    return tuple(getattr(tensor, "ds_shape", tensor.shape))


def _check_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    # Shapes come from the parameters themselves: under ZeRO-3 `state_dict()`
    # holds empty tensors, while each parameter keeps its full `ds_shape`.
    params = dict(model.named_parameters(remove_duplicate=False))
    expected = {k: _full_shape(params.get(k, v)) for k, v in model.state_dict().items()
                if not any(part in k for part in LORA_PARAM_NAMES)}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {expected[k]}" for k, v in state_dict.items()
                        if k in expected and tuple(v.shape) != expected[k])
    if missing or unexpected or mismatched:
        lines = [f"checkpoint {source} does not match {type(model).__name__}:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys)}")
        if "v_head.weight" in missing:
            lines.append("  (no v_head.weight: this is not a reward/critic checkpoint from step 2)")
        raise CheckpointMismatchError("\n".join(lines))


def load_state_dict_into_model(model_to_load: nn.Module, state_dict: Mapping[str, torch.Tensor],
                               start_prefix: str = "", zero_stage: int = 0) -> nn.Module:
    """Copy `state_dict` into `model_to_load` strictly, module by module.

    Keys are the model's own `state_dict` keys (after `start_prefix`, which
    is stripped from the checkpoint keys); LoRA factors of a model already
    converted to LoRA are not expected. Under ZeRO-3 each module's own
    parameters are gathered with `modifier_rank=0` and rank 0's copy is what
    the partitions keep (every rank enters the gather). `zero_stage` is kept
    for DS-Chat's signature; partitioning is detected per parameter.
    """
    del zero_stage  # detected per parameter
    state = {k[len(start_prefix):]: v for k, v in state_dict.items() if k.startswith(start_prefix)}
    state = _normalise_keys(state)
    _check_keys(model_to_load, state, "state_dict")
    with torch.no_grad():
        for prefix, module in model_to_load.named_modules():
            prefix = f"{prefix}." if prefix else ""
            own = dict(module.named_parameters(recurse=False))
            own.update({k: b for k, b in module.named_buffers(recurse=False) if f"{prefix}{k}" in state})
            entries = {name: t for name, t in own.items() if f"{prefix}{name}" in state}
            if not entries:
                continue
            with gathered_parameters([t for t in own.values() if isinstance(t, nn.Parameter)], modifier_rank=0):
                for name, tensor in entries.items():
                    tensor.data.copy_(state[f"{prefix}{name}"].to(tensor.dtype))
    return model_to_load


def _is_reward_checkpoint(weights_path: Optional[str]) -> bool:
    if weights_path is None:
        return False
    if weights_path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(weights_path, framework="pt") as handle:
            return "v_head.weight" in handle.keys()
    try:  # mmap: only the key list is needed, not gigabytes of weights
        state = torch.load(weights_path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) torch file cannot be mapped
        state = load_weights_file(weights_path)
    return "v_head.weight" in state


def create_critic_model(model_name_or_path: str, tokenizer: Any, ds_config: Optional[Mapping[str, Any]],
                        num_padding_at_beginning: int = 0, rlhf_training: bool = False,
                        dropout: Optional[float] = None, zero_stage: int = 0,
                        compute_fp32_loss: bool = False) -> RewardModel:
    """A `RewardModel` over `AutoModel` (no LM head).

    With `rlhf_training` (step 3's critic and reward) `model_name_or_path`
    must be a step-2 folder; its full RewardModel state (base model and
    `v_head.weight`, `model.safetensors` or `pytorch_model.bin`, keys with the
    old `rwtranrsformer.` prefix accepted) is loaded strictly. Without it
    (step 2) the base model comes from an LM folder or a preset and the head
    is fresh; but when the folder already holds a reward checkpoint (it has
    `v_head.weight`) it is loaded strictly too, instead of being read as an
    LM and silently dropping the trained head.
    """
    weights_path = find_weights_file(model_name_or_path) if os.path.isdir(model_name_or_path) else None
    from_reward_checkpoint = rlhf_training or _is_reward_checkpoint(weights_path)
    if from_reward_checkpoint and weights_path is None:
        raise FileNotFoundError(f"no reward/critic checkpoint in {model_name_or_path!r}: expected a step-2 output "
                                f"folder with {SAFETENSORS_NAME} or {BIN_NAME}")
    base = create_hf_model(AutoModel, model_name_or_path, tokenizer, ds_config, from_reward_checkpoint, dropout)
    critic = RewardModel(base, tokenizer, num_padding_at_beginning=num_padding_at_beginning,
                         compute_fp32_loss=compute_fp32_loss)
    if from_reward_checkpoint:
        state = _normalise_keys(load_weights_file(weights_path))
        _check_keys(critic, state, weights_path)
        load_state_dict_into_model(critic, state, "", zero_stage)
    return critic
