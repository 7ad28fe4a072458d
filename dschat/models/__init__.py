"""Actor and critic/reward models for DS-Chat: presets, construction, strict loading, HF-format saving."""
from dschat.models.model_utils import (
    CheckpointMismatchError,
    causal_lm_model_to_fp32_loss,
    configure_dropout,
    create_critic_model,
    create_hf_model,
    find_weights_file,
    load_state_dict_into_model,
)
from dschat.models.presets import PRESET_NAMES, is_preset, preset_config
from dschat.models.reward_model import RewardModel
from dschat.models.saving import save_hf_format, save_zero_three_model

__all__ = [
    "CheckpointMismatchError",
    "PRESET_NAMES",
    "RewardModel",
    "causal_lm_model_to_fp32_loss",
    "configure_dropout",
    "create_critic_model",
    "create_hf_model",
    "find_weights_file",
    "is_preset",
    "load_state_dict_into_model",
    "preset_config",
    "save_hf_format",
    "save_zero_three_model",
]
