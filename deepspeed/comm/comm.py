"""`deepspeed.comm`: torch.distributed with DeepSpeed's names and guarantees.

What this layer adds over torch.distributed, and nothing more:
- `init_distributed` works under any launcher and also under a bare
  `python train.py` (a one-rank world), always with a finite timeout;
- every collective accepts DeepSpeed's `ReduceOp` as well as torch's, and
  AVG works on backends without a native average (gloo);
- a collective that times out raises `CollectiveTimeoutError` naming the
  operation, rank and world size instead of gloo's bare socket message;
- single-tensor all-gather / reduce-scatter use torch's current names
  (`all_gather_single`, `reduce_scatter_single`) so no FutureWarning fires;
- cheap per-op call/byte counters for `log_summary`.
All of it sits in one decorator, `_collective`, applied to each collective.
"""
import functools
import logging
import os
import socket
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from deepspeed.accelerator import get_accelerator

from . import groups
from .reduce_op import ReduceOp, is_avg, to_torch_op

__all__ = [
    "CollectiveTimeoutError", "ReduceOp", "init_distributed", "is_initialized", "is_available",
    "destroy_process_group", "get_rank", "get_world_size", "get_local_rank", "get_global_rank", "get_world_group",
    "get_backend", "new_group", "broadcast", "broadcast_object_list", "all_gather", "all_gather_object",
    "all_gather_into_tensor", "allgather_fn", "all_gather_coalesced", "reduce_scatter", "reduce_scatter_tensor",
    "reduce_scatter_fn", "all_to_all_single", "all_to_all", "send", "recv", "isend", "irecv", "gather", "scatter",
    "barrier", "monitored_barrier", "reduce", "all_reduce", "all_reduce_coalesced", "inference_all_reduce",
    "has_all_gather_into_tensor", "has_reduce_scatter_tensor", "log_summary", "get_collective_timeout",
    "record_collective"
]

logger = logging.getLogger(__name__)

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_DEFAULT_TIMEOUT_MINUTES = 10.0
# torch's newest name first; the older ones emit a FutureWarning on 2.13.
_ALL_GATHER_SINGLE_NAMES = ("all_gather_single", "all_gather_into_tensor", "_all_gather_base")
_REDUCE_SCATTER_SINGLE_NAMES = ("reduce_scatter_single", "reduce_scatter_tensor", "_reduce_scatter_base")
_UNSUPPORTED_MARKERS = ("not supported", "does not support", "not implemented", "unsupported")


class CollectiveTimeoutError(RuntimeError):
    """A collective did not complete within the process group's timeout."""

    def __init__(self, op: str, rank: int, world_size: int, timeout: Optional[timedelta], cause: str) -> None:
        self.op, self.rank, self.world_size, self.timeout = op, rank, world_size, timeout
        limit = f" after {timeout.total_seconds():g}s timeout" if timeout is not None else ""
        super().__init__(f"deepspeed.comm.{op} timed out{limit} on rank {rank} (world size {world_size}); "
                         f"a peer rank probably skipped or stalled before this collective. Backend said: {cause}")


class _CommState:
    """Per-process facts this layer learns: the init timeout and op counters."""

    def __init__(self) -> None:
        # Set by init_distributed; None when torch.distributed was initialised
        # by someone else and the timeout is unknown.
        self.timeout: Optional[timedelta] = None
        # op name -> [calls, bytes of the first tensor argument(s)].
        self.stats: Dict[str, List[int]] = {}
        # worlds destroyed so far: keys of each exit handshake are unique even if the store is reused
        self.exits = 0


_STATE = _CommState()


# --------------------------------------------------------------- plumbing
def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(t.numel() * t.element_size() for t in value if isinstance(t, torch.Tensor))
    return 0


def _is_timeout(err: BaseException) -> bool:
    text = str(err).lower()
    return "timed out" in text or "timeout" in text or "failed to pass monitoredbarrier" in text


def _timeout_error(op: str, err: BaseException) -> CollectiveTimeoutError:
    initialized = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if initialized else -1
    world = dist.get_world_size() if initialized else -1
    return CollectiveTimeoutError(op, rank, world, _STATE.timeout, str(err).strip())


