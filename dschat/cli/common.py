"""Plumbing the three step scripts share, so each script reads as its training loop.

Nothing here decides a hyperparameter: the steps pass their parsed flags in.
"""
import argparse
import faulthandler
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

import deepspeed
from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from dschat.ds_utils import get_train_ds_config
from dschat.lora.lora import (convert_linear_layer_to_lora, make_model_gradient_checkpointing_compatible,
                              only_optimize_lora_parameters)
from dschat.instrument import write_metrics
from dschat.lora.param_groups import get_optimizer_grouped_parameters
from dschat.models.saving import save_hf_format
from dschat.utils import get_lr_scheduler, get_optimizer, print_rank_0

__all__ = [
    "init_distributed", "world_size", "make_loader", "set_epoch", "train_ds_config", "apply_lora",
    "optimizer_and_scheduler"
]


def init_distributed(args: argparse.Namespace) -> torch.device:
    """Start (or adopt) the process group, pick this rank's device; returns it.

    Sets `args.global_rank` and `args.local_rank` (from the launcher's
    environment when the flag was not passed), as DS-Chat's scripts expect.
    """
    deepspeed.init_distributed()
    if args.local_rank < 0:
        args.local_rank = dist.get_local_rank()
    args.global_rank = dist.get_rank()
    accelerator = get_accelerator()
    if accelerator.device_name() == "cpu":
        return torch.device("cpu")
    accelerator.set_device(args.local_rank)
    return torch.device(accelerator.device_name(args.local_rank))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def make_loader(dataset: Dataset, batch_size: int, collate_fn: Optional[Callable], shuffle: bool,
                seed: int, drop_last: bool = False) -> DataLoader:
    """A loader over this rank's share of `dataset` (seeded shuffling; the epoch is set by the caller)."""
    if dist.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn, drop_last=drop_last)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle a distributed loader for `epoch` (DistributedSampler's seed + epoch)."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


def train_ds_config(args: argparse.Namespace, stage: int, tb_name: str, micro_batch: int,
                    gas: int) -> Dict[str, Any]:
    """DS-Chat's training ds_config with the batch sizes filled in (spec §6 "What callers set")."""
    config = get_train_ds_config(offload=args.offload, dtype=args.dtype, stage=stage,
                                 enable_tensorboard=args.enable_tensorboard, tb_path=args.tensorboard_path,
                                 tb_name=tb_name)
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["train_batch_size"] = micro_batch * world_size() * gas
    return config


def apply_lora(model: torch.nn.Module, lora_dim: int, module_name: str, only_optimize: bool,
               force_optimize_params: Sequence[str] = ()) -> torch.nn.Module:
    """Convert the matching Linear layers to LoRA (rank `lora_dim` > 0), optionally training only LoRA."""
    if lora_dim <= 0:
        if only_optimize:
            print_rank_0("[dschat] warning: --only_optimize_lora has no effect without a LoRA dimension > 0")
        return model
    model = convert_linear_layer_to_lora(model, module_name, lora_dim)
    converted = sum(1 for name, _ in model.named_parameters() if "lora_right_weight" in name)
    if converted == 0:
        raise ValueError(f"--lora_module_name {module_name!r} matches no Linear layer of this model "
                         "(OPT: 'decoder.layers.', Llama: 'layers.')")
    if only_optimize:
        model = only_optimize_lora_parameters(model, force_optimize_params)
        model = make_model_gradient_checkpointing_compatible(model)
    return model


def optimizer_and_scheduler(model: torch.nn.Module, weight_decay: float, lora_lr: float, lr: float, offload: bool,
                            scheduler_type: str, warmup: int, total_steps: int) -> Tuple[Any, Any]:
    """Adam over the LoRA-aware groups (betas 0.9, 0.95) and the HF schedule (spec §5)."""
    groups = get_optimizer_grouped_parameters(model, weight_decay, lora_lr)
    optimizer = get_optimizer(groups, lr=lr, offload=offload)
    scheduler = get_lr_scheduler(scheduler_type, optimizer, warmup, max(total_steps, 1))
    return optimizer, scheduler


def save_step_output(model: Any, tokenizer: Any, args: argparse.Namespace, metrics: Dict[str, Any]) -> None:
    """Write the trained model (HF format) and `metrics.json` to `args.output_dir`, if one is set.

    Every rank calls it: under ZeRO-3 the weights are gathered, rank 0 writes.
    """
    if args.output_dir is None:
        return
    print_rank_0(f"saving the model to {args.output_dir} ...")
    save_hf_format(model, tokenizer, args)
    write_metrics(args.output_dir, metrics)


def run_main(main: Callable[[], Any]) -> None:
    """Run a step's `main()` as a script, shut the process group down, and exit without finalizing.

    After a successful `main()` the process leaves with `os._exit(0)`, once
    logs and stdio are flushed (TensorBoard writers flush on every write). The
    reason: under the launcher a rank occasionally aborted *after* all its
    work was done ("terminate called without an active exception"; the
    faulthandler dump showed no Python frame left, i.e. C++ teardown at
    interpreter exit), and the launcher then rightly reported a failed job.
    Skipping finalization skips that teardown. A failing `main()` raises as
    usual.
    """
    # A rank killed by a signal (SIGABRT from C++, SIGSEGV) prints every thread's Python stack first.
    faulthandler.enable(all_threads=True)
    main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        dist.barrier()
        dist.destroy_process_group()  # with the exit handshake (deepspeed.comm)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
