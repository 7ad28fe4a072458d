"""Fixed names and defaults shared by the runner, the multi-node runners and launch.py.

Kept in one place so that the CLI defaults, the runner classes and the
per-node starter cannot drift apart.
"""
from typing import Tuple

__all__ = [
    "PDSH_LAUNCHER",
    "OPENMPI_LAUNCHER",
    "MPICH_LAUNCHER",
    "IMPI_LAUNCHER",
    "SLURM_LAUNCHER",
    "LAUNCHERS",
    "PDSH_MAX_FAN_OUT",
    "TORCH_DISTRIBUTED_DEFAULT_PORT",
    "DEFAULT_HOSTFILE",
    "DEEPSPEED_ENVIRONMENT_NAME",
    "DS_ENV_FILE_VAR",
    "EXPORT_ENVS",
    "LOCAL_MASTER_ADDR",
    "KILL_GRACE_SECONDS",
    "POLL_INTERVAL_SECONDS",
]

PDSH_LAUNCHER = "pdsh"
OPENMPI_LAUNCHER = "openmpi"
MPICH_LAUNCHER = "mpich"
IMPI_LAUNCHER = "impi"
SLURM_LAUNCHER = "slurm"
#: Every value accepted by ``--launcher``; the first is the default.
LAUNCHERS: Tuple[str, ...] = (PDSH_LAUNCHER, OPENMPI_LAUNCHER, MPICH_LAUNCHER, IMPI_LAUNCHER, SLURM_LAUNCHER)

#: pdsh ``-f``: how many remote commands pdsh runs at once. Large enough that
#: every node of a job starts together (a node that starts late would stall
#: the rendezvous of all the others).
PDSH_MAX_FAN_OUT = 1024

TORCH_DISTRIBUTED_DEFAULT_PORT = 29500
DEFAULT_HOSTFILE = "/job/hostfile"

#: File of ``KEY=VAL`` lines exported to every node of a multi-node job.
DEEPSPEED_ENVIRONMENT_NAME = ".deepspeed_env"
#: Environment variable that renames :data:`DEEPSPEED_ENVIRONMENT_NAME`.
DS_ENV_FILE_VAR = "DS_ENV_FILE"

#: Prefixes of the launcher's own environment variables that are copied to
#: remote nodes, where the remote shell would otherwise start without them.
EXPORT_ENVS: Tuple[str, ...] = ("NCCL", "PYTHON", "MV2", "UCX", "MLFLOW")

LOCAL_MASTER_ADDR = "127.0.0.1"

#: Seconds a rank gets to exit after SIGTERM before it is sent SIGKILL.
KILL_GRACE_SECONDS = 5.0
#: How often launch.py checks its ranks; small, so a failure ends the job fast.
POLL_INTERVAL_SECONDS = 0.1
