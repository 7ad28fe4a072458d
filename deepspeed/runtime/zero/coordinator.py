"""Decides when ZeRO-3 parameters are gathered, prefetched and released.

[Note: iterations, traces and in-flight registries]
An *iteration* starts at the root module's forward (`reset_step`) and ends
when no more use of the parameters can follow: at the end of backward, or
at the end of a forward that builds no autograd graph. Every submodule
fetch is recorded into a *trace* during the first iteration (RECORD); from
the next one on (COMPLETE) the trace drives prefetching: after fetching the
module at trace position i, the parameters of the following modules are
all-gathered asynchronously, up to `prefetch_bucket_size` elements and never
beyond `max_live_parameters` gathered elements. A module seen out of order
invalidates the trace, which is re-recorded next iteration.

Prefetched gathers are *in flight*: their handles sit in an in-flight
registry until the module that needs them waits on them. Training and
eval/generation each have their own trace and registry, because they visit
modules in different orders; on every mode switch, and at the end of every
iteration, both registries are drained (all handles waited, all
non-persistent parameters released), so no sequence of train / eval /
generate calls can leave a parameter INFLIGHT.
"""
from enum import Enum
from typing import Dict, List, Optional, Sequence, Set

import torch

from deepspeed.runtime.zero.collectives import GatherHandle, gather_params
from deepspeed.runtime.zero.param import ZeroParamStatus

__all__ = ["PartitionedParameterCoordinator", "TraceMode", "module_params"]


class TraceMode(Enum):
    #: recording the module order of this iteration
    RECORD = 1
    #: a full iteration was recorded; it drives prefetching
    COMPLETE = 2
    #: the order changed; re-record next iteration
    INVALID = 3


def module_params(module: torch.nn.Module) -> List[torch.nn.Parameter]:
    """The ZeRO parameters a module's forward needs: its own plus registered external ones."""
    params = [p for p in module.parameters(recurse=False) if hasattr(p, "ds_state")]
    external = getattr(module, "_ds_external_params", None)
    if external:
        params += [p for p in external.values() if p not in params]
    return params


class _InflightRegistry:
    """ds_id -> handle of an all-gather launched ahead of use."""

    def __init__(self) -> None:
        self._handles: Dict[int, GatherHandle] = {}

    def add(self, handle: GatherHandle) -> None:
        for p in handle.params:
            self._handles[p.ds_id] = handle

    def wait(self, param: torch.nn.Parameter) -> bool:
        handle = self._handles.get(param.ds_id)
        if handle is None:
            return False
        handle.wait()
        for p in handle.params:
            self._handles.pop(p.ds_id, None)
        return True

    def drain(self) -> None:
        for handle in set(self._handles.values()):
            handle.wait()
        self._handles.clear()

    def __len__(self) -> int:
        return len(self._handles)


class _Trace:
    """The module order of one iteration, plus what prefetch and reuse need from it."""

    def __init__(self) -> None:
        self.mode = TraceMode.RECORD
        self.modules: List[torch.nn.Module] = []
        # derived when the trace completes
        self._cum_numel: List[int] = []
        self._next_use: List[Dict[int, int]] = []

    def complete(self) -> None:
        self.mode = TraceMode.COMPLETE
        n = len(self.modules)
        self._cum_numel = [0] * (n + 1)
        for i, m in enumerate(self.modules):
            self._cum_numel[i + 1] = self._cum_numel[i] + sum(p.ds_numel for p in module_params(m))
        # next_use[i][ds_id]: the first index > i whose module uses that param
        self._next_use = [dict() for _ in range(n)]
        upcoming: Dict[int, int] = {}
        for i in range(n - 1, -1, -1):
            self._next_use[i] = dict(upcoming)
            for p in module_params(self.modules[i]):
                upcoming[p.ds_id] = i

    def reuse_distance(self, position: int, param: torch.nn.Parameter) -> Optional[int]:
        """Elements fetched between trace position `position` and the param's next use, if any."""
        if self.mode != TraceMode.COMPLETE or position >= len(self._next_use):
            return None
        nxt = self._next_use[position].get(param.ds_id)
        if nxt is None:
            return None
        return self._cum_numel[nxt] - self._cum_numel[position + 1]


