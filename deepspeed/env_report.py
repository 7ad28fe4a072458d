"""``ds_report``: what DeepSpeed would run with here, for bug reports and set-up checks.

Prints the op table (every builder in ``deepspeed.ops.op_builder.ALL_OPS``:
pre-built or not, compatible or not, how it would load) and the environment
the ops and the runtime depend on: versions, install paths, the accelerator
and its communication backend, CUDA/nvcc, ninja, the C++ compiler and the
size of /dev/shm. Every probe is defensive: a report must still print on a
broken install, since that is when it is needed most.
"""
import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import List, Optional, Sequence, Tuple

import torch

import deepspeed
from deepspeed.accelerator import get_accelerator
from deepspeed.ops.op_builder import ALL_OPS

__all__ = ["op_report", "environment_info", "main", "cli_main"]

_WIDTH = 60
#: Below this, /dev/shm is a known cause of dataloader and NCCL failures (Docker's default is 64 MiB).
_SMALL_SHM_BYTES = 512 * 1024**2

Row = Tuple[str, str]


def _rule() -> str:
    return "-" * _WIDTH


def _output_lines(cmd: Sequence[str]) -> List[str]:
    """Non-empty output lines of ``cmd``; empty if it cannot run or fails."""
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    return [ln.strip() for ln in (done.stdout or done.stderr).splitlines() if ln.strip()]


def _nvcc_version(nvcc: str) -> str:
    # The "Cuda compilation tools, release X.Y, VX.Y.Z" line; its position varies between releases.
    lines = _output_lines([nvcc, "--version"])
    release = [ln for ln in lines if "release" in ln]
    return (release or lines or ["version unknown"])[-1]


def op_report() -> Tuple[List[Tuple[str, str, str, str]], List[str]]:
    """Rows ``(op name, installed, compatible, loaded as)`` and the problems met while probing."""
    rows: List[Tuple[str, str, str, str]] = []
    problems: List[str] = []
    for name, builder_cls in sorted(ALL_OPS.items()):
        try:
            builder = builder_cls()
        except Exception as err:  # a broken builder is reported, not fatal
            problems.append(f"{name}: builder failed to construct: {err}")
            rows.append((name, "?", "?", "?"))
            continue
        installed = False
        try:
            # Builders know what was pre-built (installed_ops record, torch
            # version, SIMD variant); an importable module alone may be stale.
            if hasattr(builder, "is_prebuilt"):
                installed = builder.is_prebuilt()
            else:
                installed = importlib.util.find_spec(builder.absolute_name()) is not None
        except Exception as err:  # a broken probe is reported, not fatal
            problems.append(f"{name}: checking for a pre-built module raised: {err}")
        try:
            compatible = "yes" if builder.is_compatible() else "no"
            reason = getattr(builder, "error_log", None)
            if compatible == "no" and reason:
                problems.append(f"{name} is not compatible here: {reason}")
        except Exception as err:
            problems.append(f"{name}: is_compatible() raised: {err}")
            compatible = "?"
        rows.append((name, "yes" if installed else "no", compatible, "prebuilt" if installed else "JIT"))
    return rows, problems


def _shm_size() -> Tuple[str, Optional[str]]:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return "unknown (/dev/shm not found)", None
    size = st.f_frsize * st.f_blocks
    warning = None
    if size < _SMALL_SHM_BYTES:
        warning = f"/dev/shm is only {size / 1024**2:.0f} MiB; dataloader workers and NCCL may fail (raise --shm-size)"
    return f"{size / 1024**3:.2f} GB", warning


def _version_of(module: str) -> str:
    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def environment_info() -> Tuple[List[Row], List[str]]:
    """``(label, value)`` rows of the environment and warnings about it."""
    warnings: List[str] = []
    rows: List[Row] = [
        ("deepspeed version", deepspeed.__version__),
        ("deepspeed install path", os.path.dirname(os.path.abspath(deepspeed.__file__))),
        ("torch version", torch.__version__),
        ("torch install path", os.path.dirname(os.path.abspath(torch.__file__))),
        ("python version", sys.version.split()[0]),
        ("transformers version", _version_of("transformers")),
    ]
    try:
        accelerator = get_accelerator()
        rows.append(("accelerator", accelerator.device_name()))
        rows.append(("communication backend", accelerator.communication_backend_name()))
    except Exception as err:
        warnings.append(f"accelerator could not be selected: {err}")
        rows.append(("accelerator", "unavailable"))
    rows.append(("torch cuda version", str(torch.version.cuda) if torch.version.cuda else "none (CPU build)"))
    nvcc = shutil.which("nvcc")
    rows.append(("nvcc", f"{nvcc} ({_nvcc_version(nvcc)})" if nvcc else "not found"))
    ninja = shutil.which("ninja")
    rows.append(("ninja", f"found ({ninja})" if ninja else "not found"))
    if not ninja:
        warnings.append("ninja not found: ops cannot be JIT-compiled (pip install ninja)")
    compiler = (_output_lines(["c++", "--version"]) or [None])[0]
    rows.append(("c++ compiler", compiler or "not found"))
    if compiler is None:
        warnings.append("no c++ compiler found: ops cannot be built")
    shm, shm_warning = _shm_size()
    rows.append(("shared memory (/dev/shm) size", shm))
    if shm_warning:
        warnings.append(shm_warning)
    return rows, warnings


def _dotted(label: str, value: str) -> str:
    return f"{label} {'.' * max(3, 34 - len(label))} {value}"


def main(hide_operator_status: bool = False, hide_errors_and_warnings: bool = False) -> None:
    """Print the report to stdout."""
    problems: List[str] = []
    if not hide_operator_status:
        rows, problems = op_report()
        print(_rule())
        print("DeepSpeed C++/CUDA extension op report")
        print(_rule())
        print("installed: pre-built into this install; compatible: can be built/run here;")
        print("loaded as: JIT means compiled with ninja on first use")
        print(_rule())
        if rows:
            header = ("op name", "installed", "compatible", "loaded as")
            widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
            for row in [header] + rows:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        else:
            print("no ops registered (deepspeed.ops.op_builder.ALL_OPS is empty)")
    env_rows, warnings = environment_info()
    print(_rule())
    print("DeepSpeed general environment info:")
    for label, value in env_rows:
        print(_dotted(label, value))
    if not hide_errors_and_warnings and (problems or warnings):
        print(_rule())
        print("Errors and warnings:")
        for message in problems + warnings:
            print(f"  [WARNING] {message}")
    print(_rule())


def cli_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ds_report", description="Report DeepSpeed's environment and ops.")
    parser.add_argument("--hide_operator_status", action="store_true", help="omit the op table")
    parser.add_argument("--hide_errors_and_warnings", action="store_true", help="omit errors and warnings")
    args = parser.parse_args(argv)
    main(hide_operator_status=args.hide_operator_status, hide_errors_and_warnings=args.hide_errors_and_warnings)
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
