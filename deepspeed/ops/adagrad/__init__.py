"""Adagrad optimizers: ``DeepSpeedCPUAdagrad`` (SIMD CPU) and its pure-torch reference."""
from deepspeed.ops.adagrad.cpu_adagrad import DeepSpeedCPUAdagrad
from deepspeed.ops.adagrad.cpu_adagrad_reference import cpu_adagrad_reference_step

__all__ = ["DeepSpeedCPUAdagrad", "cpu_adagrad_reference_step"]