class _Work:
    """Handle for an async collective: waits on torch's work object(s), then
    runs a finishing step (the AVG division, unflattening), and turns a
    backend timeout into CollectiveTimeoutError."""

    def __init__(self, works: Sequence[Any], finish: Optional[Callable[[], None]] = None) -> None:
        self.works = [w for w in works if w is not None]
        self.finish = finish
        self.op_name = "collective"

    def wait(self, timeout: Optional[timedelta] = None) -> bool:
        try:
            for work in self.works:
                if timeout is None:
                    work.wait()
                else:
                    work.wait(timeout)
        except RuntimeError as err:
            if _is_timeout(err):
                raise _timeout_error(self.op_name, err) from err
            raise
        if self.finish is not None:
            finish, self.finish = self.finish, None
            finish()
        return True

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self.works)

    def get_future(self) -> Any:
        if len(self.works) != 1 or self.finish is not None:
            raise RuntimeError("get_future() is only available for single, unpostprocessed collectives")
        return self.works[0].get_future()


def _finish(works: Sequence[Any], async_op: bool, post: Optional[Callable[[], None]] = None) -> Optional[_Work]:
    """Return a handle for async calls, or run `post` now for sync ones."""
    if async_op:
        return _Work(works, post)
    if post is not None:
        post()
    return None


def record_collective(name: str, tensor: Optional[torch.Tensor]) -> None:
    """Count one call of collective `name` moving `tensor` (log_summary's figures); collectives that
    bypass the process group (deepspeed/comm/shm.py) record themselves here under the op they replace."""
    stats = _STATE.stats.setdefault(name, [0, 0])
    stats[0] += 1
    stats[1] += _nbytes(tensor) if tensor is not None else 0


def _collective(fn: Callable) -> Callable:
    """Count the call and name the operation in timeout errors."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        record_collective(name, args[0] if args else None)
        try:
            result = fn(*args, **kwargs)
        except RuntimeError as err:
            if isinstance(err, CollectiveTimeoutError) or not _is_timeout(err):
                raise
            raise _timeout_error(name, err) from err
        if result is not None and not isinstance(result, _Work) and hasattr(result, "wait"):
            result = _Work([result])
        if isinstance(result, _Work):
            result.op_name = name
        return result

    return wrapper


def _reduce_plan(op: Any, group: Any, tensor: torch.Tensor) -> tuple[Any, Optional[int]]:
    """torch op to send, plus the divisor when AVG must be emulated."""
    if not is_avg(op):
        return to_torch_op(op), None
    if tensor.is_cuda and "nccl" in str(dist.get_backend(group)):
        return to_torch_op(op), None
    if not tensor.is_floating_point():
        raise TypeError(f"ReduceOp.AVG needs a floating-point tensor on this backend, got {tensor.dtype}")
    return dist.ReduceOp.SUM, dist.get_world_size(group)


def _divide(tensor: torch.Tensor, divisor: Optional[int]) -> Optional[Callable[[], None]]:
    if divisor is None:
        return None
    return lambda: tensor.div_(divisor)


def _first_attr(names: Sequence[str]) -> Optional[Callable]:
    for name in names:
        if hasattr(dist, name):
            return getattr(dist, name)
    return None


def _is_unsupported(err: BaseException) -> bool:
    text = str(err).lower()
    return any(marker in text for marker in _UNSUPPORTED_MARKERS)


# --------------------------------------------------------------- setup
def _default_timeout() -> timedelta:
    minutes = os.environ.get("DEEPSPEED_TIMEOUT")
    return timedelta(minutes=float(minutes) if minutes else _DEFAULT_TIMEOUT_MINUTES)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Rank variables set by MPI launchers and Slurm, mapped onto torch's names.
_SCHEDULER_ENVS = (
    {"RANK": "OMPI_COMM_WORLD_RANK", "WORLD_SIZE": "OMPI_COMM_WORLD_SIZE", "LOCAL_RANK": "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"RANK": "SLURM_PROCID", "WORLD_SIZE": "SLURM_NTASKS", "LOCAL_RANK": "SLURM_LOCALID"},
)


def _discover_scheduler_env() -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK from Open MPI or Slurm when the launcher ran ranks that way.

    The `deepspeed` launcher's openmpi and slurm runners export only
    MASTER_ADDR/MASTER_PORT; each rank learns its place from the scheduler.
    """
    if "RANK" in os.environ:
        return
    for mapping in _SCHEDULER_ENVS:
        if all(src in os.environ for src in mapping.values()):
            for dst, src in mapping.items():
                os.environ[dst] = os.environ[src]
            return


