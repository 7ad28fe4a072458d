"""The GPU scripts (tests/gpu/) run only where a GPU is lent; their CPU modes keep them from rotting here.

`check_engine.py --cpu` runs the engine checks on the CPU accelerator, and
`bench_decode.py --smoke` runs the decode bench on tiny fp32 models. Both run
from the checkout, exactly as tests/gpu/run.sh calls them.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GPU_DIR = Path(__file__).resolve().parents[1] / "gpu"


def _run(args, **env):
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **env}, cwd=GPU_DIR.parents[1])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_engine_check_passes_on_cpu():
    out = _run([str(GPU_DIR / "check_engine.py"), "--cpu"], DS_ACCELERATOR="cpu")
    verdicts = [line for line in out.splitlines() if ": OK" in line or ": FAIL" in line]
    assert [v.split(":")[0] for v in verdicts] == ["engine_zero2_fp16", "engine_zero3_bf16",
                                                   "hybrid_engine_zero3_graph"], out
    assert all(": OK" in v for v in verdicts), out


@pytest.mark.slow
def test_decode_bench_smoke_on_cpu():
    out = _run([str(GPU_DIR / "bench_decode.py"), "--smoke"])
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["model"].split("-")[0] for r in rows] == ["opt", "llama"]
    for r in rows:
        assert r["graph_equals_eager"] and r["hf_argmax_agreement"] == 1.0, r
