"""Run a function on N local ranks with gloo, for tests.

`run_distributed(fn, world_size=2)` forks `world_size` processes, gives each
the launcher environment (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_SIZE,
MASTER_ADDR, MASTER_PORT), initialises `deepspeed.comm` with gloo, runs
`fn(*args, **kwargs)` and returns every rank's return value, in rank order.

Why fork: a forked rank starts in well under 0.1 s, against about 6 s for
spawn (which re-imports torch). It also means `fn`, `args` and `kwargs` are
inherited, not pickled, so closures and lambdas work; only return values
travel back through a pipe and must be picklable.

Fork safety: a parent that already ran multi-threaded torch/OpenMP work can
deadlock a forked child that starts its own thread team. Each child calls
`torch.set_num_threads(1)` before anything else, so ATen runs its parallel
loops inline and never touches the inherited OpenMP state; ranks are meant
to be small anyway (2 CPU cores per machine). tests/distributed checks that
a 512x512 matmul in the parent before `run_distributed` still works. So `fn`
must not raise the thread count again: with two threads a forked rank was
seen to hang in its first matmul.

Failure handling: the first rank that raises makes the call raise
AssertionError with that rank's number and full traceback, and the other
ranks are killed, not left hanging in a collective. If the harness timeout
passes, every rank is killed and the error lists the ranks that had not
finished.
"""
import functools
import multiprocessing
import multiprocessing.connection
import os
import socket
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import torch

import deepspeed.comm

__all__ = ["run_distributed", "distributed_test"]

# After every rank reported, how long stragglers get to tear down and exit.
_EXIT_GRACE_S = 10.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, fn: Callable, args: Sequence, kwargs: Mapping,
               init: bool, env: Optional[Mapping[str, Optional[str]]], conn: Any) -> None:
    """Body of one forked rank; always ends in os._exit so pytest's own
    atexit handlers and fixtures never run in the child."""
    status = 0
    try:
        os.environ.update({
            "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
            "LOCAL_SIZE": str(world_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
        })
        for key, value in (env or {}).items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = str(value)
        torch.set_num_threads(1)
        if init:
            deepspeed.comm.init_distributed(dist_backend="gloo", verbose=False)
        result = fn(*args, **kwargs)
        conn.send(("ok", result))
    except BaseException:  # noqa: BLE001  (everything, incl. SystemExit, goes back to the parent)
        status = 1
        try:
            conn.send(("error", traceback.format_exc()))
        except Exception:  # noqa: BLE001
            pass
    finally:
        try:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
        except Exception:  # noqa: BLE001  (teardown after the result was sent)
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _kill_all(procs: List[Any]) -> None:
    for proc in procs:
        if proc.is_alive():
            proc.kill()
    for proc in procs:
        proc.join(timeout=5)


def run_distributed(fn: Callable, world_size: int = 2, args: Sequence = (), kwargs: Optional[Mapping] = None,
                    timeout: float = 120.0, init: bool = True,
                    env: Optional[Mapping[str, Optional[str]]] = None) -> List[Any]:
    """Run `fn(*args, **kwargs)` on `world_size` forked gloo ranks.

    `env` entries are set in each rank after the launcher variables (a value
    of None unsets that variable). With `init=False` the process group is
    not created, so `fn` can test initialisation itself. Returns the ranks'
    return values in rank order.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise AssertionError("run_distributed: this (parent) process already holds a torch.distributed process "
                             "group, which forked ranks would inherit and hang on; run the code that initialises "
                             "it (deepspeed.initialize, zero.Init, ...) inside run_distributed instead")
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    procs, conns = [], []
    for rank in range(world_size):
        recv_end, send_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_rank_main, name=f"rank{rank}", daemon=True,
                           args=(rank, world_size, port, fn, tuple(args), dict(kwargs or {}), init, env, send_end))
        proc.start()
        send_end.close()
        procs.append(proc)
        conns.append(recv_end)

    results: Dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(results) < world_size:
            pending = [r for r in range(world_size) if r not in results]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill_all(procs)
                raise AssertionError(f"run_distributed timed out after {timeout:g}s; ranks {pending} had not "
                                     f"finished (ranks {sorted(results)} did)")
            waitables = [conns[r] for r in pending] + [procs[r].sentinel for r in pending]
            multiprocessing.connection.wait(waitables, timeout=remaining)
            for rank in pending:
                message = None
                if conns[rank].poll():
                    try:
                        message = conns[rank].recv()
                    except EOFError:
                        message = None
                elif procs[rank].is_alive():
                    continue
                if message is None:
                    procs[rank].join(timeout=1)
                    _kill_all(procs)
                    raise AssertionError(f"rank {rank} exited with code {procs[rank].exitcode} "
                                         f"without reporting a result")
                kind, payload = message
                if kind == "error":
                    _kill_all(procs)
                    raise AssertionError(f"rank {rank} of {world_size} raised:\n{payload}")
                results[rank] = payload
        for proc in procs:
            proc.join(timeout=max(0.1, min(_EXIT_GRACE_S, deadline - time.monotonic())))
    finally:
        _kill_all(procs)
        for conn in conns:
            conn.close()
    return [results[r] for r in range(world_size)]


def distributed_test(world_size: int = 2, timeout: float = 120.0, init: bool = True,
                     env: Optional[Mapping[str, Optional[str]]] = None) -> Callable:
    """Decorator: run a pytest test body on every rank.

    Fixtures still work (the signature is kept; their values are inherited
    through fork). The test returns None, as pytest expects.
    """

    def decorate(test_fn: Callable) -> Callable:

        @functools.wraps(test_fn)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            run_distributed(test_fn, world_size=world_size, args=args, kwargs=kwargs, timeout=timeout, init=init,
                            env=env)

        return wrapper

    return decorate
