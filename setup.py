"""Installs the `deepspeed` package.

`accelerator/` is installed as `deepspeed.accelerator` and `op_builder/` as
`deepspeed.ops.op_builder`, so the public import paths match DeepSpeed's
without symlinks in the source tree.
"""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent


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
    return packages, package_dir


packages, package_dir = _packages()

setup(
    name="deepspeed",
    version=_version(),
    description="Clean-room DeepSpeed-compatible training runtime and DeepSpeed-Chat RLHF pipeline",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    include_package_data=True,
    package_data={"deepspeed": ["../csrc/**/*"]},
    # torch is not pinned here: requirements.txt pins the wheel for this
    # machine kind, while the package itself works with any torch >= 2.4.
    install_requires=[r if not r.startswith("torch==") else "torch>=2.4" for r in _requirements("requirements.txt")],
    extras_require={"dev": ["pytest>=8"]},
    entry_points={
        "console_scripts": [
            "deepspeed=deepspeed.launcher.runner:main",
            "ds_report=deepspeed.env_report:cli_main",
        ]
    },
)
