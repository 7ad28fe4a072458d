"""DeepSpeedEngine: orchestration of one training step.

The engine owns the micro-step / gradient-accumulation bookkeeping, precision
(casting, loss scaling through the optimizer wrapper), clipping, the LR
scheduler, monitor events and checkpoint entry points. The ZeRO optimizer
owns gradient reduction and parameter partitioning; the checkpoint module
owns file layout.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.data import DataLoader, DistributedSampler

from deepspeed import comm as dist
from deepspeed.accelerator import get_accelerator
from deepspeed.comm import groups
from deepspeed.monitor.monitor import MonitorMaster
from deepspeed.runtime.checkpoint import engine_checkpoint
from deepspeed.runtime.config import DeepSpeedConfig
from deepspeed.runtime.optimizer_factory import DS_CPU_OPTIMIZERS, ZERO_SUPPORTED_OPTIMIZERS, build_optimizer
from deepspeed.runtime.precision.loss_scaler import loss_scaler_from_config
from deepspeed.runtime.precision.master_weights import BF16_Optimizer, FP16_Optimizer
from deepspeed.runtime.scheduler_factory import build_lr_scheduler, resolve_client_scheduler
from deepspeed.runtime.zero.coordinator import PartitionedParameterCoordinator
from deepspeed.runtime.zero.hooks import DeepSpeedZeRoOffload
from deepspeed.runtime.zero.optimizer_core import ZeroOptimizerCore
from deepspeed.runtime.zero.partition_parameters import partition_module
from deepspeed.runtime.zero.stage3 import DeepSpeedZeroOptimizer_Stage3
from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
from deepspeed.utils.logging import log_dist
from deepspeed.utils.timer import SynchronizedWallClockTimer

__all__ = ["DeepSpeedEngine"]

FORWARD, BACKWARD, STEP = "forward", "backward", "step"
BACKWARD_INNER, BACKWARD_REDUCE = "backward_inner", "backward_allreduce"


class DeepSpeedEngine(torch.nn.Module):
    """Wraps a model for training with DeepSpeed semantics (see spec §2)."""

    def __init__(self,
                 args=None,
                 model: Optional[torch.nn.Module] = None,
                 optimizer=None,
                 model_parameters=None,
                 training_data=None,
                 lr_scheduler=None,
                 mpu=None,
                 dist_init_required: Optional[bool] = None,
                 collate_fn=None,
                 config=None,
                 config_class: Optional[DeepSpeedConfig] = None,
                 mesh_device=None,
                 dont_change_device: bool = False) -> None:
        super().__init__()
        if model is None:
            raise ValueError("deepspeed: a model is required")
        # The parsed config; `config` stays the plain dict users expect.
        self._config = config_class if config_class is not None else DeepSpeedConfig(config, mpu=mpu)
        self.config = self._config._param_dict
        self.mpu = mpu
        self.module = model
        self.global_rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.local_rank = dist.get_local_rank()
        self._check_local_rank(args)
        self.data_parallel_group = groups.get_data_parallel_group(mpu)
        self.dp_world_size = groups.get_data_parallel_world_size(mpu)
        self.device = torch.device(get_accelerator().device_name(self.local_rank))

        # counters (spec §2)
        self.global_steps = 0
        self.global_samples = 0
        self.micro_steps = 0
        self.skipped_steps = 0
        self._step_applied = False
        self._forced_boundary: Optional[bool] = None
        self._loss_sum_for_monitor = 0.0

        self.timers = SynchronizedWallClockTimer(get_accelerator().synchronize)
        self.monitor = MonitorMaster(self._config.monitor_config, rank=self.global_rank)
        self._warn_ignored_offload()
        self._configure_model(dont_change_device)

        self.basic_optimizer = self._build_basic_optimizer(optimizer, model_parameters)
        self.optimizer = self._wrap_optimizer(self.basic_optimizer) if self.basic_optimizer is not None else None
        self.lr_scheduler = self._build_scheduler(lr_scheduler)
        self.collate_fn = collate_fn
        self.training_dataloader = self.deepspeed_io(training_data) if training_data is not None else None

    # ------------------------------------------------------------- set-up
    def _check_local_rank(self, args) -> None:
        arg_rank = getattr(args, "local_rank", None) if args is not None else None
        if arg_rank is not None and arg_rank >= 0 and arg_rank != self.local_rank:
            raise ValueError(f"args.local_rank={arg_rank} does not match LOCAL_RANK={self.local_rank} set by the "
                             f"launcher; do not override --local_rank")

    def _warn_ignored_offload(self) -> None:
        # DeepSpeed ignores offload_param below stage 3 (DS-Chat always sets it with
        # --offload), so this is a warning, not an error.
        if self._config.zero_config.offload_param_device != "none" and self.zero_optimization_stage() != 3:
            log_dist("zero_optimization.offload_param only applies at ZeRO stage 3; ignoring it at stage "
                     f"{self.zero_optimization_stage()}", ranks=[0])

    def _compute_dtype(self) -> torch.dtype:
        if self.fp16_enabled():
            return torch.float16
        if self.bfloat16_enabled():
            return torch.bfloat16
        return torch.float32

    def _configure_model(self, dont_change_device: bool) -> None:
        if not dont_change_device:
            self.module.to(self.device)
        dtype = self._compute_dtype()
        # Parameters partitioned under zero.Init already have their dtype and
        # identical shards on every rank; everything else is cast and synced.
        plain = [p for p in self.module.parameters() if not hasattr(p, "ds_state")]
        if dtype != torch.float32:
            # Only parameters are cast: buffers (e.g. rotary tables) keep their dtype.
            for p in plain:
                if p.is_floating_point():
                    p.data = p.data.to(dtype)
        if self.dp_world_size > 1:
            # Every rank starts from rank 0's weights, as DDP does.
            src = dist.get_global_rank(self.data_parallel_group, 0)
            for t in plain + list(self.module.buffers()):
                dist.broadcast(t.data, src=src, group=self.data_parallel_group)
        self.parameter_offload: Optional[DeepSpeedZeRoOffload] = None
        if self.zero_optimization_stage() == 3:
            self.parameter_offload = self._partition_stage3(dtype)

    def _partition_stage3(self, dtype: torch.dtype) -> DeepSpeedZeRoOffload:
        """Shard every parameter (those not built under zero.Init) and install the ZeRO-3 hooks."""
        zc = self._config.zero_config
        partition_module(self.module, self.data_parallel_group, dtype, int(zc.param_persistence_threshold),
                         int(zc.model_persistence_threshold),
                         torch.device("cpu") if zc.offload_param_device == "cpu" else None)
        coordinator = PartitionedParameterCoordinator(int(zc.prefetch_bucket_size), int(zc.max_live_parameters),
                                                      int(zc.max_reuse_distance))
        return DeepSpeedZeRoOffload(self.module, coordinator)

    def _build_basic_optimizer(self, client_optimizer, model_parameters):
        if model_parameters is None:
            model_parameters = [p for p in self.module.parameters() if p.requires_grad]
        if client_optimizer is not None:
            if isinstance(client_optimizer, torch.optim.Optimizer):
                return client_optimizer
            if callable(client_optimizer):
                return client_optimizer(model_parameters)
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or a callable, got {type(client_optimizer)}")
        if self._config.optimizer_config is None:
            return None
        offload = self.zero_optimization_stage() > 0 and \
            self._config.zero_config.offload_optimizer_device == "cpu"
        return build_optimizer(self._config.optimizer_config.type, self._config.optimizer_params, model_parameters,
                               offload=offload)

    def _wrap_optimizer(self, basic: torch.optim.Optimizer):
        stage = self.zero_optimization_stage()
        zc = self._config.zero_config
        if zc.offload_optimizer_device == "nvme" or zc.offload_param_device == "nvme":
            raise NotImplementedError("NVMe offload (ZeRO-Infinity) is not available in this build; use "
                                      "\"device\": \"cpu\"")
        if zc.offload_optimizer_device == "cpu" and stage == 0:
            raise ValueError("zero_optimization.offload_optimizer needs ZeRO stage 1, 2 or 3; set "
                             "zero_optimization.stage")
        if zc.offload_optimizer_device == "cpu" and not isinstance(basic, DS_CPU_OPTIMIZERS) \
                and self._config.zero_force_ds_cpu_optimizer:
            raise ValueError(f"ZeRO-Offload steps the optimizer on the CPU and needs one of DeepSpeed's CPU optimizers "
                             f"(DeepSpeedCPUAdam, DeepSpeedCPUAdagrad, DeepSpeedCPULion), got "
                             f"{type(basic).__name__}; pass one, use the config's \"optimizer\" section, or set "
                             f"\"zero_force_ds_cpu_optimizer\": false")
        if stage > 0 and not isinstance(basic, ZERO_SUPPORTED_OPTIMIZERS) \
                and not self._config.zero_allow_untested_optimizer:
            raise ValueError(f"ZeRO has not been tested with {type(basic).__name__}; set "
                             f"\"zero_allow_untested_optimizer\": true to use it anyway")
        if stage == 0 and not (self.fp16_enabled() or self.bfloat16_enabled()):
            return basic  # plain fp32 DDP: the engine reduces gradients itself
        kwargs = dict(
            dp_group=self.data_parallel_group,
            loss_scaler=loss_scaler_from_config(self._config.fp16_config) if self.fp16_enabled() else None,
            check_overflow=self.bfloat16_enabled() and self._config.bf16_config.check_grad_overflow,
            clip_grad=self.gradient_clipping(),
            communication_dtype=self._config.communication_data_type,
            gradient_predivide_factor=self._config.gradient_predivide_factor,
            offload_optimizer=zc.offload_optimizer_device == "cpu",
            pin_memory=bool(zc.offload_optimizer.pin_memory),
        )
        if stage == 0:
            cls = FP16_Optimizer if self.fp16_enabled() else BF16_Optimizer
            return cls(basic, **kwargs)
        if stage == 3:
            return DeepSpeedZeroOptimizer_Stage3(self.module, basic, parameter_offload=self.parameter_offload,
                                                 reduce_bucket_size=int(zc.reduce_bucket_size), **kwargs)
        return DeepSpeedZeroOptimizer(basic, stage=stage, reduce_bucket_size=int(zc.reduce_bucket_size), **kwargs)

    def _build_scheduler(self, client_scheduler):
        if client_scheduler is not None:
            return resolve_client_scheduler(client_scheduler, self.basic_optimizer)
        if self._config.scheduler_config is None:
            return None
        if self.basic_optimizer is None:
            raise ValueError("a scheduler is configured but there is no optimizer to schedule")
        return build_lr_scheduler(self._config.scheduler_config.type, self._config.scheduler_params or {},
                                  self.basic_optimizer)

    # ---------------------------------------------------------- accessors
    def gradient_accumulation_steps(self) -> int:
        return self._config.gradient_accumulation_steps

    def train_batch_size(self) -> int:
        return self._config.train_batch_size

    def train_micro_batch_size_per_gpu(self) -> int:
        return self._config.train_micro_batch_size_per_gpu

    def zero_optimization(self) -> bool:
        return self._config.zero_enabled

    def zero_optimization_stage(self) -> int:
        return self._config.zero_optimization_stage

    def fp16_enabled(self) -> bool:
        return self._config.fp16_enabled

    def bfloat16_enabled(self) -> bool:
        return self._config.bfloat16_enabled

    def gradient_clipping(self) -> float:
        return self._config.gradient_clipping

    def wall_clock_breakdown(self) -> bool:
        return self._config.wall_clock_breakdown

    def steps_per_print(self) -> Optional[int]:
        return self._config.steps_per_print

    def get_lr(self) -> List[float]:
        return [g["lr"] for g in self.basic_optimizer.param_groups] if self.basic_optimizer else []

    def get_mom(self) -> List[Any]:
        if self.basic_optimizer is None:
            return []
        return [g["betas"] if "betas" in g else g.get("momentum") for g in self.basic_optimizer.param_groups]

    def get_global_grad_norm(self) -> Optional[float]:
        return getattr(self, "_global_grad_norm", None)

    def was_step_applied(self) -> bool:
        return self._step_applied

    def is_gradient_accumulation_boundary(self) -> bool:
        if self._forced_boundary is not None:
            return self._forced_boundary
        return (self.micro_steps + 1) % self.gradient_accumulation_steps() == 0

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self._forced_boundary = is_boundary

    def __getattr__(self, name: str) -> Any:
        # nn.Module keeps submodules in _modules; fall through to the wrapped model.
        try:
            return super().__getattr__(name)
        except AttributeError:
            module = self._modules.get("module")
            if module is not None and hasattr(module, name):
                return getattr(module, name)
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'") from None

    # ----------------------------------------------------------- training
    def forward(self, *inputs, **kwargs):
        if self.wall_clock_breakdown():
            self.timers(FORWARD).start()
        if self.fp16_enabled() and self._config.fp16_auto_cast:
            with torch.autocast(device_type=self.device.type, dtype=torch.float16):
                out = self.module(*inputs, **kwargs)
        else:
            out = self.module(*inputs, **kwargs)
        if self.wall_clock_breakdown():
            self.timers(FORWARD).stop()
        return out

    def backward(self, loss: torch.Tensor, retain_graph: bool = False, scale_wrt_gas: bool = True) -> torch.Tensor:
        """Back-propagate `loss` (divided by GAS), with loss scaling; returns loss/GAS."""
        if not loss.requires_grad:
            raise ValueError("engine.backward: the loss does not require grad (was it computed under no_grad?)")
        if self.wall_clock_breakdown():
            self.timers(BACKWARD).start()
        if scale_wrt_gas and self.gradient_accumulation_steps() > 1:
            loss = loss / self.gradient_accumulation_steps()
        if self.monitor.enabled:
            self._loss_sum_for_monitor += float(loss.detach().float().item())
        self._timed(BACKWARD_INNER, self._autograd, loss, retain_graph)
        if isinstance(self.optimizer, ZeroOptimizerCore):
            self._timed(BACKWARD_REDUCE, self.optimizer.after_backward)
        if self.wall_clock_breakdown():
            self.timers(BACKWARD).stop()
        return loss

    def _autograd(self, loss: torch.Tensor, retain_graph: bool) -> None:
        if isinstance(self.optimizer, ZeroOptimizerCore):
            self.optimizer.scaled_backward(loss, retain_graph=retain_graph)
        else:
            loss.backward(retain_graph=retain_graph)

    def _timed(self, name: str, fn: Callable, *args) -> None:
        if not self.wall_clock_breakdown():
            fn(*args)
            return
        self.timers(name).start()
        fn(*args)
        self.timers(name).stop()

    def _reduce_plain_gradients(self) -> None:
        """Average `.grad` over data-parallel ranks for the unwrapped fp32 stage-0 path."""
        if self.dp_world_size == 1:
            return
        grads = [p.grad for p in self.module.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat, group=self.data_parallel_group)
        flat.div_(self.dp_world_size)
        for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(reduced)

    def _optimizer_step(self) -> bool:
        """Run one optimizer step; returns whether it overflowed (was skipped)."""
        if isinstance(self.optimizer, ZeroOptimizerCore):
            self.optimizer.step()
            self._global_grad_norm = self.optimizer.get_global_grad_norm()
            return self.optimizer.overflow
        self._reduce_plain_gradients()
        params = [p for p in self.module.parameters() if p.requires_grad]
        max_norm = self.gradient_clipping() if self.gradient_clipping() > 0 else float("inf")
        self._global_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return False

    def step(self, lr_kwargs: Optional[Dict[str, Any]] = None) -> None:
        """Apply the update at the GAS boundary; count the micro-step always."""
        if self.wall_clock_breakdown():
            self.timers(STEP).start()
        if self.is_gradient_accumulation_boundary():
            if self.optimizer is None:
                raise RuntimeError("engine.step() needs an optimizer: pass one to deepspeed.initialize or "
                                   "add an \"optimizer\" section to the config")
            overflow = self._optimizer_step()
            self._step_applied = not overflow
            if overflow:
                self.skipped_steps += 1
            elif self.lr_scheduler is not None:
                self.lr_scheduler.step(**(lr_kwargs or {}))
            self.global_steps += 1
            self.global_samples += self.train_batch_size()
            self._write_step_events()
            self._maybe_print()
        if self.wall_clock_breakdown():
            self.timers(STEP).stop()
        self.micro_steps += 1
        self._forced_boundary = None

    def _write_step_events(self) -> None:
        if not self.monitor.enabled:
            return
        step = self.global_samples
        events: List[Tuple[str, float, int]] = [("Train/Samples/train_loss", self._loss_sum_for_monitor, step)]
        events += [("Train/Samples/lr", self.get_lr()[0], step)] if self.get_lr() else []
        if self.fp16_enabled() and isinstance(self.optimizer, ZeroOptimizerCore):
            events.append(("Train/Samples/loss_scale", self.optimizer.cur_scale, step))
        if self.wall_clock_breakdown():
            for name in (FORWARD, BACKWARD, BACKWARD_INNER, BACKWARD_REDUCE, STEP):
                events.append((f"Train/Samples/elapsed_time_ms_{name}", self.timers(name).elapsed_ms(), step))
        self.monitor.write_events(events)
        self._loss_sum_for_monitor = 0.0

    def _maybe_print(self) -> None:
        spp = self.steps_per_print()
        if spp and self.global_steps % spp == 0:
            log_dist(f"step={self.global_steps}, skipped={self.skipped_steps}, lr={self.get_lr()}, "
                     f"mom={self.get_mom()}", ranks=[0])

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.optimizer is not None and isinstance(self.optimizer, ZeroOptimizerCore):
            self.optimizer.zero_grad()
        else:
            self.module.zero_grad(set_to_none=set_to_none)

    # ---------------------------------------------------------------- data
    def deepspeed_io(self,
                     dataset,
                     batch_size: Optional[int] = None,
                     route: str = "train",
                     pin_memory: bool = True,
                     data_sampler=None,
                     collate_fn: Optional[Callable] = None,
                     num_local_io_workers: Optional[int] = None) -> DataLoader:
        """A DataLoader of micro-batches, sharded over data-parallel ranks."""
        if data_sampler is None and self.dp_world_size > 1:
            data_sampler = DistributedSampler(dataset, num_replicas=self.dp_world_size,
                                              rank=groups.get_data_parallel_rank(self.mpu))
        return DataLoader(dataset,
                          batch_size=batch_size or self.train_micro_batch_size_per_gpu(),
                          sampler=data_sampler,
                          shuffle=False if data_sampler is not None else (route == "train"),
                          collate_fn=collate_fn or self.collate_fn,
                          pin_memory=pin_memory and self.device.type != "cpu",
                          num_workers=num_local_io_workers or 0,
                          drop_last=self._config.dataloader_drop_last)

    # --------------------------------------------------------- checkpoints
    def save_checkpoint(self, save_dir: str, tag: Optional[str] = None, client_state: Optional[dict] = None,
                        save_latest: bool = True, exclude_frozen_parameters: bool = False) -> bool:
        return engine_checkpoint.save_checkpoint(self, save_dir, tag, client_state or {}, save_latest,
                                                 exclude_frozen_parameters)

    def load_checkpoint(self, load_dir: str, tag: Optional[str] = None, load_module_strict: bool = True,
                        load_optimizer_states: bool = True, load_lr_scheduler_states: bool = True,
                        load_module_only: bool = False, custom_load_fn=None):
        return engine_checkpoint.load_checkpoint(self, load_dir, tag, load_module_strict, load_optimizer_states,
                                                 load_lr_scheduler_states, load_module_only, custom_load_fn)

    def save_16bit_model(self, save_dir: str, save_filename: str = "pytorch_model.bin",
                         exclude_frozen_parameters: bool = False) -> bool:
        return engine_checkpoint.save_16bit_model(self, save_dir, save_filename, exclude_frozen_parameters)

    save_fp16_model = save_16bit_model

    def module_state_dict(self, exclude_frozen_parameters: bool = False) -> Dict[str, torch.Tensor]:
        sd = self.module.state_dict()
        if exclude_frozen_parameters:
            frozen = {n for n, p in self.module.named_parameters() if not p.requires_grad}
            sd = {k: v for k, v in sd.items() if k not in frozen}
        return sd

    def empty_partition_cache(self) -> None:
        """Release every gathered (non-persistent) ZeRO-3 parameter; nothing is cached at stages 0-2."""
        if self.parameter_offload is not None:
            self.parameter_offload.coordinator.end_iteration()

    def train(self, mode: bool = True):
        """Switch modes; under ZeRO-3 both in-flight registries are drained first."""
        if self._modules.get("module") is not None and getattr(self, "parameter_offload", None) is not None:
            self.parameter_offload.coordinator.end_iteration()
        return super().train(mode)

    def destroy(self) -> None:
        self.monitor.close()
