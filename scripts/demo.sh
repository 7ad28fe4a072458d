#!/usr/bin/env bash
# Install the package, then run the main job: the DeepSpeed-Chat RLHF demo
# (SFT -> reward model -> PPO on the embedded data set, tiny-llama, 2 ranks
# through the `deepspeed` launcher; CPU processes when there is no GPU).
# Extra arguments go to `ds-chat demo`, e.g. `--output-dir /tmp/demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -r requirements.txt
python -m pip install -q --disable-pip-version-check --no-deps -e .
ds-chat demo "$@"
