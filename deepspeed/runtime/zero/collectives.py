"""Coalesced all-gather of parameter shards and reduce-scatter of gradients (ZeRO-3).

Pure communication: these functions only read `param.ds_state` (shard
layout) and call its transitions; they own no state.

[Note: coalesced shard layout]
For parameters p_1..p_k with shard sizes s_1..s_k, the send buffer is
`cat(shard(p_1), ..., shard(p_k))` (S = sum s_j elements) and the all-gather
output is `world` such blocks, rank-major. Parameter j's full (padded) value
is the column block `[:, off_j:off_j+s_j]` of that (world, S) matrix,
flattened. Reduce-scatter uses the same matrix in the other direction.
"""
from typing import List, Optional, Sequence

import torch

from deepspeed import comm as dist
from deepspeed.comm.shm import shared_group

__all__ = ["GatherHandle", "gather_params", "reduce_scatter_grads", "SOLO_GATHER_NUMEL"]


#: shards of at least this many elements get an all-gather of their own (see the note below)
SOLO_GATHER_NUMEL = 1 << 18

# [Note: solo gathers]
# A coalesced gather costs two copies of every byte besides the transfer:
# the shards are concatenated into the send buffer, and each parameter's
# column block of the (world, S) output is copied out into its own tensor.
# For a large shard those copies cost more than a collective's fixed
# latency, so each shard of at least SOLO_GATHER_NUMEL elements is gathered
# by itself: it is sent as it is, and the output, rank-major, already is
# the parameter's padded flat value, so nothing is copied. Measured on 2
# gloo ranks, the 8 layers of bench/hybrid_engine.py's OPT model (25M
# parameters) gathered at once: median 0.17 s coalesced, 0.13 s with solo
# gathers (its `gather_s` figure). Small shards stay coalesced, where one
# collective's fixed latency outweighs the copies. CPU ranks on one host
# send both kinds through shared memory instead of gloo ([Note:
# shared-memory all-gather] in deepspeed/comm/shm.py): at once, so an async
# gather is already complete when its handle is waited on.


class _Piece:
    """One all-gather in flight: the parameters it carries and where their values land."""

    def __init__(self, params: List[torch.nn.Parameter], work, out: torch.Tensor, sizes: List[int]) -> None:
        self.params, self.work, self.out, self.sizes = params, work, out, sizes

    def finish(self) -> None:
        if self.work is not None:
            self.work.wait()
        world = self.params[0].ds_state.world
        if len(self.params) == 1:
            self.params[0].ds_state.become_available(self.out)
        else:
            matrix = self.out.view(world, -1)
            offset = 0
            for p, size in zip(self.params, self.sizes):
                p.ds_state.become_available(matrix[:, offset:offset + size].reshape(-1))
                offset += size
        self.out = None


class GatherHandle:
    """In-flight (or finished) all-gathers for a list of parameters: one coalesced, plus solo ones."""

    def __init__(self, params: List[torch.nn.Parameter], pieces: List[_Piece]) -> None:
        self.params = params
        self._pieces = pieces
        self._done = False

    def wait(self) -> None:
        """Block until the data arrived, then make every parameter AVAILABLE."""
        if self._done:
            return
        for piece in self._pieces:
            piece.finish()
        self._pieces = []
        self._done = True


def _launch(params: List[torch.nn.Parameter]) -> _Piece:
    """Start one all-gather of `params`' shards, coalesced when there are several."""
    state0 = params[0].ds_state
    dtype, device = state0.dtype, state0.compute_device
    sizes = [p.ds_state.shard_numel for p in params]
    send = torch.cat([p.ds_tensor.to(device=device, dtype=dtype).reshape(-1) for p in params]) \
        if len(params) > 1 else params[0].ds_tensor.to(device=device, dtype=dtype).reshape(-1)
    out = torch.empty(send.numel() * state0.world, dtype=dtype, device=device)
    shm = shared_group(state0.group) if state0.world > 1 and device.type == "cpu" else None
    if shm is not None:  # ranks on one host: through shared memory, at once ([Note: shared-memory all-gather])
        shm.all_gather_into_tensor(out, send)
        work = None
    elif state0.world > 1:
        work = dist.all_gather_into_tensor(out, send, group=state0.group, async_op=True)
    else:
        out.copy_(send)
        work = None
    return _Piece(params, work, out, sizes)


def gather_params(params: Sequence[torch.nn.Parameter], async_op: bool = False) -> Optional[GatherHandle]:
    """All-gather the shards of `params` (all in one process group): small shards in one collective,
    large ones each in its own ([Note: solo gathers]).

    Marks them INFLIGHT; the returned handle's `wait()` makes them AVAILABLE.
    With `async_op=False` it waits before returning.
    """
    params = list(params)
    if not params:
        return None
    for p in params:
        p.ds_state.mark_inflight()
    solo = [p for p in params if p.ds_state.shard_numel >= SOLO_GATHER_NUMEL]
    small = [p for p in params if p.ds_state.shard_numel < SOLO_GATHER_NUMEL]
    pieces = [_launch([p]) for p in solo] + ([_launch(small)] if small else [])
    handle = GatherHandle(params, pieces)
    if not async_op:
        handle.wait()
    return handle


def reduce_scatter_grads(params: Sequence[torch.nn.Parameter], grads: Sequence[torch.Tensor], dtype: torch.dtype,
                         group, predivide: float = 1.0):
    """Sum full gradients over ranks, keeping this rank's shard of each.

    Returns `(work, out)`: `out` is (sum shard_numel,) in `dtype`, laid out
    like the master partition segment of these params; wait on `work`
    (None when world == 1) before reading it.
    """
    world = params[0].ds_state.world
    sizes = [p.ds_state.shard_numel for p in params]
    total = sum(sizes)
    send = torch.zeros(world, total, dtype=dtype, device=grads[0].device)
    offset = 0
    for p, g, size in zip(params, grads, sizes):
        flat = p.ds_state.padded_flat(g.to(dtype))
        send[:, offset:offset + size].copy_(flat.view(world, size))
        offset += size
    if predivide != 1.0:
        send.div_(predivide)
    if world == 1:
        return None, send.view(-1)
    out = torch.empty(total, dtype=dtype, device=send.device)
    return dist.reduce_scatter_tensor(out, send.view(-1), group=group, async_op=True), out
