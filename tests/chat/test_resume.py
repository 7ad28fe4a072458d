"""`step3 --resume`: a run stopped after 2 steps and resumed reaches the same final weights as
an uninterrupted 4-step run (2 gloo ranks, tiny models, sampled answers, 2 PPO epochs, EMA).

Equality needs every piece of state restored: actor/critic weights and Adam
moments, the LR schedules, the data position (epoch, step), each rank's RNG
(answer sampling, the PPO reshuffle) and the reward EMA.
"""
import argparse
import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from dist_harness import run_distributed
from dschat.cli import step3
from dschat.data.tokenizer import load_hf_tokenizer
from dschat.instrument import read_metrics
from dschat.models.model_utils import create_critic_model, create_hf_model, find_weights_file, load_weights_file
from dschat.models.saving import save_hf_format


def _write_step1_step2(root: str) -> None:
    tokenizer = load_hf_tokenizer("tiny-llama")
    torch.manual_seed(0)
    save_hf_format(create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer), tokenizer,
                   argparse.Namespace(output_dir=root), "actor")
    save_hf_format(create_critic_model("tiny-llama", tokenizer, None), tokenizer,
                   argparse.Namespace(output_dir=root), "critic")


def _argv(root: str, out: str, *extra: str) -> list:
    return ["--actor_model_name_or_path", f"{root}/actor", "--critic_model_name_or_path", f"{root}/critic",
            "--data_path", "dschat/synthetic:200", "--data_output_path", f"{root}/data", "--output_dir", out,
            "--dtype", "fp32", "--actor_zero_stage", "2", "--critic_zero_stage", "2",
            "--per_device_generation_batch_size", "4", "--per_device_training_batch_size", "2", "--ppo_epochs", "2",
            "--max_prompt_seq_len", "24", "--max_answer_seq_len", "6", "--actor_learning_rate", "1e-3",
            "--critic_learning_rate", "1e-3", "--num_warmup_steps", "2", "--do_sample", "--enable_ema",
            "--task_eval_size", "0", "--num_padding_at_beginning", "0", "--enable_test_mode", *extra]


def _weights(folder: str) -> dict:
    return load_weights_file(find_weights_file(folder))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("resume"))
    _write_step1_step2(root)
    full, resumed = f"{root}/full", f"{root}/resumed"
    run_distributed(step3.main, world_size=2, args=(_argv(root, full, "--test_stop_step", "4"), ), timeout=300)
    run_distributed(step3.main, world_size=2,
                    args=(_argv(root, resumed, "--test_stop_step", "2", "--save_steps", "2"), ), timeout=300)
    first_half = _weights(f"{resumed}/actor")
    run_distributed(step3.main, world_size=2,
                    args=(_argv(root, resumed, "--test_stop_step", "4", "--save_steps", "2", "--resume"), ),
                    timeout=300)
    return full, resumed, first_half


def test_resumed_run_matches_uninterrupted_run(runs):
    full, resumed, first_half = runs
    for sub in ("actor", "critic", "actor_ema"):
        expected, got = _weights(f"{full}/{sub}"), _weights(f"{resumed}/{sub}")
        assert expected.keys() == got.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=f"{sub}: {key}")
    # The second half really trained: the weights moved on from the checkpoint.
    final = _weights(f"{resumed}/actor")
    assert max(float((final[k] - first_half[k]).abs().max()) for k in final) > 1e-4


def test_resume_restores_loop_position_and_statistics(runs):
    full, resumed, _ = runs
    m_full, m_resumed = read_metrics(full), read_metrics(resumed)
    assert m_full["steps"] == m_resumed["steps"] == 4
    assert [s for s, _ in m_resumed["reward_curve"]] == [0, 1, 2, 3]
    torch.testing.assert_close(torch.tensor(m_resumed["reward_curve"]), torch.tensor(m_full["reward_curve"]))
    assert m_resumed["reward_ema"] == pytest.approx(m_full["reward_ema"], rel=1e-6)
    log = open(os.path.join(resumed, "training.log")).read()
    assert "resumed step 3 from global_step2" in log  # appended to the interrupted run's log
    assert log.count("step 3 (PPO) arguments") == 2
    checkpoints = os.path.join(resumed, "checkpoints")
    assert open(os.path.join(checkpoints, "latest_step3")).read() == "global_step4"
    tags = sorted(e for e in os.listdir(os.path.join(checkpoints, "actor")) if e.startswith("global_step"))
    assert tags == ["global_step4"]  # older tags pruned


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    from dschat.cli.resume import load_step3_checkpoint
    assert load_step3_checkpoint(str(tmp_path), {}) is None
    assert "starting from the beginning" in capsys.readouterr().out
