"""`deepspeed.initialize` and `deepspeed.add_config_arguments`."""
import argparse
from typing import Any, Optional, Tuple

import torch

from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.comm import groups
from deepspeed.runtime.config import DeepSpeedConfig, load_config_source
from deepspeed.runtime.engine import DeepSpeedEngine
from deepspeed.runtime.hybrid_engine import DeepSpeedHybridEngine

__all__ = ["initialize", "add_config_arguments"]


def _config_source(args, config, config_params) -> Any:
    """Pick the one config the caller gave (spec §1 order) and reject ambiguity."""
    arg_config = None
    if args is not None:
        arg_config = getattr(args, "deepspeed_config", None) or getattr(args, "deepscale_config", None)
    if arg_config is not None and config is not None:
        raise ValueError("deepspeed.initialize got both args.deepspeed_config and config=; pass only one")
    for source in (config, config_params, arg_config):
        if source is not None:
            return source
    raise ValueError("deepspeed.initialize needs a config: pass config=<dict or path>, config_params=, or "
                     "--deepspeed_config <path> in args")


def initialize(args=None,
               model: Optional[torch.nn.Module] = None,
               optimizer=None,
               model_parameters=None,
               training_data=None,
               lr_scheduler=None,
               distributed_port: int = 29500,
               mpu=None,
               dist_init_required: Optional[bool] = None,
               collate_fn=None,
               config=None,
               mesh_param=None,
               config_params=None) -> Tuple[DeepSpeedEngine, Any, Any, Any]:
    """Wrap `model` in a DeepSpeed engine.

    Returns `(engine, engine.optimizer, engine.training_dataloader, engine.lr_scheduler)`.
    """
    if model is None:
        raise ValueError("deepspeed.initialize: model is required")
    dist.init_distributed(dist_backend=get_accelerator().communication_backend_name(),
                          distributed_port=distributed_port, dist_init_required=dist_init_required)
    raw = load_config_source(_config_source(args, config, config_params))
    ds_config = DeepSpeedConfig(raw, mpu=mpu, world_size=groups.get_data_parallel_world_size(mpu))
    engine_cls = DeepSpeedEngine
    if ds_config.hybrid_engine.enabled:
        engine_cls = DeepSpeedHybridEngine
    engine = engine_cls(args=args,
                        model=model,
                        optimizer=optimizer,
                        model_parameters=model_parameters,
                        training_data=training_data,
                        lr_scheduler=lr_scheduler,
                        mpu=mpu,
                        dist_init_required=dist_init_required,
                        collate_fn=collate_fn,
                        config=raw,
                        config_class=ds_config)
    return engine, engine.optimizer, engine.training_dataloader, engine.lr_scheduler


def add_config_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add DeepSpeed's own flags (not --local_rank) to a user's parser."""
    group = parser.add_argument_group("DeepSpeed", "DeepSpeed configurations")
    group.add_argument("--deepspeed", default=False, action="store_true",
                       help="Enable DeepSpeed (helper flag for user code, no impact on DeepSpeed backend)")
    group.add_argument("--deepspeed_config", default=None, type=str, help="DeepSpeed json configuration file.")
    group.add_argument("--deepscale", default=False, action="store_true",
                       help="Deprecated: use --deepspeed")
    group.add_argument("--deepscale_config", default=None, type=str,
                       help="Deprecated: use --deepspeed_config")
    return parser
