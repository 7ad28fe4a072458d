"""The `deepspeed` CLI end to end on this machine: real processes, real exit codes, no leftovers."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_cmd(*argv: str) -> list:
    # The module form works whether or not the console script is on PATH.
    return [sys.executable, "-m", "deepspeed.launcher.runner", "--master_port", str(free_port()), *argv]


def cpu_env() -> dict:
    # Pin the CPU accelerator so `--num_gpus 2` means two processes on any machine.
    return {**os.environ, "DS_ACCELERATOR": "cpu"}


def is_gone(pid: int) -> bool:
    """No such process, or only a zombie (PID 1 in a container may never reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_for_files(paths, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() and p.read_text() for p in paths):
        assert time.monotonic() < deadline, f"ranks did not start: {paths}"
        time.sleep(0.1)


def test_two_ranks_get_their_identity(tmp_path):
    logs = tmp_path / "logs"
    done = subprocess.run(
        deepspeed_cmd("--num_gpus", "2", f"--enable_each_rank_log={logs}", str(SCRIPTS / "report_env.py"),
                      "--out_dir", str(tmp_path), "--tag", "two words"),
        cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, rec in enumerate(records):
        assert rec["RANK"] == str(rank) and rec["LOCAL_RANK"] == str(rank)
        assert rec["arg_local_rank"] == rank  # --local_rank=N reached the script's argparse
        assert rec["WORLD_SIZE"] == "2" and rec["LOCAL_SIZE"] == "2"
        assert rec["CROSS_RANK"] == "0" and rec["CROSS_SIZE"] == "1"
        assert rec["MASTER_ADDR"] == "127.0.0.1"
        assert rec["tag"] == "two words"  # user arguments survive intact
    assert records[0]["MASTER_PORT"] == records[1]["MASTER_PORT"]
    assert sorted(p.name for p in logs.iterdir()) == ["rank_0.log", "rank_1.log"]


def test_failing_rank_ends_the_job_fast(tmp_path):
    start = time.monotonic()
    done = subprocess.run(deepspeed_cmd("--num_gpus", "2", str(SCRIPTS / "fail_rank1.py"), "--out_dir", str(tmp_path)),
                          cwd=REPO, env=cpu_env(), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - start
    assert done.returncode == 3, done.stderr  # rank 1's own exit code
    assert elapsed < 15, f"launcher took {elapsed:.1f}s to notice the failure"
    assert "rank 1 exited with code 3" in done.stderr
    rank0 = int((tmp_path / "pid0").read_text())
    assert is_gone(rank0), "rank 0 (sleeping 60 s) was left running"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_launcher_reaches_every_rank(tmp_path, sig):
    proc = subprocess.Popen(deepspeed_cmd("--num_gpus", "2", str(SCRIPTS / "fail_rank1.py"), "--out_dir",
                                          str(tmp_path), "--no_failure"),
                            cwd=REPO, env=cpu_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid_files = [tmp_path / "pid0", tmp_path / "pid1"]
        wait_for_files(pid_files, timeout=60)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert f"received {signal.Signals(sig).name}" in err
    assert all(is_gone(int(p.read_text())) for p in pid_files)
