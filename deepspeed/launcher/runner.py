"""The ``deepspeed`` command: decide where the ranks run, then start them.

    deepspeed [-H hostfile] [-i/-e NODE[:slots]@...] [--num_nodes N] [--num_gpus N]
              [--launcher pdsh|openmpi|mpich|impi|slurm] [--dry_run] script args...

The steps are pure functions over explicit inputs (hostfile text, the
environment mapping, the accelerator), so each can be tested alone:

1. the resource pool ``{host: [slot ids]}``: the hostfile's hosts, or the
   local node when there is no hostfile;
2. the active resources: that pool after ``--include``/``--exclude``, or
   after ``--num_nodes``/``--num_gpus``;
3. one node: run ``deepspeed.launcher.launch`` here; several (or
   ``--force_multi``): build a multi-node command with exported variables.

On a CPU-only machine the slots of the local node are plain process numbers:
``--num_gpus N`` means N processes, and without it one process is started.
One, not one per core or NUMA node, because every rank of a CPU job already
uses all the cores it is given; more ranks only split them, and the user asks
for that explicitly.
"""
import argparse
import os
import shlex
import subprocess
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from deepspeed.accelerator import DeepSpeedAccelerator, get_accelerator

from .constants import (
    DEEPSPEED_ENVIRONMENT_NAME,
    DEFAULT_HOSTFILE,
    DS_ENV_FILE_VAR,
    EXPORT_ENVS,
    LAUNCHERS,
    LOCAL_MASTER_ADDR,
    PDSH_LAUNCHER,
    TORCH_DISTRIBUTED_DEFAULT_PORT,
)
from .launch import encode_world_info, exit_code_of, forwarding_signals, launch_command, spawn
from .multinode_runner import RUNNERS, MultiNodeRunner

__all__ = [
    "parse_args",
    "parse_hostfile",
    "fetch_hostfile",
    "parse_inclusion_exclusion",
    "parse_resource_filter",
    "local_resource_pool",
    "resolve_active_resources",
    "load_deepspeed_env",
    "collect_exports",
    "main",
]

ResourcePool = Dict[str, List[int]]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deepspeed", description="Launch a DeepSpeed training script on one or more nodes.")
    parser.add_argument("-H", "--hostfile", default=DEFAULT_HOSTFILE,
                        help="file of `host slots=N` lines; without it only the local node is used")
    parser.add_argument("-i", "--include", default="",
                        help="use only these resources, e.g. `worker-0@worker-1:0,2`")
    parser.add_argument("-e", "--exclude", default="",
                        help="use all resources but these, e.g. `worker-1:0`")
    parser.add_argument("--num_nodes", type=int, default=-1, help="use the first N hosts of the hostfile")
    parser.add_argument("--num_gpus", "--num_accelerators", dest="num_gpus", type=int, default=-1,
                        help="use the first N slots of each host (on CPU: start N processes)")
    parser.add_argument("--min_elastic_nodes", type=int, default=-1, help="accepted for compatibility; unused")
    parser.add_argument("--max_elastic_nodes", type=int, default=-1, help="accepted for compatibility; unused")
    parser.add_argument("--master_port", type=int, default=TORCH_DISTRIBUTED_DEFAULT_PORT)
    parser.add_argument("--master_addr", default="",
                        help="rendezvous address (default: 127.0.0.1 on one node, else the first host's IP)")
    parser.add_argument("--launcher", default=PDSH_LAUNCHER, type=str.lower, choices=LAUNCHERS,
                        help="multi-node backend")
    parser.add_argument("--launcher_args", default="", help="extra arguments for the multi-node backend")
    parser.add_argument("-m", "--module", action="store_true", help="run user_script as a python module")
    parser.add_argument("--no_python", action="store_true", help="run user_script directly, not via python")
    parser.add_argument("--no_local_rank", action="store_true", help="do not pass --local_rank=N to the script")
    parser.add_argument("--force_multi", action="store_true", help="use the multi-node path even for one node")
    parser.add_argument("--save_pid", action="store_true", help="write rank pids to <tmp>/<launcher pid>.deepspeed")
    parser.add_argument("--enable_each_rank_log", default=None, help="directory for one log file per rank")
    parser.add_argument("--bind_cores_to_rank", action="store_true", help="pin each rank to its share of cores")
    parser.add_argument("--bind_core_list", default=None, help="cores to share out, e.g. 0-7,16-23")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                        help="print the command that would run and exit")
    parser.add_argument("user_script", help="the training script (or module, with --module)")
    parser.add_argument("user_args", nargs=argparse.REMAINDER, help="arguments for the training script")
    args = parser.parse_args(argv)
    if args.module and args.no_python:
        parser.error("--module and --no_python cannot be used together")
    return args


