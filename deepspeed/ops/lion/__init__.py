"""Lion optimizers: ``DeepSpeedCPULion`` (SIMD CPU), ``FusedLion`` (torch foreach) and pure-torch references."""
from deepspeed.ops.lion.cpu_lion import DeepSpeedCPULion
from deepspeed.ops.lion.cpu_lion_reference import cpu_lion_reference_step
from deepspeed.ops.lion.fused_lion import FusedLion, foreach_lion_step

__all__ = ["DeepSpeedCPULion", "cpu_lion_reference_step", "FusedLion", "foreach_lion_step"]
