"""Training monitors: TensorBoard, CSV, Weights & Biases and Comet writers.

The backends import their optional packages only when enabled, so importing
this package is cheap.
"""
from deepspeed.monitor.base import Monitor
from deepspeed.monitor.comet import CometMonitor
from deepspeed.monitor.csv_monitor import csvMonitor
from deepspeed.monitor.monitor import MonitorMaster
from deepspeed.monitor.tensorboard import TensorBoardMonitor
from deepspeed.monitor.wandb import WandbMonitor

__all__ = ["Monitor", "MonitorMaster", "TensorBoardMonitor", "csvMonitor", "WandbMonitor", "CometMonitor"]