def parse_hostfile(lines: Sequence[str], source: str = "hostfile") -> Dict[str, int]:
    """``host slots=N`` lines -> ``{host: N}`` in file order; errors name ``source:line``."""
    hosts: Dict[str, int] = {}
    for lineno, raw in enumerate(lines, start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("slots="):
            raise ValueError(f"{source}:{lineno}: expected `host slots=N`, got {raw.strip()!r}")
        host, count = parts[0], parts[1][len("slots="):]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"{source}:{lineno}: slots must be a positive integer, got {count!r}")
        if host in hosts:
            raise ValueError(f"{source}:{lineno}: host {host!r} is listed more than once")
        hosts[host] = int(count)
    if not hosts:
        raise ValueError(f"{source}: no hosts listed")
    return hosts


def fetch_hostfile(path: str) -> Optional[Dict[str, int]]:
    """The parsed hostfile, or None when it does not exist."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return parse_hostfile(f.read().splitlines(), source=path)


def parse_inclusion_exclusion(text: str) -> Dict[str, Optional[List[int]]]:
    """``"a:0,2@b"`` -> ``{"a": [0, 2], "b": None}``; None means the whole node."""
    result: Dict[str, Optional[List[int]]] = {}
    for entry in text.split("@"):
        entry = entry.strip()
        host, sep, slot_text = entry.partition(":")
        if not host:
            raise ValueError(f"bad resource filter {text!r}: empty node name")
        slots: Optional[List[int]] = None
        if sep:
            try:
                slots = [int(s) for s in slot_text.split(",")]
            except ValueError:
                raise ValueError(f"bad resource filter {text!r}: slots of {host!r} must be integers") from None
        if host in result:
            prev = result[host]
            slots = None if prev is None or slots is None else prev + [s for s in slots if s not in prev]
        result[host] = slots
    return result


def parse_resource_filter(pool: Mapping[str, Sequence[int]], include: str = "", exclude: str = "") -> ResourcePool:
    """Apply ``--include`` or ``--exclude`` to ``pool``; host and slot order follow the pool."""
    if include and exclude:
        raise ValueError("--include and --exclude are mutually exclusive")
    if not include and not exclude:
        return {h: list(s) for h, s in pool.items()}
    wanted = parse_inclusion_exclusion(include or exclude)
    for host, slots in wanted.items():
        if host not in pool:
            raise ValueError(f"node {host!r} is not in the resource pool {list(pool)}")
        for slot in slots or []:
            if slot not in pool[host]:
                raise ValueError(f"slot {slot} of node {host!r} is not in its slots {list(pool[host])}")
    result: ResourcePool = {}
    for host, slots in pool.items():
        if include:
            keep = [] if host not in wanted else [s for s in slots if wanted[host] is None or s in wanted[host]]
        else:
            drop = wanted.get(host, [])
            keep = [] if drop is None else [s for s in slots if s not in drop]
        if keep:
            result[host] = keep
    if not result:
        raise ValueError("no resources left after applying --include/--exclude")
    return result


def _visible_devices_env(accelerator: DeepSpeedAccelerator) -> str:
    names = accelerator.visible_devices_envs()
    return names[0] if names else "CUDA_VISIBLE_DEVICES"


def local_resource_pool(accelerator: DeepSpeedAccelerator, num_gpus: int,
                        environ: Mapping[str, str]) -> ResourcePool:
    """The local node's slots: device ids on an accelerator, process numbers on CPU (see module docstring)."""
    if accelerator.device_name() == "cpu":
        return {"localhost": list(range(num_gpus if num_gpus > 0 else 1))}
    env_name = _visible_devices_env(accelerator)
    visible = environ.get(env_name, "").strip()
    if visible:
        try:
            ids = [int(x) for x in visible.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"{env_name}={visible!r}: the launcher needs integer device ids") from None
    else:
        ids = list(range(accelerator.device_count()))
    if not ids:
        raise ValueError(f"no {accelerator.device_name()} devices found on this node")
    return {"localhost": ids}


def resolve_active_resources(args: argparse.Namespace, environ: Mapping[str, str],
                             accelerator: DeepSpeedAccelerator,
                             hostfile: Optional[Mapping[str, int]]) -> ResourcePool:
    """Steps 1 and 2 of the module docstring; ``hostfile`` is :func:`fetch_hostfile`'s result."""
    counted = args.num_nodes > 0 or args.num_gpus > 0
    if (args.include or args.exclude) and counted:
        raise ValueError("--include/--exclude cannot be combined with --num_nodes/--num_gpus")
    include = args.include
    if hostfile is None:
        pool = local_resource_pool(accelerator, args.num_gpus, environ)
        visible = environ.get(_visible_devices_env(accelerator), "").strip()
        if visible and accelerator.device_name() != "cpu" and not (include or args.exclude or counted):
            # Honour a device restriction already in place, as an include of
            # exactly those ids (which is also what the local pool holds).
            include = "localhost:" + visible.replace(" ", "")
    else:
        pool = {host: list(range(n)) for host, n in hostfile.items()}
    active = parse_resource_filter(pool, include, args.exclude)
    if args.num_nodes > 0:
        if args.num_nodes > len(active):
            raise ValueError(f"--num_nodes {args.num_nodes} but only {len(active)} node(s) are available")
        active = dict(list(active.items())[: args.num_nodes])
    if args.num_gpus > 0:
        for host, slots in active.items():
            if len(slots) < args.num_gpus:
                raise ValueError(f"--num_gpus {args.num_gpus} but node {host!r} has only {len(slots)} slot(s)")
        active = {host: slots[: args.num_gpus] for host, slots in active.items()}
    return active


