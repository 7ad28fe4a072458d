"""DS-Chat command line: flags and defaults of the three steps (spec §2), the step-3 checks,
the runners' command lines, the chat REPL, instrumentation and the demo summary."""
import argparse
import io
import struct
import sys

import pytest
import torch

from dschat.cli import args as cli_args
from dschat.cli import chat, demo, e2e, main as ds_chat, recipes
from dschat.data.tokenizer import load_hf_tokenizer
from dschat.instrument import ScalarWriter, read_metrics, training_log, write_metrics

STEP1 = ["--model_name_or_path", "m"]
STEP3 = ["--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c"]


def test_step1_defaults_match_spec():
    a = cli_args.parse_step1_args(STEP1)
    assert a.data_path == ["dschat/synthetic"] and a.data_split == "2,4,4" and a.sft_only_data_path == []
    assert a.data_output_path == "/tmp/data_files/"
    assert (a.per_device_train_batch_size, a.per_device_eval_batch_size, a.max_seq_len) == (16, 16, 512)
    assert (a.learning_rate, a.weight_decay, a.num_train_epochs, a.gradient_accumulation_steps) == (1e-3, 0.0, 1, 1)
    assert (a.lr_scheduler_type, a.num_warmup_steps, a.seed, a.output_dir) == ("cosine", 0, 1234, None)
    assert (a.gradient_checkpointing, a.dropout, a.offload, a.dtype, a.zero_stage) == (False, None, False, "fp16", 0)
    assert (a.lora_dim, a.lora_module_name, a.only_optimize_lora, a.lora_learning_rate) == (0, "decoder.layers.",
                                                                                            False, 5e-4)
    assert (a.compute_fp32_loss, a.enable_tensorboard, a.tensorboard_path) == (False, False, "step1_tensorboard")
    assert (a.add_eot_token, a.eot_token, a.print_loss, a.local_rank) == (False, "<|endoftext|>", False, -1)
    assert a.deepspeed_config is None  # DeepSpeed's own flags are accepted


def test_step2_defaults_match_spec():
    a = cli_args.parse_step2_args(STEP1)
    assert (a.learning_rate, a.tensorboard_path, a.num_padding_at_beginning) == (5e-5, "step2_tensorboard", 1)
    assert (a.eval_interval, a.eval_iters, a.seed) == (0, 100, 1234)
    for missing in ("sft_only_data_path", "eot_token", "print_loss"):
        assert not hasattr(a, missing)
    assert hasattr(a, "add_eot_token")


def test_step3_defaults_match_spec():
    a = cli_args.parse_step3_args(STEP3)
    assert (a.data_path, a.data_split, a.data_output_path) == (["dschat/synthetic"], "2,4,4", "/tmp/data_files")
    assert (a.unsupervised_dataset_name, a.unsupervised_dataset_config_name, a.unsup_coef) == (None, None, 27.8)
    assert (a.per_device_generation_batch_size, a.per_device_training_batch_size) == (16, 16)
    assert (a.generation_batches, a.ppo_epochs, a.max_prompt_seq_len, a.max_answer_seq_len) == (1, 1, 256, 256)
    assert (a.actor_learning_rate, a.critic_learning_rate) == (9.65e-6, 5e-6)
    assert (a.actor_weight_decay, a.critic_weight_decay, a.num_warmup_steps) == (0.0, 0.0, 100)
    assert a.seed == 1234  # DS-Chat's None let step 3 overlap the data of steps 1 and 2
    assert (a.actor_zero_stage, a.critic_zero_stage, a.num_padding_at_beginning) == (0, 0, 1)
    assert (a.actor_lora_dim, a.critic_lora_dim, a.actor_lora_module_name) == (0, 0, "decoder.layers.")
    assert (a.actor_lora_learning_rate, a.critic_lora_learning_rate) == (5e-4, 5e-4)
    assert (a.actor_dropout, a.critic_dropout, a.dtype) == (None, None, "fp16")
    assert (a.print_answers_interval, a.enable_test_mode, a.test_stop_step) == (1, False, 0)
    assert (a.tensorboard_path, a.save_steps, a.resume, a.checkpoint_dir) == ("step3_tensorboard", 0, False, None)
    for flag in ("enable_ema", "align_overflow", "print_answers", "offload_reference_model", "offload_reward_model",
                 "actor_gradient_checkpointing", "critic_gradient_checkpointing", "only_optimize_lora"):
        assert getattr(a, flag) is False
    # Features of later issues do not have their flags yet.
    for later in ("enable_mixed_precision_lora",):
        assert not hasattr(a, later)


