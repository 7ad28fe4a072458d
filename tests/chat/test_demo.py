"""The demo: its data set (fast) and its quality on a fixed seed (slow).

The slow tests run `ds-chat demo` once, exactly as the README's first
command does (3 steps, tiny-llama, 2 ranks through the launcher), and assert
direction and margins, not exact values: the run takes under 10 minutes,
the reward model's held-out accuracy is at least 0.9, PPO does not wreck
the actor, and on the fixed seed 1234 PPO raises the mean reward of the
greedy answers by at least 0.1 without lowering their task success.

The exact numbers are bit-identical run to run on one machine, but not
across CPU types: fp32 kernels sum in a different order under AVX-512 and
AVX2. Seed 1234 measured 0.719 -> 0.744 task success and 2.93 -> 3.21 mean
reward on the AVX2 machine of earlier sessions, and 0.656 -> 0.670 and
1.24 -> 1.68 on the AVX-512 Xeon CI runs on now. The task success of 512
answers has a standard error of ~0.02 by itself, and step 3 on other seeds
moves it by -0.004 and -0.010 ([Note: demo recipe] in
dschat/cli/recipes.py), so a task-success *gain* is not asserted: it is not
a property of the recipe, only of one seed on one machine.
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
MIN_REWARD_GAIN = 0.1
MIN_TASK_SUCCESS_GAIN = 0.0  # see the module docstring: no gain beyond the evaluation's noise is claimed
MAX_DEMO_SECONDS = 600
# Bound on the harm PPO may do. Measured change of task success with the demo recipe
# (step 3 on seed 1234's step-1/2 models): +0.025 (seed 1234), -0.004 (42), -0.010 (7);
# DS-Chat's plain sampling PPO gave -0.028, -0.043, -0.059.
MAX_TASK_SUCCESS_LOSS = 0.03


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
    """What holds today: the run fits the budget, the RM is accurate, PPO does not wreck the actor."""
    summary, elapsed, out = demo_run
    # The numbers go into the warnings summary, so every run's log (CI's too) shows them.
    warnings.warn(f"demo ({elapsed:.0f}s): RM accuracy {summary['rm_heldout_accuracy']:.3f}, task success "
                  f"{summary['sft_task_success']:.3f} -> {summary['ppo_task_success']:.3f}, mean reward "
                  f"{summary['sft_mean_reward']:.3f} -> {summary['ppo_mean_reward']:.3f}")
    assert (out / "step3_reward_curve.png").stat().st_size > 10_000
    assert elapsed < MAX_DEMO_SECONDS, elapsed
    assert summary["rm_heldout_accuracy"] >= MIN_RM_ACCURACY, summary
    assert summary["ppo_task_success"] >= summary["sft_task_success"] - MAX_TASK_SUCCESS_LOSS, summary


@pytest.mark.slow
def test_demo_ppo_improves_the_actor(demo_run):
    summary, _, _ = demo_run
    assert summary["ppo_mean_reward"] >= summary["sft_mean_reward"] + MIN_REWARD_GAIN, summary
    assert summary["ppo_task_success"] >= summary["sft_task_success"] + MIN_TASK_SUCCESS_GAIN, summary
