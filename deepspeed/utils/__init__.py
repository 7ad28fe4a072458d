"""Small shared utilities (logging, timers)."""
from deepspeed.utils.logging import log_dist, logger

__all__ = ["logger", "log_dist"]
