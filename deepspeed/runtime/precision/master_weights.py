"""Stage-0 optimizers that keep fp32 master weights for 16-bit models.

They are the ZeRO core with partitioning switched off; the separate class
names exist because user code and tests check `isinstance(engine.optimizer, ...)`.
"""
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

__all__ = ["FP16_Optimizer", "BF16_Optimizer"]


class FP16_Optimizer(DeepSpeedZeroOptimizer):
    """fp16 model, fp32 masters, dynamic or static loss scaling, no partitioning."""

    def __init__(self, init_optimizer, **kwargs) -> None:
        super().__init__(init_optimizer, stage=0, **kwargs)


class BF16_Optimizer(DeepSpeedZeroOptimizer):
    """bf16 model, fp32 masters, no loss scaling, no partitioning."""

    def __init__(self, init_optimizer, **kwargs) -> None:
        super().__init__(init_optimizer, stage=0, **kwargs)
