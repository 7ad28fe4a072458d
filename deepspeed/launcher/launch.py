"""Per-node process starter: ``python -m deepspeed.launcher.launch --world_info=<b64> ... script args``.

The runner (or pdsh on every node) starts one of these per node. It starts
one process per local slot with the rendezvous environment set, then watches
them. [Note: fail fast] A job whose rank died can never finish: the others
block forever in their next collective. So the first rank to exit non-zero
ends the whole node (SIGTERM, then SIGKILL after a grace period), and this
process exits with that rank's code, naming the rank. Nothing is left behind:
each rank runs in its own process group, which is what gets signalled, and
each rank is tied to this process with PR_SET_PDEATHSIG so that even a
SIGKILL of the launcher takes the ranks with it.

Plain ``subprocess`` polling is used rather than torch's elastic agent: the
agent restarts workers and waits on a rendezvous, whose timeouts would turn a
rank failure into a slow exit; here the failure policy is exactly the one
above and fits in a few lines.
"""
import argparse
import base64
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from deepspeed.accelerator import get_accelerator

from .constants import KILL_GRACE_SECONDS, POLL_INTERVAL_SECONDS

__all__ = [
    "encode_world_info",
    "decode_world_info",
    "RankSpec",
    "launch_command",
    "parse_args",
    "build_rank_specs",
    "parse_core_list",
    "spawn",
    "terminate_processes",
    "forwarding_signals",
    "exit_code_of",
    "supervise",
    "main",
]

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def encode_world_info(world_info: Mapping[str, Sequence[int]]) -> str:
    """``{host: [slot ids]}`` as base64 JSON: one shell-safe word for any command line."""
    payload = json.dumps({host: list(slots) for host, slots in world_info.items()})
    return base64.urlsafe_b64encode(payload.encode("utf-8")).decode("ascii")


def decode_world_info(encoded: str) -> Dict[str, List[int]]:
    """Inverse of :func:`encode_world_info`; host order (the node order) is kept."""
    payload = base64.urlsafe_b64decode(encoded.encode("ascii")).decode("utf-8")
    return {host: [int(s) for s in slots] for host, slots in json.loads(payload).items()}


@dataclass(frozen=True)
class RankSpec:
    """Everything needed to start one local rank; built without side effects so tests can inspect it."""

    global_rank: int
    local_rank: int
    cmd: List[str]
    env: Dict[str, str]
    #: File receiving the rank's stdout and stderr, or None to inherit ours.
    log_path: Optional[str] = None
    #: CPU cores the rank is pinned to, or None to leave affinity alone.
    cores: Optional[List[int]] = None


def launch_command(runner_args: argparse.Namespace, world_info_b64: str, node_rank: str,
                   master_addr: str) -> List[str]:
    """The command starting this module for one node, mirroring the runner's own flags.

    ``runner_args`` is the ``deepspeed`` CLI namespace; ``node_rank`` is a
    string so that pdsh can pass its ``%n`` placeholder.
    """
    a = runner_args
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info_b64}",
           f"--node_rank={node_rank}", f"--master_addr={master_addr}", f"--master_port={a.master_port}"]
    cmd += [f"--{name}" for name in ("module", "no_python", "no_local_rank", "bind_cores_to_rank") if getattr(a, name)]
    if a.enable_each_rank_log:
        cmd.append(f"--enable_each_rank_log={a.enable_each_rank_log}")
    if a.bind_core_list:
        cmd.append(f"--bind_core_list={a.bind_core_list}")
    if a.save_pid:
        # The runner's pid names the file, so a wrapper that knows only the
        # pid of what it started can find the ranks.
        cmd.append(f"--save_pid={os.getpid()}")
    return cmd + [a.user_script] + list(a.user_args)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Start the ranks of one node of a DeepSpeed job.")
    parser.add_argument("--world_info", required=True, help="base64 JSON {host: [slot ids]} of the whole job")
    parser.add_argument("--node_rank", type=int, default=0, help="index of this node in world_info")
    parser.add_argument("--master_addr", default="127.0.0.1")
    parser.add_argument("--master_port", type=int, default=29500)
    parser.add_argument("-m", "--module", action="store_true", help="run the script as `python -m module`")
    parser.add_argument("--no_python", action="store_true", help="run the script as an executable, not via python")
    parser.add_argument("--no_local_rank", action="store_true", help="do not append --local_rank=N")
    parser.add_argument("--enable_each_rank_log", default=None, help="directory for one log file per rank")
    parser.add_argument("--save_pid", type=int, default=0, help="write rank pids to <tmp>/<pid>.deepspeed")
    parser.add_argument("--bind_cores_to_rank", action="store_true", help="pin each rank to its own cores")
    parser.add_argument("--bind_core_list", default=None, help="cores to share out, e.g. 0-7,16-23")
    parser.add_argument("training_script")
    parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.module and args.no_python:
        parser.error("--module and --no_python cannot be used together")
    return args