def _resolve_world(rank: int, world_size: int, init_method: Optional[str]) -> tuple[int, int]:
    """Rank and world size from the arguments or the launcher's env vars.

    With no launcher variables at all, sets up a one-rank world (and exports
    the variables, since the engine and HF read LOCAL_RANK) so `python
    train.py` just works. A partial set is a broken launch and raises.
    """
    _discover_scheduler_env()
    present = {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}
    uses_env = init_method is None or init_method.startswith("env://")
    if not present and rank < 0 and world_size < 0 and uses_env:
        single = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0",
                  "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        os.environ.update(single)
        logger.info("No launcher environment found; starting a single-process world on port %s",
                    single["MASTER_PORT"])
        return 0, 1
    needed = _ENV_KEYS if uses_env else ("RANK", "WORLD_SIZE")
    given = set(present) | ({"RANK"} if rank >= 0 else set()) | ({"WORLD_SIZE"} if world_size >= 0 else set())
    missing = [k for k in needed if k not in given]
    if missing:
        raise RuntimeError(f"deepspeed.comm.init_distributed: incomplete launcher environment, missing "
                           f"{', '.join(missing)} (found {', '.join(sorted(present)) or 'none'}). Launch with "
                           f"`deepspeed` or `torchrun`, or set all of {', '.join(_ENV_KEYS)}.")
    return (rank if rank >= 0 else int(present["RANK"]),
            world_size if world_size >= 0 else int(present["WORLD_SIZE"]))


def init_distributed(dist_backend: Optional[str] = None,
                     auto_mpi_discovery: bool = True,
                     distributed_port: int = 29500,
                     verbose: bool = True,
                     timeout: Optional[timedelta] = None,
                     init_method: Optional[str] = None,
                     dist_init_required: Optional[bool] = None,
                     config: Any = None,
                     rank: int = -1,
                     world_size: int = -1) -> None:
    """Initialise torch.distributed, or adopt an existing default group.

    `timeout` defaults to DEEPSPEED_TIMEOUT minutes, else 10 minutes; it is
    never infinite, so a stuck peer ends in CollectiveTimeoutError. The
    backend defaults to the accelerator's. `auto_mpi_discovery`,
    `distributed_port` and `config` are accepted for API compatibility.
    """
    if dist.is_initialized():
        if dist_backend is not None and dist_backend != dist.get_backend():
            logger.warning("torch.distributed already initialised with %s; ignoring requested backend %s",
                           dist.get_backend(), dist_backend)
        return
    if dist_init_required is False:
        return
    timeout = timeout if timeout is not None else _default_timeout()
    backend = dist_backend or get_accelerator().communication_backend_name()
    rank, world_size = _resolve_world(rank, world_size, init_method)
    dist.init_process_group(backend=backend, init_method=init_method or "env://", timeout=timeout, rank=rank,
                            world_size=world_size)
    _STATE.timeout = timeout
    if verbose and rank == 0:
        logger.info("Initialized torch.distributed: backend=%s world_size=%d timeout=%s", backend, world_size,
                    timeout)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_available() -> bool:
    return dist.is_available()


#: seconds rank 0 waits, after destroying the world, for the other ranks to have destroyed theirs
EXIT_HANDSHAKE_S = 60.0


