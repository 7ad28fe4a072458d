"""Adam optimizers: ``DeepSpeedCPUAdam`` (SIMD CPU, ZeRO-Offload), ``FusedAdam`` (multi-tensor CUDA) and references."""
from deepspeed.ops.adam.cpu_adam import DeepSpeedCPUAdam
from deepspeed.ops.adam.cpu_adam_reference import cpu_adam_reference_step
from deepspeed.ops.adam.fused_adam import FusedAdam, foreach_adam_step

__all__ = ["DeepSpeedCPUAdam", "cpu_adam_reference_step", "FusedAdam", "foreach_adam_step"]
