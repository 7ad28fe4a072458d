"""ZeRO stages 1 and 2, and the 16-bit master-weight optimizers of stage 0.

All three share one core, `DeepSpeedZeroOptimizer`:

* stage 0 (FP16_Optimizer / BF16_Optimizer): no partitioning. Gradients are
  all-reduced, every rank keeps the full fp32 master copy.
* stage 1: the fp32 master weights and optimizer state are partitioned.
  Gradients accumulate in the parameters' `.grad` over micro-steps and are
  reduce-scattered once, at the accumulation boundary.
* stage 2: as stage 1, but gradients are reduce-scattered after *every*
  backward into the rank's fp32 partition gradient and the full `.grad`
  tensors are freed, so no rank holds a full gradient between micro-steps.

Stage 1 reduce-scatters too: each rank only needs its own partition's
gradient, and reduce-scatter moves half the bytes of an all-reduce with the
same result. See [Note: bucket-interleaved partitioning] in partition.py for
the memory layout.
"""
import math
from typing import Dict, List, Optional

import torch

from deepspeed import comm as dist
from deepspeed.runtime.precision.loss_scaler import LossScalerBase
from deepspeed.runtime.precision.overflow import local_overflow
from deepspeed.runtime.zero.partition import FlatLayout

__all__ = ["DeepSpeedZeroOptimizer"]


