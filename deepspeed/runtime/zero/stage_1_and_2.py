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
from typing import List

import torch

from deepspeed import comm as dist
from deepspeed.runtime.zero.optimizer_core import ZeroOptimizerCore
from deepspeed.runtime.zero.partition import FlatLayout

__all__ = ["DeepSpeedZeroOptimizer"]


class DeepSpeedZeroOptimizer(ZeroOptimizerCore):
    """ZeRO stages 0-2 over bucket-interleaved flat buffers (see partition.py)."""

    def __init__(self, init_optimizer: torch.optim.Optimizer, *, stage: int, reduce_bucket_size: int = 500_000_000,
                 **core_kwargs) -> None:
        if stage not in (0, 1, 2):
            raise ValueError(f"DeepSpeedZeroOptimizer handles stages 0-2, got {stage}")
        super().__init__(init_optimizer, **core_kwargs)
        self.stage = stage
        # Stage 0 keeps everything whole: its "shard world" is 1.
        self.shard_world = self.dp_world if stage > 0 else 1
        self.shard_rank = self.dp_rank if stage > 0 else 0
        self._has_local_grads = False
        self.layouts: List[FlatLayout] = []
        masters = []
        for group in self.optimizer.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            layout = FlatLayout(params, reduce_bucket_size, self.shard_world)
            for bucket in layout.buckets:
                for p, offset in zip(bucket.params, bucket.offsets):
                    p._ds_hp = ("flat", self, len(self.layouts), bucket, offset)  # see safe_get.py
            self.layouts.append(layout)
            masters.append(layout.gather_local_chunks(self.shard_rank))
        self._install_masters(masters)
        self._setup_param_copies([layout.buckets[0].buffer.dtype if layout.buckets else torch.float32
                                  for layout in self.layouts])

    def _partitions_are_sharded(self) -> bool:
        return self.shard_world > 1

    def _partition_signature(self) -> List[int]:
        return [layout.partition_numel for layout in self.layouts]

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
            self._accumulate_chunk(master, bucket.partition_offset, out)
        self._has_local_grads = False

    _finish_reduction = reduce_gradients

    # ------------------------------------------------------------- publish
    def _publish_params(self) -> None:
        """Copy updated master chunks into the 16-bit buffers and all-gather them."""
        pending = []
        for gi, layout in enumerate(self.layouts):
            for bucket in layout.buckets:
                src = self._publish_source(gi).narrow(0, bucket.partition_offset, bucket.chunk_numel)
                if self.shard_world == 1:
                    bucket.buffer.copy_(src)
                    continue
                chunk = src.to(device=bucket.buffer.device, dtype=bucket.buffer.dtype)
                pending.append(dist.all_gather_into_tensor(bucket.buffer, chunk, group=self.dp_group, async_op=True))
        for work in pending:
            work.wait()

    def _clear_param_grads(self) -> None:
        for layout in self.layouts:
            for p in layout.params:
                p.grad = None
        self._has_local_grads = False

    def refresh_fp32_from_params(self) -> None:
        for layout, master in zip(self.layouts, self.master_partitions):
            master.data.copy_(layout.gather_local_chunks(self.shard_rank).to(master.dtype))
        self._refresh_param_copies()

    def state_dict(self):
        state = super().state_dict()
        state["zero_stage"] = self.stage
        return state
