"""Command-line builders for multi-node jobs: PDSH, OpenMPI, MPICH, Intel MPI and SLURM.

Each runner turns the active resources (``{host: [slot ids]}``, in node
order) into one command run on the launching machine. They only build
commands; running them is the runner module's job, so dry runs and tests see
exactly what would be executed.

- PDSH starts ``deepspeed.launcher.launch`` once per node (``--node_rank=%n``,
  pdsh's index of the host), and launch.py starts and watches the local ranks.
- The MPI runners and SLURM start every rank themselves. MPICH and Intel MPI
  give each rank RANK/LOCAL_RANK explicitly (one ``-n 1`` section per rank);
  OpenMPI and SLURM leave them to the rank, which reads OMPI_COMM_WORLD_* or
  SLURM_PROCID/SLURM_LOCALID.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
from abc import ABC, abstractmethod
from typing import Dict, List, Mapping, Sequence

from .constants import (
    IMPI_LAUNCHER,
    MPICH_LAUNCHER,
    OPENMPI_LAUNCHER,
    PDSH_LAUNCHER,
    PDSH_MAX_FAN_OUT,
    SLURM_LAUNCHER,
)
from .launch import launch_command

__all__ = [
    "MultiNodeRunner",
    "PDSHRunner",
    "OpenMPIRunner",
    "MPICHRunner",
    "IMPIRunner",
    "SlurmRunner",
    "RUNNERS",
]


def _version_output(cmd: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


class MultiNodeRunner(ABC):
    """Base class: holds the parsed CLI arguments, the encoded world info and the variables to export.

    ``args`` is the runner's namespace; the fields read are ``user_script``,
    ``user_args``, ``master_addr``, ``master_port``, ``launcher_args``,
    ``module``, ``no_python``, ``no_local_rank``, ``enable_each_rank_log``,
    ``bind_cores_to_rank``, ``bind_core_list`` and ``save_pid``.
    """

    def __init__(self, args: argparse.Namespace, world_info_base64: str) -> None:
        self.args = args
        self.world_info_base64 = world_info_base64
        self.user_script: str = args.user_script
        self.user_arguments: List[str] = list(args.user_args)
        #: Variables every rank must see, in insertion order so commands are stable.
        self.exports: Dict[str, str] = {}

    @property
    @abstractmethod
    def name(self) -> str:
        """The ``--launcher`` value selecting this runner."""

    @abstractmethod
    def backend_exists(self) -> bool:
        """Whether the tool this runner drives is installed on this machine."""

    @abstractmethod
    def get_cmd(self, environment: Dict[str, str], active_resources: Mapping[str, Sequence[int]]) -> List[str]:
        """The command to run here; may add variables the tool itself needs to ``environment``."""

    def add_export(self, key: str, var: str) -> None:
        self.exports[key.strip()] = var.strip()

    def launcher_args(self) -> List[str]:
        return shlex.split(self.args.launcher_args or "")

    def python_exec(self) -> List[str]:
        """How each rank's program starts: the interpreter (same path on every node) or the script itself."""
        if self.args.no_python:
            return []
        return [sys.executable, "-u", "-m"] if self.args.module else [sys.executable, "-u"]

    def _uniform_slots(self, active_resources: Mapping[str, Sequence[int]]) -> int:
        """Slots per node, for tools that place ranks by count and cannot pick device ids."""
        counts = {len(slots) for slots in active_resources.values()}
        if len(counts) != 1:
            raise ValueError(f"the {self.name} launcher needs the same number of slots on every node, "
                             f"got {dict((h, len(s)) for h, s in active_resources.items())}")
        for host, slots in active_resources.items():
            if list(slots) != list(range(len(slots))):
                raise ValueError(f"the {self.name} launcher cannot select device ids ({host}: {list(slots)}); "
                                 "only whole-node or first-N-slot selections are supported")
        return counts.pop()

    def _rendezvous_exports(self) -> Dict[str, str]:
        return {"MASTER_ADDR": str(self.args.master_addr), "MASTER_PORT": str(self.args.master_port)}


class PDSHRunner(MultiNodeRunner):
    """``pdsh -S -f 1024 -w hosts "export ...; cd cwd; python -m deepspeed.launcher.launch ..."``."""

    @property
    def name(self) -> str:
        return PDSH_LAUNCHER

    def backend_exists(self) -> bool:
        return shutil.which("pdsh") is not None

    def get_cmd(self, environment: Dict[str, str], active_resources: Mapping[str, Sequence[int]]) -> List[str]:
        # pdsh's default rcmd module may be rsh; every cluster we target uses ssh.
        environment["PDSH_RCMD_TYPE"] = "ssh"
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in self.exports.items())
        launch = launch_command(self.args, self.world_info_base64, "%n", str(self.args.master_addr))
        # pdsh joins its arguments with spaces, so the remote command is passed
        # as one pre-quoted string to keep user arguments with spaces intact.
        remote = f"{exports}cd {shlex.quote(os.path.abspath('.'))}; {shlex.join(launch)}"
        hosts = ",".join(active_resources)
        return ["pdsh", "-S", "-f", str(PDSH_MAX_FAN_OUT), "-w", hosts] + self.launcher_args() + [remote]