class DeepSpeedZeroOptimizer:
    """Wraps a torch optimizer so that it steps fp32 master partitions.

    The wrapped optimizer's `param_groups` dicts are kept (only their
    `params` lists are replaced by the master partition), so schedulers built
    on the original optimizer keep working.
    """

    def __init__(self,
                 init_optimizer: torch.optim.Optimizer,
                 *,
                 stage: int,
                 dp_group=None,
                 loss_scaler: Optional[LossScalerBase] = None,
                 check_overflow: bool = False,
                 clip_grad: float = 0.0,
                 reduce_bucket_size: int = 500_000_000,
                 communication_dtype: Optional[torch.dtype] = None,
                 gradient_predivide_factor: float = 1.0,
                 master_device: Optional[torch.device] = None) -> None:
        if stage not in (0, 1, 2):
            raise ValueError(f"DeepSpeedZeroOptimizer handles stages 0-2, got {stage}")
        self.optimizer = init_optimizer
        self.stage = stage
        self.dp_group = dp_group
        self.dp_world = dist.get_world_size(group=dp_group) if dist.is_initialized() else 1
        self.dp_rank = dist.get_rank(group=dp_group) if dist.is_initialized() else 0
        # Stage 0 keeps everything whole: its "shard world" is 1.
        self.shard_world = self.dp_world if stage > 0 else 1
        self.shard_rank = self.dp_rank if stage > 0 else 0
        self.loss_scaler = loss_scaler
        # fp16 always checks for overflow; bf16 checks when configured.
        self.check_overflow_enabled = check_overflow or loss_scaler is not None
        self.clip_grad = float(clip_grad or 0.0)
        self.communication_dtype = communication_dtype
        self.gradient_predivide_factor = gradient_predivide_factor

        #: set by `step` and by `check_overflow`; DS-Chat reads it
        self.overflow = False
        #: DS-Chat's align_overflow sets this to skip the next step
        self.skip_step = False
        #: global gradient norm of the last applied step (unscaled)
        self._global_grad_norm: Optional[float] = None

        self.layouts: List[FlatLayout] = []
        self.master_partitions: List[torch.Tensor] = []
        self._has_local_grads = False
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            layout = FlatLayout(params, reduce_bucket_size, self.shard_world)
            device = master_device or (params[0].device if params else torch.device("cpu"))
            master = layout.gather_local_chunks(self.shard_rank).to(device=device, dtype=torch.float32).clone()
            master.grad = torch.zeros_like(master)
            self.layouts.append(layout)
            self.master_partitions.append(master)
            group["params"] = [master]
        self._reset_inner_state()

    # ------------------------------------------------------------------ utils
    def _reset_inner_state(self) -> None:
        """Drop state keyed by the original params and re-create eager state.

        Some optimizers (e.g. torch Adagrad) create state in `__init__`; a
        throwaway instance over the masters recreates it.
        """
        self.optimizer.state.clear()
        try:
            tmp = type(self.optimizer)([{**g} for g in self.optimizer.param_groups], **self.optimizer.defaults)
        except Exception:  # custom constructors: lazy state is the common case
            return
        for g_tmp, g in zip(tmp.param_groups, self.optimizer.param_groups):
            for p_tmp, p in zip(g_tmp["params"], g["params"]):
                if p_tmp in tmp.state:
                    self.optimizer.state[p] = tmp.state[p_tmp]

    @property
    def param_groups(self) -> List[Dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def defaults(self):
        return self.optimizer.defaults

    @property
    def cur_scale(self) -> float:
        return self.loss_scaler.cur_scale if self.loss_scaler is not None else 1.0

    @property
    def loss_scale(self) -> float:
        return self.cur_scale

    def _reduce_dtype(self, bucket_dtype: torch.dtype) -> torch.dtype:
        return self.communication_dtype or bucket_dtype

    # --------------------------------------------------------------- backward
    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Scale the loss (fp16), run autograd, and for stage 2 reduce right away."""
        self.scaled_backward(loss, retain_graph=retain_graph)
        self.after_backward()

    def scaled_backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        """Autograd on `loss * loss_scale`; gradients land in the parameters' `.grad`."""
        if self.loss_scaler is not None:
            loss = loss * self.loss_scaler.cur_scale
        loss.backward(retain_graph=retain_graph)
        self._has_local_grads = True

    def after_backward(self) -> None:
        """Stage 2 reduce-scatters every micro-step; stages 0/1 wait for the boundary."""
        if self.stage == 2:
            self.reduce_gradients()

    def reduce_gradients(self) -> None:
        """Reduce every bucket's `.grad` into this rank's master gradient.

        Buckets are launched asynchronously in a fixed order (the same on all
        ranks) and waited on together, so communication of one bucket
        overlaps the packing of the next. The `.grad` tensors are freed.
        """
        if not self._has_local_grads:
            return
        pending = []
        for layout, master in zip(self.layouts, self.master_partitions):
            for bucket in layout.buckets:
                dtype = self._reduce_dtype(bucket.buffer.dtype)
                flat = layout.flat_grad(bucket, dtype)
                if self.gradient_predivide_factor != 1.0:
                    flat.div_(self.gradient_predivide_factor)
                if self.shard_world > 1:
                    out = torch.empty(bucket.chunk_numel, dtype=dtype, device=flat.device)
                    work = dist.reduce_scatter_tensor(out, flat, group=self.dp_group, async_op=True)
                else:
                    out = flat
                    work = dist.all_reduce(flat, group=self.dp_group, async_op=True) if self.dp_world > 1 else None
                pending.append((work, out, master, bucket))
                for p in bucket.params:
                    p.grad = None
        for work, out, master, bucket in pending:
            if work is not None:
                work.wait()
            # Net effect of pre- and post-scaling is the mean over ranks.
            out.mul_(self.gradient_predivide_factor / self.dp_world)
            dst = master.grad.narrow(0, bucket.partition_offset, bucket.chunk_numel)
            dst.add_(out.to(device=dst.device, dtype=dst.dtype))
        self._has_local_grads = False

    # ------------------------------------------------------------- overflow
    def check_overflow(self, partition_gradients: bool = True, external: bool = False) -> bool:
        """Whether any rank's reduced gradient has inf/nan; sets `self.overflow`.

        `external=True` (DS-Chat's align_overflow) reduces pending gradients
        first so the answer covers the coming step.
        """
        if external:
            self.reduce_gradients()
        grads = [m.grad for m in self.master_partitions]
        flag = local_overflow(grads)
        if self.dp_world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.dp_group)
        self.overflow = bool(flag.item() > 0)
        return self.overflow

    # ------------------------------------------------------------------ step
    def _global_norm(self) -> float:
        """L2 norm of the full (scaled) gradient across all partitions."""
        sq = torch.zeros((), dtype=torch.float32)
        for m in self.master_partitions:
            sq += m.grad.float().pow(2).sum().cpu()
        if self.shard_world > 1:
            dist.all_reduce(sq, group=self.dp_group)
        return math.sqrt(float(sq))

    def step(self, closure=None) -> None:
        """Reduce, check overflow, unscale + clip, step the masters, gather params."""
        self.reduce_gradients()
        if self.skip_step:
            # Forced skip (DS-Chat's align_overflow: the *other* model overflowed).
            # It is reported as an overflow so the engine skips the scheduler
            # too, but this optimizer's loss scale is left alone.
            self.skip_step = False
            self.overflow = True
            self.zero_grad()
            return
        if self.check_overflow_enabled:
            self.check_overflow()
        else:
            self.overflow = False
        if self.overflow:
            if self.loss_scaler is not None:
                self.loss_scaler.update_scale(True)
            self.zero_grad()
            return

        scale = self.cur_scale
        norm = self._global_norm() / scale
        self._global_grad_norm = norm
        factor = 1.0 / scale
        if self.clip_grad > 0 and norm > self.clip_grad:
            factor *= self.clip_grad / (norm + 1e-6)
        if factor != 1.0:
            for m in self.master_partitions:
                m.grad.mul_(factor)
        if closure is not None:
            self.optimizer.step(closure)
        else:
            self.optimizer.step()
        self._all_gather_params()
        if self.loss_scaler is not None:
            self.loss_scaler.update_scale(False)
        self.zero_grad()

    def _all_gather_params(self) -> None:
        """Copy updated master chunks into the 16-bit buffers and all-gather them."""
        pending = []
        for layout, master in zip(self.layouts, self.master_partitions):
            for bucket in layout.buckets:
                src = master.narrow(0, bucket.partition_offset, bucket.chunk_numel)
                if self.shard_world == 1:
                    bucket.buffer.copy_(src)
                    continue
                chunk = src.to(device=bucket.buffer.device, dtype=bucket.buffer.dtype)
                pending.append(dist.all_gather_into_tensor(bucket.buffer, chunk, group=self.dp_group, async_op=True))
        for work in pending:
            work.wait()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for m in self.master_partitions:
            m.grad.zero_()
        for layout in self.layouts:
            for p in layout.params:
                p.grad = None
        self._has_local_grads = False

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> Dict:
        return {
            "optimizer_state_dict": self.optimizer.state_dict(),
            "fp32_flat_groups": [m.detach().clone() for m in self.master_partitions],
            "loss_scaler": self.loss_scaler.state_dict() if self.loss_scaler is not None else None,
            "overflow": self.overflow,
            "zero_stage": self.stage,
            "partition_count": self.shard_world,
            "partition_numel": [layout.partition_numel for layout in self.layouts],
        }

    def load_state_dict(self, state_dict: Dict, load_optimizer_states: bool = True,
                        load_from_fp32_weights: bool = True) -> None:
        saved_world = state_dict.get("partition_count")
        if saved_world != self.shard_world or state_dict.get("partition_numel") != [
                layout.partition_numel for layout in self.layouts]:
            raise RuntimeError(
                f"ZeRO checkpoint was saved with {saved_world} partitions of sizes "
                f"{state_dict.get('partition_numel')}, but this run uses {self.shard_world} partitions of sizes "
                f"{[layout.partition_numel for layout in self.layouts]}. Resume with the same data-parallel "
                f"world size and model, or load with load_module_only=True.")
        if load_optimizer_states:
            groups = list(self.optimizer.param_groups)
            self.optimizer.load_state_dict(state_dict["optimizer_state_dict"])
            # torch builds new group dicts on load; copy the loaded hyper-parameters
            # back into the original dicts, which external schedulers hold.
            for group, loaded in zip(groups, self.optimizer.param_groups):
                group.update({k: v for k, v in loaded.items() if k != "params"})
            self.optimizer.param_groups = groups
        if self.loss_scaler is not None and state_dict.get("loss_scaler") is not None:
            self.loss_scaler.load_state_dict(state_dict["loss_scaler"])
        if load_from_fp32_weights:
            for master, saved in zip(self.master_partitions, state_dict["fp32_flat_groups"]):
                master.data.copy_(saved)
            self._all_gather_params()
        else:
            self.refresh_fp32_from_params()

    def refresh_fp32_from_params(self) -> None:
        """Re-derive the fp32 masters from the (possibly just loaded) model parameters."""
        for layout, master in zip(self.layouts, self.master_partitions):
            master.data.copy_(layout.gather_local_chunks(self.shard_rank).to(master.dtype))

    def get_global_grad_norm(self) -> Optional[float]:
        return self._global_grad_norm