def load_deepspeed_env(environ: Mapping[str, str], search_dirs: Sequence[str]) -> Dict[str, str]:
    """``KEY=VAL`` lines of the env file in each of ``search_dirs`` (later dirs win).

    The file name is ``.deepspeed_env`` unless ``DS_ENV_FILE`` names another.
    """
    name = environ.get(DS_ENV_FILE_VAR, DEEPSPEED_ENVIRONMENT_NAME)
    found: Dict[str, str] = {}
    seen = set()
    for directory in search_dirs:
        path = os.path.abspath(os.path.join(directory, name))
        if path in seen or not os.path.isfile(path):
            continue
        seen.add(path)
        with open(path) as f:
            for lineno, raw in enumerate(f.read().splitlines(), start=1):
                line = raw.strip()
                if not line or line.startswith("#"):
                    continue
                key, sep, val = line.partition("=")
                if not sep or not key.strip():
                    raise ValueError(f"{path}:{lineno}: expected KEY=VAL, got {raw!r}")
                found[key.strip()] = val.strip()
    return found


def collect_exports(environ: Mapping[str, str], prefixes: Sequence[str], env_file: Mapping[str, str],
                    cwd: str) -> Dict[str, str]:
    """What a multi-node job exports: matching variables, then the env file, with ``cwd`` first on PYTHONPATH."""
    exports = {k: v for k, v in environ.items() if any(k.startswith(p) for p in prefixes)}
    exports.update(env_file)
    old = exports.get("PYTHONPATH", "")
    if not old.split(":")[0] == cwd:
        exports["PYTHONPATH"] = f"{cwd}:{old}" if old else cwd
    return exports


def _first_host_address(host: str) -> str:
    """``hostname -I`` on ``host``, first address: what the other nodes can reach it by."""
    try:
        done = subprocess.run(["ssh", host, "hostname", "-I"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        raise ValueError(f"could not reach {host!r} to find its address ({err}); pass --master_addr") from None
    words = done.stdout.split()
    if done.returncode != 0 or not words:
        raise ValueError(f"`ssh {host} hostname -I` failed ({done.stderr.strip()!r}); pass --master_addr")
    return words[0]


def _run(cmd: List[str], env: Mapping[str, str]) -> int:
    proc = spawn(cmd, env)
    with forwarding_signals([proc]):
        returncode = proc.wait()
    return exit_code_of(returncode)


def _plan(args: argparse.Namespace, environ: Dict[str, str]) -> Tuple[List[str], Dict[str, str]]:
    """The command to run and its environment (``environ`` is updated in place)."""
    accelerator = get_accelerator()
    hostfile = fetch_hostfile(args.hostfile)
    if hostfile is None and args.hostfile != DEFAULT_HOSTFILE:
        print(f"[deepspeed] warning: hostfile {args.hostfile} not found; using the local node only",
              file=sys.stderr)
    if args.min_elastic_nodes > 0 or args.max_elastic_nodes > 0:
        print("[deepspeed] warning: elastic training is not supported; --min/--max_elastic_nodes are ignored",
              file=sys.stderr)
    active = resolve_active_resources(args, environ, accelerator, hostfile)
    world_info = encode_world_info(active)
    cwd = os.path.abspath(".")
    environ["PYTHONPATH"] = f"{cwd}:{environ['PYTHONPATH']}" if environ.get("PYTHONPATH") else cwd
    multi_node = args.force_multi or len(active) > 1
    if not multi_node:
        master = args.master_addr or LOCAL_MASTER_ADDR
        print(f"[deepspeed] single node {active}, master {master}:{args.master_port}", file=sys.stderr)
        return launch_command(args, world_info, "0", master), environ

    first = next(iter(active))
    if not args.master_addr:
        args.master_addr = first if args.dry_run else _first_host_address(first)
    runner: MultiNodeRunner = RUNNERS[args.launcher](args, world_info)
    if not args.dry_run and not runner.backend_exists():
        raise ValueError(f"launcher {args.launcher!r} selected but its tools are not installed here")
    prefixes = list(EXPORT_ENVS) + list(accelerator.export_envs())
    env_file = load_deepspeed_env(environ, [os.path.expanduser("~"), cwd])
    for key, val in collect_exports(environ, prefixes, env_file, cwd).items():
        runner.add_export(key, val)
    print(f"[deepspeed] {len(active)} nodes via {args.launcher}: {active}, master {args.master_addr}:"
          f"{args.master_port}", file=sys.stderr)
    return runner.get_cmd(environ, active), environ


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    try:
        cmd, env = _plan(args, dict(os.environ))
    except ValueError as err:
        print(f"deepspeed: error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(shlex.join(cmd), flush=True)
        return 0
    return _run(cmd, env)


if __name__ == "__main__":
    sys.exit(main())
