"""Run deepspeed/ops/transformer/inference/gpu_check.py (kernel check + the 1.3B decode bench) from a plain checkout.

Used by tests/gpu/run.sh; arguments are passed on (``--bench``, ``--smoke``).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from check_cuda_ops import bootstrap  # noqa: E402

if __name__ == "__main__":
    bootstrap()
    from deepspeed.ops.transformer.inference.gpu_check import main
    sys.exit(main())