def test_step3_ppo_extras_default_to_ds_chat():
    a = cli_args.parse_step3_args(STEP3)
    assert (a.critic_warmup_steps, a.whiten_advantages) == (0, False)


def test_step3_checkpoint_dir_defaults_under_output_dir():
    a = cli_args.parse_step3_args(STEP3 + ["--output_dir", "/x/out/", "--save_steps", "5"])
    assert a.checkpoint_dir == "/x/out/checkpoints"


@pytest.mark.parametrize("extra, message", [
    (["--save_steps", "3"], "need --output_dir"),
    (["--resume"], "need --output_dir"),
    (["--ppo_epochs", "0"], "--ppo_epochs must be >= 1"),
    (["--do_sample", "--temperature", "0"], "--temperature must be > 0"),
    (["--critic_warmup_steps", "-1"], "--critic_warmup_steps must be >= 0"),
])
def test_step3_rejects_what_would_fail(extra, message, capsys):
    with pytest.raises(SystemExit):
        cli_args.parse_step3_args(STEP3 + extra)
    assert message in capsys.readouterr().err


def test_num_padding_follows_the_tokenizer(capsys):
    tokenizer = load_hf_tokenizer("tiny-llama")  # adds no BOS, pad != EOS: no padding at the beginning
    assert cli_args.resolve_num_padding(1, tokenizer) == 0
    assert "using 0" in capsys.readouterr().out
    assert cli_args.resolve_num_padding(0, tokenizer) == 0
    assert capsys.readouterr().out == ""


