"""The README's main job: examples/train_tiny.py under `deepspeed --num_gpus 2`, end to end."""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stage", [1, 2])
def test_train_tiny_two_ranks(tmp_path, stage):
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(_free_port()),
           str(REPO / "examples" / "train_tiny.py"), "--steps", "60", "--zero_stage", str(stage),
           "--checkpoint_dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO,
                          env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"train_tiny: world=2 zero_stage=(\d) steps=60 loss ([\d.]+) -> ([\d.]+)", proc.stdout)
    assert match, proc.stdout
    assert int(match.group(1)) == stage
    first, last = float(match.group(2)), float(match.group(3))
    assert last < 0.7 * first  # it learned
    assert (tmp_path / "latest").read_text() == "global_step60"
    assert (tmp_path / "global_step60" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