def parse_core_list(text: str) -> List[int]:
    """``"0-3,8"`` -> ``[0, 1, 2, 3, 8]``."""
    cores: List[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = (int(x) for x in part.split("-", 1))
            if hi < lo:
                raise ValueError(f"bad core range {part!r}")
            cores.extend(range(lo, hi + 1))
        else:
            cores.append(int(part))
    if not cores:
        raise ValueError(f"empty core list {text!r}")
    return cores


def _script_cmd(args: argparse.Namespace, local_rank: int) -> List[str]:
    if args.no_python:
        cmd = [args.training_script]
    elif args.module:
        cmd = [sys.executable, "-u", "-m", args.training_script]
    else:
        cmd = [sys.executable, "-u", args.training_script]
    if not args.no_local_rank:
        cmd.append(f"--local_rank={local_rank}")
    return cmd + list(args.training_script_args)


def build_rank_specs(
    args: argparse.Namespace,
    world_info: Mapping[str, Sequence[int]],
    base_env: Mapping[str, str],
    visible_devices_envs: Sequence[str] = (),
    available_cores: Optional[Sequence[int]] = None,
) -> List[RankSpec]:
    """One :class:`RankSpec` per slot of node ``args.node_rank``.

    ``visible_devices_envs`` names the variables (e.g. CUDA_VISIBLE_DEVICES)
    set to this node's slot ids; empty on CPU, where slots are just process
    numbers. Every rank sees all the node's devices and picks its own with
    LOCAL_RANK, as torch scripts expect.
    """
    hosts = list(world_info)
    if not 0 <= args.node_rank < len(hosts):
        raise ValueError(f"node_rank {args.node_rank} is out of range for {len(hosts)} node(s)")
    local_slots = list(world_info[hosts[args.node_rank]])
    if not local_slots:
        raise ValueError(f"node {hosts[args.node_rank]!r} has no slots")
    first_rank = sum(len(world_info[h]) for h in hosts[: args.node_rank])
    world_size = sum(len(s) for s in world_info.values())

    core_chunks: List[Optional[List[int]]] = [None] * len(local_slots)
    if args.bind_cores_to_rank:
        pool = parse_core_list(args.bind_core_list) if args.bind_core_list else sorted(available_cores or [])
        per_rank = len(pool) // len(local_slots)
        if per_rank < 1:
            raise ValueError(f"cannot bind {len(local_slots)} ranks to {len(pool)} core(s)")
        core_chunks = [pool[i * per_rank:(i + 1) * per_rank] for i in range(len(local_slots))]

    specs = []
    for local_rank in range(len(local_slots)):
        rank = first_rank + local_rank
        env = dict(base_env)
        env.update({
            "MASTER_ADDR": args.master_addr,
            "MASTER_PORT": str(args.master_port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_SIZE": str(len(local_slots)),
            "CROSS_RANK": str(args.node_rank),
            "CROSS_SIZE": str(len(hosts)),
        })
        for name in visible_devices_envs:
            env[name] = ",".join(str(s) for s in local_slots)
        cores = core_chunks[local_rank]
        if cores is not None:
            # Without this each rank's OpenMP pool would size itself to the
            # whole machine and the ranks would fight over the same cores.
            env["OMP_NUM_THREADS"] = str(len(cores))
        log_path = None
        if args.enable_each_rank_log:
            log_path = os.path.join(args.enable_each_rank_log, f"rank_{rank}.log")
        specs.append(RankSpec(rank, local_rank, _script_cmd(args, local_rank), env, log_path, cores))
    return specs


def _child_setup(cores: Optional[List[int]]) -> Callable[[], None]:
    """The pre-exec hook for a child: own process group, death with the parent, optional pinning."""
    parent = os.getpid()
    # Loaded here, in the parent: loading libraries between fork and exec is unsafe.
    libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def setup() -> None:
        os.setpgid(0, 0)
        if libc is not None:
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before prctl took effect
                os._exit(1)
        if cores:
            os.sched_setaffinity(0, cores)

    return setup


def spawn(cmd: Sequence[str], env: Mapping[str, str], log_path: Optional[str] = None,
          cores: Optional[List[int]] = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, tied to this process's life."""
    stdout = None
    if log_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        stdout = open(log_path, "ab")
    try:
        return subprocess.Popen(list(cmd), env=dict(env), stdout=stdout, stderr=subprocess.STDOUT if stdout else None,
                                preexec_fn=_child_setup(cores))
    finally:
        if stdout is not None:
            stdout.close()  # the child holds its own copy


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # Only while the leader has not been reaped: after that its pid, and so
    # the group id, may belong to an unrelated process.
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def terminate_processes(procs: Sequence[subprocess.Popen], grace: float = KILL_GRACE_SECONDS,
                        first_signal: Optional[int] = signal.SIGTERM) -> None:
    """Send ``first_signal`` to every live process group, SIGKILL what is left after ``grace`` s, reap all.

    ``first_signal=None`` skips the first step, for groups already signalled.
    """
    if first_signal is not None:
        for proc in procs:
            _signal_group(proc, first_signal)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    for proc in procs:
        _signal_group(proc, signal.SIGKILL)
    for proc in procs:
        proc.wait()


@contextlib.contextmanager
def forwarding_signals(procs: Sequence[subprocess.Popen]) -> Iterator[List[int]]:
    """Forward SIGINT/SIGTERM to ``procs`` while inside; yields the list of signals received."""
    received: List[int] = []

    def forward(signum: int, frame: Optional[FrameType]) -> None:
        received.append(signum)
        for proc in procs:
            _signal_group(proc, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def exit_code_of(returncode: int) -> int:
    """A child's status as a shell would report it: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def supervise(procs: Sequence[subprocess.Popen], ranks: Sequence[int], grace: float = KILL_GRACE_SECONDS,
              poll_interval: float = POLL_INTERVAL_SECONDS) -> int:
    """Wait for all ``procs`` (rank ``ranks[i]``); on the first failure or signal end the rest. Returns an exit code."""
    with forwarding_signals(procs) as received:
        while True:
            running = 0
            for proc, rank in zip(procs, ranks):
                code = proc.poll()
                if received:
                    # Checked after every poll: a rank that died of the signal
                    # we forwarded is not the failure to report.
                    sig = received[0]
                    print(f"[launch] received {signal.Signals(sig).name}; stopping {len(procs)} rank(s)",
                          file=sys.stderr, flush=True)
                    terminate_processes(procs, grace, first_signal=None)  # the handler already sent it
                    return 128 + sig
                if code is None:
                    running += 1
                elif code != 0:
                    others = [p for p in procs if p.returncode is None]
                    print(f"[launch] rank {rank} {_describe(code)}; terminating the other {len(others)} "
                          f"running rank(s)", file=sys.stderr, flush=True)
                    terminate_processes(procs, grace)
                    return exit_code_of(code)
            if running == 0:
                return 0
            time.sleep(poll_interval)


def _pid_file(owner_pid: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"{owner_pid}.deepspeed")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    world_info = decode_world_info(args.world_info)
    accelerator = get_accelerator()
    on_cpu = accelerator.device_name() == "cpu"
    visible = [] if on_cpu else list(accelerator.visible_devices_envs())
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    try:
        specs = build_rank_specs(args, world_info, os.environ, visible, cores)
    except ValueError as err:
        print(f"[launch] error: {err}", file=sys.stderr)
        return 2

    procs: List[subprocess.Popen] = []
    pid_file = _pid_file(args.save_pid) if args.save_pid else None
    try:
        for spec in specs:
            procs.append(spawn(spec.cmd, spec.env, spec.log_path, spec.cores))
        if pid_file:
            with open(pid_file, "w") as f:
                f.write("\n".join(str(p.pid) for p in procs) + "\n")
        return supervise(procs, [s.global_rank for s in specs])
    except OSError as err:  # e.g. a --no_python script that is not executable
        print(f"[launch] could not start rank {len(procs)}: {err}", file=sys.stderr)
        return 127
    finally:
        # Reached normally with everything reaped; on an unexpected error
        # (a spawn that failed half way) this ends whatever did start.
        terminate_processes(procs)
        if pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.remove(pid_file)


if __name__ == "__main__":
    sys.exit(main())