def destroy_process_group(group: Any = None) -> None:
    """Destroy `group`, or the whole world (and the named-group registry).

    Destroying the world ends with a handshake through the rendezvous
    store: every other rank reports that its own teardown is done, and rank
    0, which hosts the store, waits for those reports before it returns.
    Otherwise rank 0 can exit, taking the store's server with it, while a
    peer is still tearing down; that peer then aborts in C++ ("terminate
    called without an active exception"), and a finished job counts as
    failed.
    """
    store, rank, world = None, 0, 1
    if group is None and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        if world > 1:
            try:
                store = dist.distributed_c10d._get_default_store()
            except Exception:  # a private torch helper: without it, no handshake
                store = None
    dist.destroy_process_group(group)
    if group is None:
        groups.reset()
        from deepspeed.comm.shm import reset_shared_groups  # shm.py imports this module
        reset_shared_groups()
        _STATE.timeout = None
        if store is not None:
            _exit_handshake(store, rank, world)


def _exit_handshake(store: Any, rank: int, world: int) -> None:
    _STATE.exits += 1
    prefix = f"deepspeed/exit/{_STATE.exits}"
    try:
        if rank != 0:
            store.set(f"{prefix}/{rank}", "1")
        else:
            store.wait([f"{prefix}/{r}" for r in range(1, world)], timedelta(seconds=EXIT_HANDSHAKE_S))
    except Exception as err:  # a peer that died or left early must not turn a clean exit into a failure
        logger.debug("exit handshake on rank %d: %s", rank, err)


def get_rank(group: Any = None) -> int:
    return dist.get_rank(group=group)


def get_world_size(group: Any = None) -> int:
    return dist.get_world_size(group=group)


def get_collective_timeout() -> Optional[timedelta]:
    """The timeout `init_distributed` gave the process group (None if someone else initialised it)."""
    return _STATE.timeout


def get_local_rank() -> int:
    """LOCAL_RANK from the launcher, else Open MPI's local rank, else 0."""
    for key in ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


def get_global_rank(group: Any = None, group_rank: int = 0) -> int:
    if group is None or group is dist.group.WORLD:
        return group_rank
    return dist.get_global_rank(group, group_rank)


def get_world_group() -> Any:
    return dist.group.WORLD


def get_backend(group: Any = None) -> str:
    return str(dist.get_backend(group))


def new_group(ranks: Optional[Sequence[int]] = None, **kwargs: Any) -> Any:
    return dist.new_group(ranks, **kwargs)


def has_all_gather_into_tensor() -> bool:
    return _first_attr(_ALL_GATHER_SINGLE_NAMES) is not None


def has_reduce_scatter_tensor() -> bool:
    return _first_attr(_REDUCE_SCATTER_SINGLE_NAMES) is not None


def log_summary(show_straggler: bool = False) -> Dict[str, Dict[str, int]]:
    """Log (on rank 0) and return per-op call counts and bytes sent."""
    summary = {op: {"count": calls, "bytes": nbytes} for op, (calls, nbytes) in sorted(_STATE.stats.items())}
    if not is_initialized() or dist.get_rank() == 0:
        for op, row in summary.items():
            logger.info("comm %-24s calls=%-8d bytes=%d", op, row["count"], row["bytes"])
    return summary


# --------------------------------------------------------------- collectives
@_collective
def broadcast(tensor: torch.Tensor, src: int, group: Any = None, async_op: bool = False) -> Optional[_Work]:
    return dist.broadcast(tensor, src, group=group, async_op=async_op)


@_collective
def broadcast_object_list(object_list: List[Any], src: int, group: Any = None, device: Any = None) -> None:
    dist.broadcast_object_list(object_list, src, group=group, device=device)


@_collective
def all_gather(tensor_list: List[torch.Tensor], tensor: torch.Tensor, group: Any = None,
               async_op: bool = False) -> Optional[_Work]:
    return dist.all_gather(tensor_list, tensor, group=group, async_op=async_op)


@_collective
def all_gather_object(object_list: List[Any], obj: Any, group: Any = None) -> None:
    dist.all_gather_object(object_list, obj, group=group)


