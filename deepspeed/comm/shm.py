"""Shared-memory collectives for CPU tensors among the ranks of one process group on one host.

[Note: shared-memory all-reduce]
Inference tensor parallelism all-reduces a few KB twice per layer per
decode step. Over gloo each such all-reduce costs ~0.4-0.5 ms on loopback
(measured on 2 ranks of our 2-core machine, 16 to 8192 floats alike), which
at 8 layers is ~8 ms per step: more than the step's matmuls. The ranks of a
TP group normally share a host, so they can exchange the data through one
shared memory file instead (measured: 26 us for 16 floats, 30 us for 8192):

* layout: a header with one int64 sequence flag per rank, each on its own
  64-byte line, then two banks of one `capacity`-byte slot per rank;
* call n: each rank copies its tensor into its slot of bank n % 2, stores
  n in its flag, spins until every flag reaches n, then sums the slots in
  rank order (so every rank gets bit-identical results) into its tensor;
* reuse is safe with two banks: a rank writes bank n % 2 again only in call
  n + 2, after it saw every flag reach n + 1, and a rank stores n + 1 only
  after it finished reading call n's slots.

The data-then-flag protocol relies on x86-64's total store order (and the
plain stores torch's copy and numpy's assignment use for these sizes), so
other architectures, tensors over `capacity`, non-CPU tensors and groups
that span hosts use the process group's own all-reduce. A wait that runs
past the timeout raises CollectiveTimeoutError naming the rank, the op and
the ranks that did not arrive; it never spins forever. The file is
unlinked as soon as every rank has mapped it, so nothing is left in
/dev/shm, even if a rank dies.

[Note: shared-memory all-gather]
ZeRO-3 gathers parameter shards on every forward, and the Hybrid Engine
gathers the whole model once per generate call. Gloo's all-gather moves
0.5-1.4 GB/s on loopback (measured on our 2-core machine: 96 ms for a
64 MB output), while the same bytes copied through shared memory cost a
copy in and a copy out. `all_gather_into_tensor` cuts the flat input into
`capacity`-byte chunks and sends each like an all-reduce call (same slots,
banks and flags), except that each rank copies every rank's chunk into its
place in the output instead of summing. No arithmetic is involved, so the
result is bit for bit gloo's. `shared_group(group)` keeps one such object
per process group, created collectively on first use.
"""
from __future__ import annotations

import mmap
import os
import platform
import socket
import time
import uuid
from datetime import timedelta
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from deepspeed.comm import comm as dist
from deepspeed.comm.comm import CollectiveTimeoutError

__all__ = ["ShmGroup", "SHM_DIR", "shared_group", "reset_shared_groups"]

#: where the shared file is created (a tmpfs on Linux)
SHM_DIR = "/dev/shm"
_LINE = 64


