"""The part of the ZeRO optimizer that every stage shares.

A stage subclass decides how parameters map onto this rank's fp32 master
partition and how gradients get there; this core owns everything after:
overflow detection, unscaling and clipping, the inner optimizer step on the
masters, the loss scaler, DS-Chat's `skip_step`, and the optimizer's
state dict.

[Note: master partitions]
For each param group of the wrapped optimizer there is one flat fp32 tensor,
`master_partitions[i]`, holding this rank's share of the group's trainable
parameters, with `.grad` of the same size. The wrapped optimizer's group
dicts are kept (only their `params` lists are replaced by the master), so
schedulers built on the original optimizer keep working. The masters live on
the parameters' device, or on the CPU under ZeRO-Offload.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch

from deepspeed import comm as dist
from deepspeed.runtime.precision.loss_scaler import LossScalerBase
from deepspeed.runtime.precision.overflow import local_overflow

__all__ = ["ZeroOptimizerCore"]


class ZeroOptimizerCore:
    """Shared step logic; subclasses implement the abstract hooks below."""

    def __init__(self,
                 init_optimizer: torch.optim.Optimizer,
                 *,
                 dp_group=None,
                 loss_scaler: Optional[LossScalerBase] = None,
                 check_overflow: bool = False,
                 clip_grad: float = 0.0,
                 communication_dtype: Optional[torch.dtype] = None,
                 gradient_predivide_factor: float = 1.0,
                 offload_optimizer: bool = False,
                 pin_memory: bool = False) -> None:
        self.optimizer = init_optimizer
        self.dp_group = dp_group
        self.dp_world = dist.get_world_size(group=dp_group) if dist.is_initialized() else 1
        self.dp_rank = dist.get_rank(group=dp_group) if dist.is_initialized() else 0
        self.loss_scaler = loss_scaler
        # fp16 always checks for overflow; bf16 checks when configured.
        self.check_overflow_enabled = check_overflow or loss_scaler is not None
        self.clip_grad = float(clip_grad or 0.0)
        self.communication_dtype = communication_dtype
        self.gradient_predivide_factor = gradient_predivide_factor
        #: ZeRO-Offload: masters, their grads and the optimizer state live on the CPU
        self.offload_optimizer = offload_optimizer
        self.pin_memory = pin_memory

        #: set by `step` and by `check_overflow`; DS-Chat reads it
        self.overflow = False
        #: DS-Chat's align_overflow sets this to skip the next step
        self.skip_step = False
        self._global_grad_norm: Optional[float] = None
        self.master_partitions: List[torch.Tensor] = []
        #: offload + a 16-bit model: the CPU optimizer writes the updated values
        #: in the model dtype into these, in the same pass as the update
        self._param_copies: Optional[List[torch.Tensor]] = None

    # ----------------------------------------------------- subclass hooks
    def _finish_reduction(self) -> None:
        """Make every pending gradient reduction land in the masters' `.grad`."""
        raise NotImplementedError

    def _publish_params(self) -> None:
        """Copy updated masters back into the model parameters (all-gather or shard write)."""
        raise NotImplementedError

    def _clear_param_grads(self) -> None:
        """Drop the model parameters' own `.grad` tensors."""
        raise NotImplementedError

    def _partition_signature(self) -> List[int]:
        """Sizes that must match for a checkpoint to load onto this layout."""
        return [m.numel() for m in self.master_partitions]

    def refresh_fp32_from_params(self) -> None:
        """Re-derive the fp32 masters from the model parameters (after a module-only load)."""
        raise NotImplementedError

    # --------------------------------------------------------- set-up
    def _install_masters(self, masters: Sequence[torch.Tensor]) -> None:
        """Put one master per param group into the wrapped optimizer (see [Note: master partitions])."""
        for group, master in zip(self.optimizer.param_groups, masters):
            if self.offload_optimizer:
                master = master.to("cpu")
                if self.pin_memory and torch.cuda.is_available():
                    master = master.pin_memory()
            master = master.float().clone().detach()
            master.grad = torch.zeros_like(master)
            self.master_partitions.append(master)
            group["params"] = [master]
        self._reset_inner_state()

    def _setup_param_copies(self, model_dtypes: Sequence[torch.dtype]) -> None:
        """Under offload, let the CPU optimizer emit 16-bit parameters directly (fused copy).

        Sending parameters back then reads 2 bytes per element instead of
        re-reading and casting the fp32 master.
        """
        if not self.offload_optimizer or not hasattr(self.optimizer, "step_with_copy"):
            return
        if not all(dtype in (torch.float16, torch.bfloat16) for dtype in model_dtypes):
            return
        copies = []
        for master, dtype in zip(self.master_partitions, model_dtypes):
            copy = torch.empty(master.numel(), dtype=dtype)
            if self.pin_memory and torch.cuda.is_available():
                copy = copy.pin_memory()
            copies.append(copy)
        self._param_copies = copies
        self._refresh_param_copies()

    def _refresh_param_copies(self) -> None:
        for copy, master in zip(self._param_copies or [], self.master_partitions):
            copy.copy_(master)

    def _publish_source(self, group_index: int) -> torch.Tensor:
        """What `_publish_params` sends back: the fused 16-bit copy, or the fp32 master."""
        if self._param_copies is not None:
            return self._param_copies[group_index]
        return self.master_partitions[group_index]

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

    # ------------------------------------------------ optimizer surface
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

    def _reduce_dtype(self, param_dtype: torch.dtype) -> torch.dtype:
        return self.communication_dtype or param_dtype

    def _accumulate_chunk(self, master: torch.Tensor, offset: int, chunk: torch.Tensor) -> None:
        """Add a reduced gradient chunk (already summed over ranks) into the master grad.

        Applies the mean over ranks (with the pre-divide factor undone) and
        copies to the master's device, which is the CPU under offload.
        """
        chunk.mul_(self.gradient_predivide_factor / self.dp_world)
        dst = master.grad.narrow(0, offset, chunk.numel())
        dst.add_(chunk.to(device=dst.device, dtype=dst.dtype))

    def get_global_grad_norm(self) -> Optional[float]:
        return self._global_grad_norm

    # --------------------------------------------------------- overflow
    def check_overflow(self, partition_gradients: bool = True, external: bool = False) -> bool:
        """Whether any rank's reduced gradient has inf/nan; sets `self.overflow`.

        `external=True` (DS-Chat's align_overflow) reduces pending gradients
        first so the answer covers the coming step.
        """
        if external:
            self._finish_reduction()
        flag = local_overflow([m.grad for m in self.master_partitions])
        if self.dp_world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.dp_group)
        self.overflow = bool(flag.item() > 0)
        return self.overflow

    # ------------------------------------------------------------- step
    def _partitions_are_sharded(self) -> bool:
        return True

    def _global_norm(self) -> float:
        """L2 norm of the full (scaled) gradient across all partitions."""
        sq = torch.zeros((), dtype=torch.float32)
        for m in self.master_partitions:
            sq += m.grad.float().pow(2).sum().cpu()
        if self.dp_world > 1 and self._partitions_are_sharded():
            dist.all_reduce(sq, group=self.dp_group)
        return math.sqrt(float(sq))

    def step(self, closure=None) -> None:
        """Reduce, check overflow, unscale + clip, step the masters, publish params."""
        self._finish_reduction()
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
        if self._param_copies is not None:
            self.optimizer.step_with_copy([[c] for c in self._param_copies], closure=closure)
        elif closure is not None:
            self.optimizer.step(closure)
        else:
            self.optimizer.step()
        self._publish_params()
        if self.loss_scaler is not None:
            self.loss_scaler.update_scale(False)
        self.zero_grad()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for m in self.master_partitions:
            m.grad.zero_()
        self._clear_param_grads()

    # ------------------------------------------------------- state dict
    def state_dict(self) -> Dict:
        return {
            "optimizer_state_dict": self.optimizer.state_dict(),
            "fp32_flat_groups": [m.detach().clone() for m in self.master_partitions],
            "loss_scaler": self.loss_scaler.state_dict() if self.loss_scaler is not None else None,
            "overflow": self.overflow,
            "partition_count": self.dp_world if self._partitions_are_sharded() else 1,
            "partition_numel": self._partition_signature(),
        }

    def load_state_dict(self, state_dict: Dict, load_optimizer_states: bool = True,
                        load_from_fp32_weights: bool = True) -> None:
        count = self.dp_world if self._partitions_are_sharded() else 1
        saved = (state_dict.get("partition_count"), state_dict.get("partition_numel"))
        if saved != (count, self._partition_signature()):
            raise RuntimeError(
                f"ZeRO checkpoint was saved with {saved[0]} partitions of sizes {saved[1]}, but this run uses "
                f"{count} partitions of sizes {self._partition_signature()}. Resume with the same data-parallel "
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
            for master, saved_master in zip(self.master_partitions, state_dict["fp32_flat_groups"]):
                master.data.copy_(saved_master)
            self._refresh_param_copies()
            self._publish_params()
        else:
            self.refresh_fp32_from_params()