def _all_gather_single(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any,
                       async_op: bool) -> Optional[Any]:
    """output_tensor: (world * n, ...) receives every rank's (n, ...) input."""
    native = _first_attr(_ALL_GATHER_SINGLE_NAMES)
    if native is not None:
        try:
            return native(output_tensor, input_tensor, group=group, async_op=async_op)
        except RuntimeError as err:
            if not _is_unsupported(err):
                raise
    chunks = list(output_tensor.chunk(dist.get_world_size(group)))
    return dist.all_gather(chunks, input_tensor, group=group, async_op=async_op)


@_collective
def all_gather_into_tensor(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None,
                           async_op: bool = False) -> Optional[_Work]:
    return _all_gather_single(output_tensor, input_tensor, group, async_op)


@_collective
def allgather_fn(output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: Any = None,
                 async_op: bool = False, debug: Optional[str] = None) -> Optional[_Work]:
    return _all_gather_single(output_tensor, input_tensor, group, async_op)


@_collective
def all_gather_coalesced(output_tensors: List[List[torch.Tensor]], input_tensors: List[torch.Tensor],
                         group: Any = None, async_op: bool = False) -> Optional[_Work]:
    """output_tensors[i] is the world-sized list that receives input_tensors[i]."""
    works = [dist.all_gather(out, inp, group=group, async_op=async_op)
             for out, inp in zip(output_tensors, input_tensors)]
    return _finish(works, async_op)


def _reduce_scatter_single(output_tensor: torch.Tensor, input_tensor: torch.Tensor, op: Any, group: Any,
                           async_op: bool) -> Optional[_Work]:
    """input_tensor: (world * n, ...); output_tensor: (n, ...) = reduced chunk of this rank."""
    torch_op, divisor = _reduce_plan(op, group, output_tensor)
    post = _divide(output_tensor, divisor)
    native = _first_attr(_REDUCE_SCATTER_SINGLE_NAMES)
    if native is not None:
        try:
            return _finish([native(output_tensor, input_tensor, op=torch_op, group=group, async_op=async_op)],
                           async_op, post)
        except RuntimeError as err:
            if not _is_unsupported(err):
                raise
    # Fallback for backends without reduce-scatter: reduce everything, keep
    # this rank's chunk (world-times the traffic, but correct).
    reduced = input_tensor.clone()
    work = dist.all_reduce(reduced, op=torch_op, group=group, async_op=async_op)

    def take_chunk() -> None:
        output_tensor.copy_(reduced.chunk(dist.get_world_size(group))[dist.get_rank(group)].view_as(output_tensor))
        if post is not None:
            post()

    return _finish([work], async_op, take_chunk)


@_collective
def reduce_scatter_tensor(output_tensor: torch.Tensor, input_tensor: torch.Tensor, op: Any = ReduceOp.SUM,
                          group: Any = None, async_op: bool = False) -> Optional[_Work]:
    return _reduce_scatter_single(output_tensor, input_tensor, op, group, async_op)


@_collective
def reduce_scatter_fn(output_tensor: torch.Tensor, tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None,
                      async_op: bool = False, debug: Optional[str] = None) -> Optional[_Work]:
    return _reduce_scatter_single(output_tensor, tensor, op, group, async_op)


@_collective
def reduce_scatter(output: torch.Tensor, input_list: List[torch.Tensor], op: Any = ReduceOp.SUM, group: Any = None,
                   async_op: bool = False) -> Optional[_Work]:
    torch_op, divisor = _reduce_plan(op, group, output)
    work = dist.reduce_scatter(output, input_list, op=torch_op, group=group, async_op=async_op)
    return _finish([work], async_op, _divide(output, divisor))


@_collective
def all_to_all_single(output: torch.Tensor, input: torch.Tensor, output_split_sizes: Optional[List[int]] = None,
                      input_split_sizes: Optional[List[int]] = None, group: Any = None,
                      async_op: bool = False) -> Optional[_Work]:
    return dist.all_to_all_single(output, input, output_split_sizes, input_split_sizes, group=group,
                                  async_op=async_op)