class PartitionedParameterCoordinator:
    """Fetch / release / prefetch for one model (see the note at the top)."""

    def __init__(self, prefetch_bucket_size: int, max_live_parameters: int, max_reuse_distance: int) -> None:
        self.prefetch_bucket_size = int(prefetch_bucket_size)
        self.max_live_parameters = int(max_live_parameters)
        self.max_reuse_distance = int(max_reuse_distance)
        # One trace and one in-flight registry per mode (True = training).
        self._traces = {True: _Trace(), False: _Trace()}
        self._registries = {True: _InflightRegistry(), False: _InflightRegistry()}
        self._mode: Optional[bool] = None
        self._position = 0
        # Non-persistent params currently AVAILABLE or INFLIGHT, by ds_id.
        self._live: Dict[int, torch.nn.Parameter] = {}
        self._recorded_this_iteration = False

    # ------------------------------------------------------------ queries
    @property
    def live_numel(self) -> int:
        return sum(p.ds_numel for p in self._live.values())

    def inflight_count(self) -> int:
        return sum(len(r) for r in self._registries.values())

    def trace_mode(self, training: bool) -> TraceMode:
        return self._traces[training].mode

    # ---------------------------------------------------------- iteration
    def reset_step(self, training: bool) -> None:
        """Start of an iteration. Completes a recorded trace; a mode switch drains everything."""
        if self._mode is not None and self._mode != training:
            self.end_iteration()
        self._mode = training
        trace = self._traces[training]
        if trace.mode == TraceMode.RECORD and trace.modules:
            trace.complete()
        elif trace.mode == TraceMode.INVALID:
            trace.mode, trace.modules = TraceMode.RECORD, []
        self._position = 0

    def end_iteration(self) -> None:
        """Wait for every in-flight gather and release every non-persistent parameter."""
        for registry in self._registries.values():
            registry.drain()
        for p in list(self._live.values()):
            p.ds_active_sub_modules.clear()
            self._release(p)
        self._live.clear()

    def _invalidate_trace(self) -> None:
        """TRL calls this private name after re-registering hooks."""
        self.invalidate_trace()

    def invalidate_trace(self) -> None:
        """The module order changed: stop prefetching and re-record next iteration."""
        mode = self._mode if self._mode is not None else True
        self._traces[mode].mode = TraceMode.INVALID
        self._registries[mode].drain()

    # ------------------------------------------------------ fetch/release
    def fetch_sub_module(self, module: torch.nn.Module) -> None:
        """Make `module`'s parameters AVAILABLE, then prefetch along the trace."""
        mode = self._mode if self._mode is not None else module.training
        trace, registry = self._traces[mode], self._registries[mode]
        position = self._position
        if trace.mode == TraceMode.RECORD:
            trace.modules.append(module)
        elif trace.mode == TraceMode.COMPLETE:
            if position >= len(trace.modules) or trace.modules[position] is not module:
                self.invalidate_trace()
        self._position += 1

        params = module_params(module)
        for p in params:
            if p.ds_status == ZeroParamStatus.INFLIGHT:
                if not (registry.wait(p) or self._registries[not mode].wait(p)):
                    raise RuntimeError(f"ZeRO-3 parameter {p.ds_id} is INFLIGHT but no registry holds its "
                                       f"gather; summary: {p.ds_summary()}")
        missing = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
        if missing:
            gather_params(missing, async_op=False)
        for p in params:
            if not p.ds_persist:
                self._live[p.ds_id] = p
            p.ds_active_sub_modules.add(id(module))
        if trace.mode == TraceMode.COMPLETE and self.prefetch_bucket_size > 0:
            self._prefetch(trace, registry, position)

    def _prefetch(self, trace: _Trace, registry: _InflightRegistry, position: int) -> None:
        budget = min(self.prefetch_bucket_size, self.max_live_parameters - self.live_numel)
        chosen: List[torch.nn.Parameter] = []
        seen: Set[int] = set()
        for module in trace.modules[position + 1:]:
            if budget <= 0:
                break
            for p in module_params(module):
                if p.ds_status != ZeroParamStatus.NOT_AVAILABLE or p.ds_id in seen:
                    continue
                seen.add(p.ds_id)
                chosen.append(p)
                budget -= p.ds_numel
        if chosen:
            registry.add(gather_params(chosen, async_op=True))
            for p in chosen:
                self._live[p.ds_id] = p

    def release_sub_module(self, module: torch.nn.Module, backward: bool = False) -> None:
        """`module` is done with its parameters; release those nobody needs soon.

        In the forward pass, a parameter whose next use (per the trace) is
        within `max_reuse_distance` elements stays gathered. In backward,
        trainable parameters are released by their gradient hook instead,
        because AccumulateGrad may still run after this point.
        """
        trace = self._traces[self._mode if self._mode is not None else module.training]
        for p in module_params(module):
            p.ds_active_sub_modules.discard(id(module))
            if p.ds_persist or p.ds_active_sub_modules:
                continue
            if backward:
                if not p.requires_grad or getattr(p.ds_state, "grad_done", False):
                    self._release(p)
                continue
            distance = trace.reuse_distance(self._position - 1, p)
            if distance is not None and distance <= self.max_reuse_distance:
                continue
            self._release(p)

    def release_after_grad(self, param: torch.nn.Parameter) -> None:
        """Called by the gradient hook once the parameter's gradient was taken."""
        param.ds_state.grad_done = True
        if not param.ds_persist and not param.ds_active_sub_modules:
            self._release(param)

    def _release(self, param: torch.nn.Parameter) -> None:
        if param.ds_persist:
            return
        if param.ds_status == ZeroParamStatus.INFLIGHT:
            for registry in self._registries.values():
                registry.wait(param)
        if param.ds_status == ZeroParamStatus.AVAILABLE:
            param.ds_state.release()
        self._live.pop(param.ds_id, None)

    def gather_now(self, params: Sequence[torch.nn.Parameter]) -> List[torch.nn.Parameter]:
        """Synchronously gather `params` (GatheredParameters); returns those that were gathered."""
        for p in params:
            if p.ds_status == ZeroParamStatus.INFLIGHT:
                for registry in self._registries.values():
                    registry.wait(p)
        missing = [p for p in params if p.ds_status == ZeroParamStatus.NOT_AVAILABLE]
        gather_params(missing, async_op=False)
        return missing