def test_launcher_commands_per_deployment():
    cpu = e2e.launcher_command("single_node", "dschat.step1", ["--x", "1"], cpu=True)
    assert cpu[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert cpu[3:] == ["--num_gpus", "2", "--bind_cores_to_rank", "-m", "dschat.step1", "--x", "1"]
    assert e2e.launcher_command("single_gpu", "dschat.step2", [], cpu=False)[3:] == ["--num_gpus", "1", "-m",
                                                                                       "dschat.step2"]
    assert e2e.launcher_command("single_node", "dschat.step3", [], cpu=False)[3:] == ["-m", "dschat.step3"]
    multi = e2e.launcher_command("multi_node", "dschat.step3", [], hostfile="/h", master_port=123, cpu=False)
    assert multi[3:] == ["--hostfile", "/h", "--master_port", "123", "-m", "dschat.step3"]


def test_e2e_output_layout_and_step_flags(tmp_path):
    args = e2e.parse_args(["--actor-model", "/models/opt-1.3b/", "--reward-model", "tiny-opt", "--output-dir",
                           str(tmp_path), "--actor-zero-stage", "3", "--step3-args", "--enable_ema --seed 7"])
    out = e2e.step_output_dirs(args)
    assert out == {1: str(tmp_path / "actor-models" / "opt-1.3b"), 2: str(tmp_path / "reward-models" / "tiny-opt"),
                   3: str(tmp_path / "step3-models" / "opt-1.3b")}
    step1 = e2e._step_args(1, args, out)
    assert step1[:4] == ["--model_name_or_path", "/models/opt-1.3b/", "--output_dir", out[1]]
    assert step1[-2:] == ["--zero_stage", "3"]  # a real model gets DS-Chat's defaults plus the stage
    step2 = e2e._step_args(2, args, out)
    assert step2[1] == "tiny-opt" and "--dtype" in step2  # preset recipe
    step3 = e2e._step_args(3, args, out)
    assert step3[:6] == ["--actor_model_name_or_path", out[1], "--critic_model_name_or_path", out[2],
                         "--output_dir", out[3]]
    assert step3[-2:] == ["--seed", "7"] and "--enable_ema" in step3
    # Every recipe line parses with the step's own parser.
    cli_args.parse_step3_args(step3)
    cli_args.parse_step2_args(step2)


def test_e2e_step3_refuses_without_step1_output(tmp_path):
    with pytest.raises(e2e.StepFailed, match="needs the step-1 model"):
        e2e.main(["--step", "3", "--output-dir", str(tmp_path)])


def test_demo_reward_model_starts_from_the_sft_actor(tmp_path):
    args = e2e.parse_args(["--output-dir", str(tmp_path)])
    out = e2e.step_output_dirs(args)
    assert e2e._step_args(2, args, out)[1] == out[1]
    assert recipes.recipe_for("tiny-llama") is recipes.PRESET_RECIPE
    assert recipes.recipe_for("/some/model") is recipes.DEFAULT_RECIPE


def test_ds_chat_dispatch(capsys):
    assert ds_chat.main([]) == 0
    assert "ds-chat demo" in capsys.readouterr().out
    assert ds_chat.main(["nope"]) == 2
    with pytest.raises(SystemExit):
        ds_chat.main(["train", "--deployment-type", "bogus"])


def test_training_log_tees_rank0_stdout_and_args(tmp_path, capsys):
    with training_log(str(tmp_path), argparse.Namespace(lr=0.5, name="x"), "step 9"):
        print("hello log")
    log = (tmp_path / "training.log").read_text()
    assert "step 9 arguments" in log and "lr = 0.5" in log and "hello log" in log
    assert "hello log" in capsys.readouterr().out
    assert sys.stdout is sys.__stdout__ or not hasattr(sys.stdout, "_log")


def test_metrics_merge(tmp_path):
    write_metrics(str(tmp_path), {"a": 1})
    write_metrics(str(tmp_path), {"b": [1, 2]})
    assert read_metrics(str(tmp_path)) == {"a": 1, "b": [1, 2]}


def test_scalar_writer_writes_event_file(tmp_path):
    writer = ScalarWriter(True, str(tmp_path), "step3_tensorboard_logs")
    writer.add_scalars({"reward": 1.5, "actor_loss": 0.1}, global_step=3)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(tmp_path / "step3_tensorboard_logs"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward")] == [(3, 1.5)]


def test_chat_helpers():
    assert chat.format_turn("hi") == " Human: hi\n Assistant:"
    assert chat.cut_answer(" 5\n Human: and then?") == "5"
    assert chat.cut_answer(" Paris<|endoftext|>junk") == "Paris"


def test_chat_repl_from_piped_stdin(tmp_path):
    from transformers import AutoModelForCausalLM

    from dschat.models.model_utils import create_hf_model
    tokenizer = load_hf_tokenizer("tiny-llama")
    torch.manual_seed(0)
    model = create_hf_model(AutoModelForCausalLM, "tiny-llama", tokenizer).eval()
    stdout = io.StringIO()
    answers = chat.run_repl(model, tokenizer, 4, "dschat", io.StringIO("What is 2 + 3?\nclear\nHi\nquit\nignored\n"),
                            stdout)
    text = stdout.getvalue()
    assert len(answers) == 2 and all("Human:" not in a for a in answers)
    assert "Round 1" in text and "(history cleared)" in text
    # After `clear` the second round starts a fresh conversation.
    after_clear = text.split("(history cleared)")[1]
    assert ("Human: Hi\n Assistant: " + answers[1]).strip() in after_clear
    assert "What is 2 + 3?" not in after_clear and "Round 1" in after_clear


def test_demo_summary_table_and_png(tmp_path):
    summary = {"sft_eval_perplexity": 2.5, "rm_heldout_accuracy": 0.93, "rm_heldout_pairs": 100,
               "sft_mean_reward": 1.0, "ppo_mean_reward": 2.0, "sft_task_success": 0.4, "ppo_task_success": 0.6,
               "reward_curve": [[0, 1.0], [1, 1.5], [2, 1.8]],
               "evaluations": [{"step": 0, "task_success": 0.4}, {"step": 2, "task_success": 0.6}]}
    table = demo.format_summary(summary)
    assert "| RM held-out accuracy (step 2, 100 pairs)" in table and "0.930" in table and "0.600" in table
    png = demo.plot_reward_curve(summary, str(tmp_path / "curve.png"))
    with open(png, "rb") as handle:
        header = handle.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 100 and height > 100


def test_hybrid_engine_flags_and_checks():
    from dschat.cli.args import parse_step3_args
    base = ["--actor_model_name_or_path", "a", "--critic_model_name_or_path", "c"]
    args = parse_step3_args(base)
    assert (args.enable_hybrid_engine, args.unpin_actor_parameters, args.release_inference_cache,
            args.inference_tp_size, args.tp_gather_partition_size) == (False, False, False, 1, 8)
    args = parse_step3_args(base + ["--enable_hybrid_engine", "--actor_zero_stage", "3", "--inference_tp_size", "2",
                                    "--unpin_actor_parameters", "--release_inference_cache"])
    assert args.inference_tp_size == 2 and args.unpin_actor_parameters
    with pytest.raises(SystemExit):
        parse_step3_args(base + ["--enable_hybrid_engine", "--actor_zero_stage", "2", "--inference_tp_size", "2"])