@_collective
def all_to_all(output_tensor_list: List[torch.Tensor], input_tensor_list: List[torch.Tensor], group: Any = None,
               async_op: bool = False) -> Optional[_Work]:
    return dist.all_to_all(output_tensor_list, input_tensor_list, group=group, async_op=async_op)


@_collective
def send(tensor: torch.Tensor, dst: int, group: Any = None, tag: int = 0) -> None:
    dist.send(tensor, dst, group=group, tag=tag)


@_collective
def recv(tensor: torch.Tensor, src: Optional[int] = None, group: Any = None, tag: int = 0) -> int:
    return dist.recv(tensor, src, group=group, tag=tag)


@_collective
def isend(tensor: torch.Tensor, dst: int, group: Any = None, tag: int = 0) -> _Work:
    return dist.isend(tensor, dst, group=group, tag=tag)


@_collective
def irecv(tensor: torch.Tensor, src: Optional[int] = None, group: Any = None, tag: int = 0) -> _Work:
    return dist.irecv(tensor, src, group=group, tag=tag)


@_collective
def gather(tensor: torch.Tensor, gather_list: Optional[List[torch.Tensor]] = None, dst: int = 0, group: Any = None,
           async_op: bool = False) -> Optional[_Work]:
    return dist.gather(tensor, gather_list, dst, group=group, async_op=async_op)


@_collective
def scatter(tensor: torch.Tensor, scatter_list: Optional[List[torch.Tensor]] = None, src: int = 0, group: Any = None,
            async_op: bool = False) -> Optional[_Work]:
    return dist.scatter(tensor, scatter_list, src, group=group, async_op=async_op)


@_collective
def barrier(group: Any = None, async_op: bool = False, device_ids: Optional[List[int]] = None) -> Optional[_Work]:
    return dist.barrier(group=group, async_op=async_op, device_ids=device_ids)


@_collective
def monitored_barrier(group: Any = None, timeout: Optional[timedelta] = None, wait_all_ranks: bool = False) -> None:
    dist.monitored_barrier(group=group, timeout=timeout, wait_all_ranks=wait_all_ranks)


@_collective
def reduce(tensor: torch.Tensor, dst: int, op: Any = ReduceOp.SUM, group: Any = None,
           async_op: bool = False) -> Optional[_Work]:
    torch_op, divisor = _reduce_plan(op, group, tensor)
    work = dist.reduce(tensor, dst, op=torch_op, group=group, async_op=async_op)
    # Only the destination holds the reduced value; other ranks' buffers
    # are unspecified, so only it divides.
    return _finish([work], async_op, _divide(tensor, divisor) if dist.get_rank() == dst else None)


@_collective
def all_reduce(tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None,
               async_op: bool = False) -> Optional[_Work]:
    torch_op, divisor = _reduce_plan(op, group, tensor)
    work = dist.all_reduce(tensor, op=torch_op, group=group, async_op=async_op)
    return _finish([work], async_op, _divide(tensor, divisor))


@_collective
def all_reduce_coalesced(tensors: List[torch.Tensor], op: Any = ReduceOp.SUM, group: Any = None,
                         async_op: bool = False) -> Optional[_Work]:
    """All-reduce many tensors with one collective per (dtype, device).

    Done here by flattening because torch's own all_reduce_coalesced is
    deprecated.
    """
    buckets: Dict[Any, List[torch.Tensor]] = {}
    for t in tensors:
        buckets.setdefault((t.dtype, t.device), []).append(t)
    works, posts = [], []
    for bucket in buckets.values():
        flat = _flatten_dense_tensors(bucket)
        torch_op, divisor = _reduce_plan(op, group, flat)
        works.append(dist.all_reduce(flat, op=torch_op, group=group, async_op=async_op))
        posts.append((bucket, flat, divisor))

    def unflatten() -> None:
        for bucket, flat, divisor in posts:
            if divisor is not None:
                flat.div_(divisor)
            for t, synced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                t.copy_(synced)

    return _finish(works, async_op, unflatten)


@_collective
def inference_all_reduce(tensor: torch.Tensor, op: Any = ReduceOp.SUM, group: Any = None) -> None:
    all_reduce.__wrapped__(tensor, op=op, group=group)
