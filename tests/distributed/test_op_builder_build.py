"""Op builds across processes: ranks that start together compile once, and a killed build is reported.

Compiler invocations are counted with a wrapper installed as CXX, which logs
every compile command (its PID and arguments) and can hold a compile open
for a while, so that the other rank is sure to arrive during the build.
Builds use the tiny ``noop`` op, each under the test's own cache root.
"""
import multiprocessing
import os
import shutil
import signal
import stat
import time
import zlib
from pathlib import Path

import pytest
import torch

from dist_harness import run_distributed
from deepspeed.ops.op_builder import NoopBuilder, OpBuildError

_REAL_CXX = shutil.which(os.environ.get("CXX", "c++"))
pytestmark = pytest.mark.skipif(_REAL_CXX is None or shutil.which("ninja") is None,
                                reason="needs a C++ compiler and ninja")


def _compiler_wrapper(tmp_path: Path, hold_s: float) -> Path:
    """A `g++` that logs each compile and holds it while ``<tmp>/hold`` exists (at most ``hold_s``)."""
    (tmp_path / "bin").mkdir()
    wrapper = tmp_path / "bin" / "g++"  # named like a compiler torch accepts
    ticks = int(hold_s * 10)
    wrapper.write_text(f"""#!/bin/sh
case " $* " in
  *" -c "*)
    echo "$$ $*" >> "{tmp_path / 'cxx.log'}"
    i=0
    while [ -e "{tmp_path / 'hold'}" ] && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done ;;
esac
exec "{_REAL_CXX}" "$@"
""")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "hold").touch()
    return wrapper


def _compiles(tmp_path: Path) -> list:
    log = tmp_path / "cxx.log"
    return log.read_text().splitlines() if log.exists() else []


def _builder(tmp_path: Path) -> NoopBuilder:
    # The flag makes the key unique to this test, so no earlier build (on disk or
    # already imported) can stand in for the one under test.
    tag = f"-DNOOP_TEST_ID={zlib.crc32(str(tmp_path).encode())}"
    return NoopBuilder(simd="scalar", build_root=str(tmp_path / "cache"), extra_flags=[tag])


def _load_on_rank(tmp_path: Path) -> dict:
    builder = _builder(tmp_path)
    torch.distributed.barrier()  # both ranks reach load() together
    module = builder.load()
    return {"rank": torch.distributed.get_rank(), "add_one": module.add_one(41), "file": module.__file__,
            "waited_s": builder.last_wait_s}


def test_second_rank_waits_for_the_first_build(tmp_path):
    wrapper = _compiler_wrapper(tmp_path, hold_s=1.5)
    _builder(tmp_path).jit_module_name()  # probe the CPU once here; the forked ranks inherit it
    results = run_distributed(_load_on_rank, world_size=2, args=(tmp_path,), env={"CXX": str(wrapper)},
                              timeout=120)
    compiles = _compiles(tmp_path)
    assert len(compiles) == 1, compiles  # exactly one compiler run for two ranks
    assert "noop.cpp" in compiles[0]
    assert [r["add_one"] for r in results] == [42, 42]
    assert results[0]["file"] == results[1]["file"]
    waits = sorted(r["waited_s"] for r in results)
    assert waits[0] < 1.0 and waits[1] >= 1.2, results  # the other rank sat out the held compile
    build_dir = Path(results[0]["file"]).parent
    assert not (build_dir / "ds_build.lock").exists() and not (build_dir / "lock").exists()


def _build_in_own_group(builder: NoopBuilder, wrapper: str) -> None:
    os.setpgrp()  # so the test can kill this build with everything it started
    os.environ["CXX"] = wrapper
    builder.jit_load()


def test_killed_build_is_reported_with_the_fix(tmp_path):
    wrapper = _compiler_wrapper(tmp_path, hold_s=60)
    builder = _builder(tmp_path)
    build_dir = Path(builder.build_directory())
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_build_in_own_group, args=(builder, str(wrapper)), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 60
        while not _compiles(tmp_path):  # wait until the compiler is running
            assert proc.is_alive() and time.monotonic() < deadline, "the build never started compiling"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the build dies the way an OOM kill or scancel would
        proc.join(timeout=10)
        for line in _compiles(tmp_path):  # ninja may run the compiler in its own group
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass
    ours, torchs = build_dir / "ds_build.lock", build_dir / "lock"
    assert ours.exists() and torchs.exists()  # both left behind, as after a real kill

    start = time.monotonic()
    with pytest.raises(OpBuildError) as err:
        builder.jit_load()
    assert time.monotonic() - start < 5
    assert f"PID {proc.pid}" in str(err.value) and "no longer running" in str(err.value)
    assert f"Delete {ours} and retry" in str(err.value)
    ours.unlink()

    with pytest.raises(OpBuildError, match="stale PyTorch build lock") as err:
        builder.jit_load()
    assert f"Delete {torchs} and retry" in str(err.value)
    torchs.unlink()

    (tmp_path / "hold").unlink()
    assert builder.jit_load().add_one(1) == 2
