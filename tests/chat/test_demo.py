"""The demo: its data set's hard negatives (fast) and its quality on a fixed seed (slow).

The slow test runs `ds-chat demo` exactly as the README's first command does
(3 steps, tiny-llama, 2 ranks through the launcher) and asserts direction
and a minimum margin, not exact values: the reward model's held-out accuracy
is at least 0.9, and PPO raises both the mean reward and the task success of
the greedy answers over the SFT actor.
"""
import random
import subprocess
import sys

import pytest

from dschat.cli.demo_data import HardNegativeTasks, hard_negative
from dschat.data.synthetic import SyntheticTasks, check_answer, expected_answer, format_prompt

MIN_RM_ACCURACY = 0.9
MIN_REWARD_GAIN = 0.1
MIN_TASK_SUCCESS_GAIN = 0.02


@pytest.mark.parametrize("question, shortcut", [
    ("What is the smallest number in 4 17 8 13?", lambda a, listed: int(a) < min(listed) and int(a) not in listed),
    ("What is the largest number in 4 17 8 13?", lambda a, listed: int(a) > max(listed)),
    ("Sort these numbers: 4 17 8 13.", lambda a, listed: [int(x) for x in a.split()] == sorted(int(x) for x in
                                                                                              a.split())),
])
def test_hard_negatives_are_wrong_but_pass_the_shortcut(question, shortcut):
    prompt, rng = format_prompt(question), random.Random(0)
    task = "min" if "smallest" in question else "max" if "largest" in question else "sort"
    for _ in range(50):
        wrong = hard_negative(rng, task, prompt)
        assert not check_answer(prompt, wrong), (prompt, wrong, expected_answer(prompt))
        assert shortcut(wrong, [4, 17, 8, 13])


def test_hard_negative_tasks_keep_prompts_and_chosen_answers():
    plain = SyntheticTasks(train_size=300, eval_size=30).records()
    hard = HardNegativeTasks(train_size=300, eval_size=30).records()
    assert [r["prompt"] for r in hard] == [r["prompt"] for r in plain]
    assert [r["chosen"] for r in hard] == [r["chosen"] for r in plain]
    changed = [r for r in hard if r["rejected_kind"] == "hard_wrong"]
    assert changed and all(r["task"] in ("min", "max", "sort") for r in changed)
    assert all(check_answer(r["prompt"], r["chosen"]) and not check_answer(r["prompt"], r["rejected"]) for r in hard
               if r["rejected_kind"] in ("wrong", "hard_wrong"))


@pytest.mark.slow
def test_demo_quality(tmp_path):
    result = subprocess.run([sys.executable, "-m", "dschat.cli.main", "demo", "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    import json
    summary = json.load(open(tmp_path / "summary.json"))
    assert (tmp_path / "step3_reward_curve.png").stat().st_size > 10_000
    assert summary["rm_heldout_accuracy"] >= MIN_RM_ACCURACY, summary
    assert summary["ppo_mean_reward"] >= summary["sft_mean_reward"] + MIN_REWARD_GAIN, summary
    assert summary["ppo_task_success"] >= summary["sft_task_success"] + MIN_TASK_SUCCESS_GAIN, summary
