"""The demo: its data set (fast) and what its fixed-seed run guarantees (slow).

The slow tests run `ds-chat demo` once, exactly as the README's first
command does (3 steps, tiny-llama, 2 ranks through the launcher), and assert
what holds on every machine we have run it on: the reward model's held-out
accuracy is at least 0.9, and PPO does not wreck the actor (neither the
task success nor the mean reward of its greedy answers falls by more than
a bound). Its wall time is reported in the warnings summary, not asserted:
speed belongs to benchmarks, and the demo took 200 s on an AVX-512 Xeon and
490 s on a 2-core AMD EPYC (Zen 1) VM.

No *gain* is asserted. The numbers are bit-identical run to run on one
machine, but not across CPU types (fp32 kernels sum in another order under
AVX-512, AVX2 and MKL's AMD paths), and seed 1234's PPO gain did not
survive that: task success and mean reward went 0.719 -> 0.744 and
2.93 -> 3.21 on the AVX2 machine of earlier sessions, 0.656 -> 0.670 and
1.24 -> 1.68 on the Xeon, and 0.719 -> 0.705 and 2.960 -> 2.951 on the
EPYC. The task success of 512 answers has a standard error of ~0.02 by
itself, and step 3 on other seeds moves it by -0.004 and -0.010 ([Note:
demo recipe] in dschat/cli/recipes.py): on this 4-layer model the recipe
stops the harm DS-Chat's plain recipe does, it does not reliably improve.
"""
import json
import subprocess
import sys
import time
import warnings

import pytest

from dschat.cli.demo_data import DEMO_FAMILIES, demo_tasks, write_demo_dataset
from dschat.data.synthetic import check_answer

MIN_RM_ACCURACY = 0.9
# Bound on the harm PPO may do. Measured change of task success with the demo recipe
# (step 3 on seed 1234's step-1/2 models): +0.025 (seed 1234), -0.004 (42), -0.010 (7);
# DS-Chat's plain sampling PPO gave -0.028, -0.043, -0.059.
MAX_TASK_SUCCESS_LOSS = 0.03
# Bound on the fall of the greedy answers' mean reward (of ~3 for the SFT actor). Measured change with
# the demo recipe: +0.28 / -0.05 / -0.25 on seeds 1234 / 42 / 7 (AVX2), +0.44 (seed 1234, AVX-512) and
# -0.01 (seed 1234, AMD EPYC); DS-Chat's plain sampling PPO gave -0.05 / -0.39 / -0.62.
MAX_MEAN_REWARD_LOSS = 0.3


def test_demo_dataset_is_the_list_families_and_written_once(tmp_path):
    folder = write_demo_dataset(str(tmp_path), 300, 30)
    train = json.load(open(f"{folder}/train.json"))
    evaluation = json.load(open(f"{folder}/eval.json"))
    assert len(train) == 300 and len(evaluation) == 30
    assert {r["task"] for r in demo_tasks(300, 30).records()} == set(DEMO_FAMILIES)
    assert all(check_answer(r["prompt"], r["chosen"]) for r in train + evaluation)
    stamp = (tmp_path / folder / "train.json").stat().st_mtime_ns
    assert write_demo_dataset(str(tmp_path), 300, 30) == folder  # same content: same folder, not rewritten
    assert (tmp_path / folder / "train.json").stat().st_mtime_ns == stamp
    assert write_demo_dataset(str(tmp_path), 300, 31) != folder


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One `ds-chat demo` run (the README's command) shared by the slow tests: (summary, seconds, folder)."""
    out = tmp_path_factory.mktemp("demo")
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "dschat.cli.main", "demo", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=1200)
    elapsed = time.time() - started
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return json.load(open(out / "summary.json")), elapsed, out


@pytest.mark.slow
def test_demo_quality(demo_run):
    """The run produces its curve, and the reward model it trains is accurate."""
    summary, elapsed, out = demo_run
    # The numbers go into the warnings summary, so every run's log (CI's too) shows them.
    warnings.warn(f"demo ({elapsed:.0f}s): RM accuracy {summary['rm_heldout_accuracy']:.3f}, task success "
                  f"{summary['sft_task_success']:.3f} -> {summary['ppo_task_success']:.3f}, mean reward "
                  f"{summary['sft_mean_reward']:.3f} -> {summary['ppo_mean_reward']:.3f}")
    assert (out / "step3_reward_curve.png").stat().st_size > 10_000
    assert summary["rm_heldout_accuracy"] >= MIN_RM_ACCURACY, summary


@pytest.mark.slow
def test_demo_ppo_does_not_wreck_the_actor(demo_run):
    """PPO ran every round and left the greedy answers' task success and reward within their bounds."""
    summary, _, _ = demo_run
    assert summary["ppo_steps"] == summary["evaluations"][-1]["step"] > 0, summary
    assert summary["ppo_task_success"] >= summary["sft_task_success"] - MAX_TASK_SUCCESS_LOSS, summary
    assert summary["ppo_mean_reward"] >= summary["sft_mean_reward"] - MAX_MEAN_REWARD_LOSS, summary
