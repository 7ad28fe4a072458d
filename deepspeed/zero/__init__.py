"""`deepspeed.zero`: the ZeRO-3 user API (spec §1)."""
from deepspeed.runtime.zero.generation import unwrap_model_for_generation
from deepspeed.runtime.zero.hooks import DeepSpeedZeRoOffload
from deepspeed.runtime.zero.partition_parameters import (GatheredParameters, Init, ZeroParamStatus, ZeroParamType,
                                                         register_external_parameter, unregister_external_parameter)
from deepspeed.runtime.zero.safe_get import (safe_get_full_fp32_param, safe_get_full_grad,
                                             safe_get_full_optimizer_state)

__all__ = ["Init", "GatheredParameters", "ZeroParamStatus", "ZeroParamType", "register_external_parameter",
           "unregister_external_parameter", "DeepSpeedZeRoOffload", "unwrap_model_for_generation",
           "safe_get_full_fp32_param", "safe_get_full_grad", "safe_get_full_optimizer_state"]
