#!/usr/bin/env bash
# Install the package, then run the main job on 2 ranks (CPU processes when
# there is no GPU) through the `deepspeed` launcher.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -r requirements.txt
python -m pip install -q --disable-pip-version-check --no-deps -e .
deepspeed --num_gpus 2 examples/train_tiny.py --zero_stage 2 "$@"