class ShmGroup:
    """All-reduce (sum) of CPU tensors of at most `capacity` bytes, and all-gather of any size, through
    shared memory (see the notes above).

    Build it with `create`, collectively over the group; it returns None
    where shared memory cannot be used, and callers then keep the process
    group's all-reduce.
    """

    def __init__(self, path: str, rank: int, world: int, global_rank: int, capacity: int,
                 timeout: Optional[timedelta]) -> None:
        self.rank, self.world, self.global_rank, self.capacity = rank, world, global_rank, capacity
        self.timeout_s = timeout.total_seconds() if timeout is not None else None
        header = world * _LINE
        size = header + 2 * world * capacity
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._flags = np.frombuffer(self._map, dtype=np.int64, count=world * (_LINE // 8))[::_LINE // 8]
        data = torch.frombuffer(self._map, dtype=torch.uint8, offset=header, count=2 * world * capacity)
        self._slots = data.view(2, world, capacity)
        self._seq = 0

    @classmethod
    def create(cls, group: Any, ranks: List[int], capacity: int = 4 << 20,
               timeout: Optional[timedelta] = None) -> Optional["ShmGroup"]:
        """Collective over `group` (global `ranks`): the shared all-reduce, or None where it cannot be used."""
        world = len(ranks)
        if world < 2:
            return None
        usable = platform.machine().lower() in ("x86_64", "amd64") and os.path.isdir(SHM_DIR)
        hosts: List[Any] = [None] * world
        dist.all_gather_object(hosts, (socket.gethostname(), usable), group=group)
        if len({h for h, _ in hosts}) != 1 or not all(ok for _, ok in hosts):
            return None
        rank = dist.get_rank(group=group)
        header = world * _LINE
        path = [None]
        if rank == 0:
            path[0] = os.path.join(SHM_DIR, f"deepspeed_shm_{uuid.uuid4().hex}")
            fd = os.open(path[0], os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.ftruncate(fd, header + 2 * world * capacity)
            finally:
                os.close(fd)
        dist.broadcast_object_list(path, src=ranks[0], group=group)
        try:
            shm = cls(path[0], rank, world, ranks[rank], capacity, timeout)
            dist.barrier(group=group)
        finally:
            if rank == 0:
                os.unlink(path[0])
        return shm

    def fits(self, t: torch.Tensor) -> bool:
        """Whether `t` goes through shared memory (a contiguous CPU tensor of at most `capacity` bytes)."""
        return t.device.type == "cpu" and t.is_contiguous() and t.numel() * t.element_size() <= self.capacity

    def all_reduce(self, t: torch.Tensor) -> None:
        """Sum `t` over the group, in place; every rank must call it with a tensor of the same shape and dtype."""
        if not self.fits(t):
            raise ValueError(f"ShmGroup.all_reduce: a {tuple(t.shape)} {t.dtype} tensor on {t.device} does not fit "
                             f"(contiguous CPU tensors of at most {self.capacity} bytes); use dist.all_reduce")
        dist.record_collective("all_reduce", t)
        n = self._seq + 1
        nbytes = t.numel() * t.element_size()
        bank = self._slots[n % 2]
        bank[self.rank, :nbytes].copy_(t.view(-1).view(torch.uint8))
        self._flags[self.rank] = n
        self._wait(n)
        parts = [bank[r, :nbytes].view(t.dtype).view(t.shape) for r in range(self.world)]
        t.copy_(parts[0])
        for part in parts[1:]:
            t.add_(part)
        self._seq = n

    def all_gather_into_tensor(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        """out (world * n,) <- every rank's inp (n,), rank-major, as dist.all_gather_into_tensor; CPU tensors."""
        if inp.device.type != "cpu" or out.device.type != "cpu" or out.dtype != inp.dtype \
                or out.numel() != inp.numel() * self.world or not out.is_contiguous():
            raise ValueError(f"ShmGroup.all_gather_into_tensor: needs CPU tensors of one dtype and a contiguous "
                             f"output of world * {inp.numel()} elements; got {inp.dtype} {tuple(inp.shape)} on "
                             f"{inp.device} -> {out.dtype} {tuple(out.shape)} on {out.device}")
        dist.record_collective("all_gather_into_tensor", out)
        src = inp.contiguous().view(-1).view(torch.uint8)
        dst = out.view(-1).view(torch.uint8).view(self.world, -1)
        total = src.numel()
        for start in range(0, max(total, 1), self.capacity):
            size = min(self.capacity, total - start)
            n = self._seq + 1
            bank = self._slots[n % 2]
            bank[self.rank, :size].copy_(src[start:start + size])
            self._flags[self.rank] = n
            self._wait(n, "all_gather")
            dst[:, start:start + size].copy_(bank[:, :size])
            self._seq = n

    def _wait(self, n: int, op: str = "all_reduce") -> None:
        flags = self._flags
        spins = 0
        start = time.monotonic()
        while not bool((flags >= n).all()):
            spins += 1
            if spins > 4096:
                time.sleep(50e-6)  # a long wait (a peer still computing): stop burning the core
            elif spins > 64:
                time.sleep(0)  # yield the core when ranks outnumber them
            if spins % 1024 == 0 and self.timeout_s is not None and time.monotonic() - start > self.timeout_s:
                missing = [r for r in range(self.world) if flags[r] < n]
                raise CollectiveTimeoutError(
                    f"shm {op}", self.global_rank, self.world, timedelta(seconds=self.timeout_s),
                    f"group ranks {missing} did not reach call {n} (each is at its own last call count "
                    f"{[int(flags[r]) for r in missing]})")


#: process group -> its ShmGroup, or None where shared memory cannot serve it
_SHARED: Dict[Any, Optional[ShmGroup]] = {}


def shared_group(group: Any = None) -> Optional[ShmGroup]:
    """The ShmGroup of `group` (None: the world), created on first use, collectively: every rank of the
    group must reach its first call at the same point of its collectives. None where it cannot be used."""
    if group not in _SHARED:
        ranks = [dist.get_global_rank(group, r) for r in range(dist.get_world_size(group))]
        _SHARED[group] = ShmGroup.create(group, ranks, timeout=dist.get_collective_timeout())
    return _SHARED[group]


def reset_shared_groups() -> None:
    """Forget every group's ShmGroup (the process groups were destroyed)."""
    _SHARED.clear()