class OpenMPIRunner(MultiNodeRunner):
    """``mpirun -n N --host h1:k,h2:k -x K=V ... python script args``; ranks read OMPI_COMM_WORLD_*."""

    @property
    def name(self) -> str:
        return OPENMPI_LAUNCHER

    def backend_exists(self) -> bool:
        return shutil.which("ompi_info") is not None

    def get_cmd(self, environment: Dict[str, str], active_resources: Mapping[str, Sequence[int]]) -> List[str]:
        per_node = self._uniform_slots(active_resources)
        total = per_node * len(active_resources)
        hosts = ",".join(f"{h}:{per_node}" for h in active_resources)
        cmd = ["mpirun", "-n", str(total), "--host", hosts, "--map-by", f"ppr:{per_node}:node"]
        cmd += self.launcher_args()
        for key, val in {**self.exports, **self._rendezvous_exports()}.items():
            cmd += ["-x", f"{key}={val}"]
        return cmd + self.python_exec() + [self.user_script] + self.user_arguments


class MPICHRunner(MultiNodeRunner):
    """Hydra ``mpirun`` with global ``-genv`` exports and one ``-n 1 -env RANK r`` section per rank."""

    @property
    def name(self) -> str:
        return MPICH_LAUNCHER

    def backend_exists(self) -> bool:
        return shutil.which("mpirun") is not None and "HYDRA" in _version_output(["mpirun", "--version"]).upper()

    def get_cmd(self, environment: Dict[str, str], active_resources: Mapping[str, Sequence[int]]) -> List[str]:
        per_node = self._uniform_slots(active_resources)
        total = per_node * len(active_resources)
        cmd = ["mpirun", "-ppn", str(per_node), "-hosts", ",".join(active_resources)] + self.launcher_args()
        sizes = {"WORLD_SIZE": str(total), "LOCAL_SIZE": str(per_node)}
        for key, val in {**self.exports, **self._rendezvous_exports(), **sizes}.items():
            cmd += ["-genv", key, val]
        for rank in range(total):
            local_rank = rank % per_node
            if rank:
                cmd.append(":")
            cmd += ["-n", "1"]
            cmd += ["-env", "RANK", str(rank), "-env", "LOCAL_RANK", str(local_rank)]
            cmd += self.python_exec() + [self.user_script]
            if not self.args.no_local_rank:
                cmd.append(f"--local_rank={local_rank}")
            cmd += self.user_arguments
        return cmd


class IMPIRunner(MPICHRunner):
    """Intel MPI: the same Hydra command line as MPICH, from Intel's ``mpirun``."""

    @property
    def name(self) -> str:
        return IMPI_LAUNCHER

    def backend_exists(self) -> bool:
        return shutil.which("mpirun") is not None and "INTEL" in _version_output(["mpirun", "--version"]).upper()


class SlurmRunner(MultiNodeRunner):
    """``srun -n N -N nodes --nodelist=... --export=ALL,K=V python script args``; ranks read SLURM_PROCID."""

    @property
    def name(self) -> str:
        return SLURM_LAUNCHER

    def backend_exists(self) -> bool:
        return shutil.which("srun") is not None

    def get_cmd(self, environment: Dict[str, str], active_resources: Mapping[str, Sequence[int]]) -> List[str]:
        per_node = self._uniform_slots(active_resources)
        total = per_node * len(active_resources)
        cmd = ["srun", "-n", str(total), "-N", str(len(active_resources)), f"--ntasks-per-node={per_node}",
               f"--nodelist={','.join(active_resources)}"] + self.launcher_args()
        exported = ["ALL"]
        for key, val in {**self.exports, **self._rendezvous_exports()}.items():
            if "," in val:
                # --export splits on commas; such a value travels through
                # srun's own environment instead, which ALL passes on.
                environment[key] = val
            else:
                exported.append(f"{key}={val}")
        cmd.append("--export=" + ",".join(exported))
        return cmd + self.python_exec() + [self.user_script] + self.user_arguments


#: ``--launcher`` value -> runner class.
RUNNERS: Dict[str, type] = {
    PDSH_LAUNCHER: PDSHRunner,
    OPENMPI_LAUNCHER: OpenMPIRunner,
    MPICH_LAUNCHER: MPICHRunner,
    IMPI_LAUNCHER: IMPIRunner,
    SLURM_LAUNCHER: SlurmRunner,
}
