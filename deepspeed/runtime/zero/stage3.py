"""ZeRO stage 3: the optimizer side.

Parameters are already partitioned (`ZeroParamState`) and gathered on demand
by the hooks (hooks.py / coordinator.py). This optimizer

* builds each group's fp32 master partition as the concatenation of this
  rank's shards of the group's trainable parameters (see
  [Note: master partitions] in optimizer_core.py),
* reduce-scatters each gradient as soon as autograd has accumulated it
  (`register_post_accumulate_grad_hook`), in buckets of
  `reduce_bucket_size` elements, into the master gradient, and frees the
  full gradient and (when nothing else needs it) the gathered parameter,
* after the shared step, writes the updated masters back into the shards
  (and re-gathers persistent parameters, which stay whole).
"""
from typing import Dict, List, Tuple

import torch

from deepspeed.runtime.zero.collectives import gather_params, reduce_scatter_grads
from deepspeed.runtime.zero.hooks import DeepSpeedZeRoOffload
from deepspeed.runtime.zero.optimizer_core import ZeroOptimizerCore
from deepspeed.runtime.zero.param import ZeroParamStatus

__all__ = ["DeepSpeedZeroOptimizer_Stage3"]


class DeepSpeedZeroOptimizer_Stage3(ZeroOptimizerCore):
    """Stage-3 optimizer; `parameter_offload` holds the hooks (TRL reads it)."""

    def __init__(self, module: torch.nn.Module, init_optimizer: torch.optim.Optimizer, *,
                 parameter_offload: DeepSpeedZeRoOffload, reduce_bucket_size: int = 500_000_000,
                 **core_kwargs) -> None:
        super().__init__(init_optimizer, **core_kwargs)
        self.stage = 3
        self.module = module
        self.parameter_offload = parameter_offload
        self.reduce_bucket_size = max(1, int(reduce_bucket_size))
        #: ds_id -> (group index, offset in that group's master)
        self._slots: Dict[int, Tuple[int, int]] = {}
        self.group_params: List[List[torch.nn.Parameter]] = []
        masters = []
        for gi, group in enumerate(self.optimizer.param_groups):
            params = [p for p in group["params"] if p.requires_grad]
            for p in params:
                if not hasattr(p, "ds_state"):
                    raise ValueError("ZeRO-3 optimizer got a parameter that is not partitioned; build the model "
                                     "under deepspeed.zero.Init or let deepspeed.initialize partition it")
            offset = 0
            for p in params:
                self._slots[p.ds_id] = (gi, offset)
                p._ds_hp = ("shard", self, gi, offset)  # see safe_get.py
                offset += p.ds_state.shard_numel
            self.group_params.append(params)
            masters.append(torch.cat([p.ds_tensor.reshape(-1).float() for p in params]) if params
                           else torch.zeros(0))
        self._install_masters(masters)
        self._setup_param_copies([params[0].ds_state.dtype if params else torch.float32
                                  for params in self.group_params])
        self._alias_fp32_shards()
        self._bucket: List[Tuple[torch.nn.Parameter, torch.Tensor]] = []
        self._bucket_numel = 0
        self._pending: List[Tuple[object, torch.Tensor, List[torch.nn.Parameter]]] = []
        self._grad_hooks = [p.register_post_accumulate_grad_hook(self._grad_ready)
                            for params in self.group_params for p in params]
        parameter_offload.backward_end_callbacks.append(self._finish_reduction)

    def _alias_fp32_shards(self) -> None:
        """fp32 models: make each shard a view into the master, so it is stored once.

        Without this the fp32 master would duplicate the fp32 shard (20 instead
        of 16 bytes per parameter over N). The optimizer then updates the shards
        in place and `_publish_params` has nothing to copy.
        """
        for params, master in zip(self.group_params, self.master_partitions):
            for p in params:
                shard = p.ds_tensor
                if shard.dtype != master.dtype or shard.device != master.device:
                    continue
                _, slot = self._slots[p.ds_id]
                view = master.data.narrow(0, slot, shard.numel())
                view.ds_numel, view.status, view.final_location = shard.ds_numel, shard.status, view.device
                p.ds_tensor = view

    def _partition_signature(self) -> List[int]:
        return [m.numel() for m in self.master_partitions]

    # ------------------------------------------------------------ backward
    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        self.scaled_backward(loss, retain_graph=retain_graph)

    def scaled_backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        if self.loss_scaler is not None:
            loss = loss * self.loss_scaler.cur_scale
        loss.backward(retain_graph=retain_graph)

    def after_backward(self) -> None:
        """Reductions were launched by the gradient hooks and flushed at the end of backward."""

    def _grad_ready(self, param: torch.nn.Parameter) -> None:
        """AccumulateGrad finished for `param`: queue its gradient and free the full tensors."""
        grad = param.grad
        param.grad = None
        if grad is None:
            return
        self._bucket.append((param, grad))
        self._bucket_numel += grad.numel()
        self.parameter_offload.coordinator.release_after_grad(param)
        if self._bucket_numel >= self.reduce_bucket_size:
            self._launch_bucket()

    def _launch_bucket(self) -> None:
        if not self._bucket:
            return
        params = [p for p, _ in self._bucket]
        grads = [g for _, g in self._bucket]
        dtype = self._reduce_dtype(grads[0].dtype)
        work, out = reduce_scatter_grads(params, grads, dtype, self.dp_group, self.gradient_predivide_factor)
        self._pending.append((work, out, params))
        self._bucket, self._bucket_numel = [], 0

    def _finish_reduction(self) -> None:
        self._launch_bucket()
        for work, out, params in self._pending:
            if work is not None:
                work.wait()
            offset = 0
            for p in params:
                size = p.ds_state.shard_numel
                gi, slot = self._slots[p.ds_id]
                self._accumulate_chunk(self.master_partitions[gi], slot, out.narrow(0, offset, size))
                offset += size
        self._pending = []

    # ------------------------------------------------------------- publish
    def _publish_params(self) -> None:
        persistent = []
        for gi, params in enumerate(self.group_params):
            for p in params:
                _, slot = self._slots[p.ds_id]
                shard = p.ds_tensor
                src = self._publish_source(gi).narrow(0, slot, shard.numel())
                if shard.data_ptr() != src.data_ptr():  # aliased fp32 shards are already up to date
                    shard.copy_(src.to(device=shard.device, dtype=shard.dtype))
                if p.ds_persist:
                    persistent.append(p)
                elif p.ds_status == ZeroParamStatus.AVAILABLE:
                    p.ds_state.release()  # stale full value; re-gathered on next use
        # Persistent parameters stay whole, so their full value must be refreshed.
        gather_params(persistent, async_op=False)

    def _clear_param_grads(self) -> None:
        for params in self.group_params:
            for p in params:
                p.grad = None

    def refresh_fp32_from_params(self) -> None:
        for params, master in zip(self.group_params, self.master_partitions):
            if params:
                master.data.copy_(torch.cat([p.ds_tensor.reshape(-1).float() for p in params]))
        self._refresh_param_copies()

    def state_dict(self) -> Dict:
        state = super().state_dict()
        state["zero_stage"] = 3
        return state

    def quantize_nontrainable_params(self) -> None:
        raise NotImplementedError("MixZ++ (zero_quantized_nontrainable_weights) is not available in this build yet")
