"""Installs the `deepspeed` package.

`accelerator/` is installed as `deepspeed.accelerator`, `op_builder/` as
`deepspeed.ops.op_builder` and the C++/CUDA sources in `csrc/` as
`deepspeed/ops/csrc` (where the op builders look for them when JIT-compiling
from an installed package), so the public import paths match DeepSpeed's
without symlinks in the source tree.

Ops are JIT-compiled at first use by default. `DS_BUILD_OPS=1` pre-builds
every op that can be built here, and `DS_BUILD_<OP>=1` / `=0` (e.g.
`DS_BUILD_CPU_ADAM`) turns one op on or off over that default; pre-building
needs torch at build time (`pip install --no-build-isolation`). The ops that
were built are recorded in `op_builder/installed_ops.json`, which
`OpBuilder.load()` reads to import them instead of compiling.
"""
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _version() -> str:
    return (ROOT / "version.txt").read_text().strip()


def _requirements(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip() and not ln.startswith("-r")]


def _packages() -> tuple[list[str], dict[str, str]]:
    packages = find_packages(include=["deepspeed", "deepspeed.*", "dschat", "dschat.*"])
    package_dir = {"deepspeed.accelerator": "accelerator", "deepspeed.ops.op_builder": "op_builder"}
    packages += ["deepspeed.accelerator", "deepspeed.ops.op_builder"]
    packages += ["deepspeed.ops.op_builder." + p for p in find_packages(where="op_builder")]
    # csrc/ is data, shipped as a package so that it installs at deepspeed/ops/csrc.
    package_dir["deepspeed.ops.csrc"] = "csrc"
    packages.append("deepspeed.ops.csrc")
    return packages, package_dir


def _env_flag(name: str) -> Optional[bool]:
    """True/False for a set DS_BUILD_* variable, None when unset (setup.py is the installer)."""
    value = os.environ.get(name)
    if value is None:
        return None
    value = value.strip().lower()
    if value not in _TRUE + _FALSE:
        sys.exit(f"setup.py: {name}={os.environ[name]!r} is not a boolean (use 1 or 0)")
    return value in _TRUE


def _prebuilt_ops() -> Tuple[List[Any], Dict[str, Any], Dict[str, Dict[str, str]]]:
    """Extensions to pre-build, the build_ext command for them, and the installed_ops record."""
    wanted_all = bool(_env_flag("DS_BUILD_OPS"))
    if not wanted_all and not any(k.startswith("DS_BUILD_") and _env_flag(k) for k in os.environ):
        return [], {}, {}  # the default install: nothing to compile, torch not needed
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension
    except ImportError:
        sys.exit("setup.py: DS_BUILD_* pre-building needs torch installed first; "
                 "run `pip install --no-build-isolation .`")
    # The builders never import deepspeed, so they load from the source tree as
    # a plain top-level package before the package is installed.
    sys.path.insert(0, str(ROOT))
    from op_builder import ALL_OPS

    known = {cls.BUILD_VAR for cls in ALL_OPS.values()} | {"DS_BUILD_OPS"}
    for var in sorted(k for k in os.environ if k.startswith("DS_BUILD_") and k not in known):
        print(f"setup.py: ignoring {var}: no such op here (known: {', '.join(sorted(known))})")
    extensions, record = [], {}
    for name, builder_cls in sorted(ALL_OPS.items()):
        explicit = _env_flag(builder_cls.BUILD_VAR)
        if not (wanted_all if explicit is None else explicit):
            continue
        builder = builder_cls()
        if not builder.is_buildable():
            if explicit:
                sys.exit(f"setup.py: {builder_cls.BUILD_VAR}=1 but op {name} cannot be built here: {builder.error_log}")
            print(f"setup.py: skipping op {name}, it cannot be built here: {builder.error_log}")
            continue
        print(f"setup.py: pre-building op {name} as {builder.absolute_name()} ({builder.variant()})")
        extensions.append(builder.builder())
        record[name] = {"module": builder.absolute_name(), "torch": torch.__version__, "variant": builder.variant()}
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)} if extensions else {}
    return extensions, cmdclass, record


def _write_record(record: Dict[str, Dict[str, str]]) -> None:
    """Record what this build pre-built; no record at all means JIT for every op."""
    target = ROOT / "op_builder" / "installed_ops.json"
    if not record and not target.exists():
        return
    text = json.dumps({"ops": record}, indent=1, sort_keys=True) + "\n"
    try:
        if not target.exists() or target.read_text() != text:
            target.write_text(text)
    except OSError as err:  # a read-only source tree can only be installed without pre-built ops
        if record:
            sys.exit(f"setup.py: cannot write {target}: {err}")


packages, package_dir = _packages()
ext_modules, cmdclass, installed_ops = _prebuilt_ops()
_write_record(installed_ops)

setup(
    name="deepspeed",
    version=_version(),
    description="Clean-room DeepSpeed-compatible training runtime and DeepSpeed-Chat RLHF pipeline",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    include_package_data=True,
    package_data={
        "deepspeed.ops.csrc": ["**/*.cpp", "**/*.cu", "**/*.h", "**/*.cuh", "**/*.hpp"],
        "deepspeed.ops.op_builder": ["installed_ops.json"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    # torch is not pinned here: requirements.txt pins the wheel for this
    # machine kind, while the package itself works with any torch >= 2.4.
    install_requires=[r if not r.startswith("torch==") else "torch>=2.4" for r in _requirements("requirements.txt")],
    extras_require={"dev": ["pytest>=8"]},
    entry_points={
        "console_scripts": [
            "deepspeed=deepspeed.launcher.runner:main",
            "ds_report=deepspeed.env_report:cli_main",
            "ds-chat=dschat.cli.main:main",
        ]
    },
)
