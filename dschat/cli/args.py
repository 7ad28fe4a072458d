"""Every command-line flag of the three DS-Chat steps, defined once.

Flags and defaults follow DS-Chat at HEAD (spec §2); each step's parser is
assembled from the shared argument groups below, so a flag that two steps
share has one definition and one help text.

Deliberate differences from DS-Chat, each a fix of a user pain point:

* `--data_path` defaults to `dschat/synthetic`, the embedded preference set,
  so every step runs offline out of the box. `Dahoas/rm-static` and the
  other named datasets still work when cached (spec §3).
* `--seed` defaults to 1234 in all three steps. DS-Chat's step 3 defaulted
  to None, which drew a different `data_split` permutation and let step 3
  reuse rows of steps 1 and 2.
* `--dtype` also accepts `fp32` (no mixed precision). fp16 stays the
  default, as in DS-Chat; on a CPU fp16 matmuls are far slower, so CPU runs
  (the demo, the tests) pass `--dtype fp32`.
* `--num_padding_at_beginning` keeps DS-Chat's default 1 (OPT's BOS has the
  pad id), but the steps compare it with what the tokenizer really does
  (`count_padding_at_beginning`) and use the tokenizer's count, with a
  warning, when they differ (see `resolve_num_padding`).
* Step 3 adds `--resume`/`--save_steps`, task-success evaluation and answer
  sampling (group "beyond DS-Chat"); steps 1 and 2 add the task-success and
  metrics options.

Flags of features that are not in the runtime yet (the Hybrid Engine's
`--enable_hybrid_engine` family, `--enable_mixed_precision_lora`) are not
defined here; they arrive with their own issues.
"""
import argparse
from typing import Any, List, Optional, Sequence

import deepspeed

__all__ = [
    "DEFAULT_DATA_PATH", "DEFAULT_SEED", "SCHEDULER_TYPES", "step1_parser", "step2_parser", "step3_parser",
    "parse_step1_args", "parse_step2_args", "parse_step3_args", "validate_step3_args", "resolve_num_padding"
]

DEFAULT_DATA_PATH = "dschat/synthetic"
DEFAULT_SEED = 1234
DEFAULT_LORA_MODULE = "decoder.layers."
SCHEDULER_TYPES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
DTYPES = ("fp16", "bf16", "fp32")


def _data_group(parser: argparse.ArgumentParser, data_output_path: str) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("data")
    group.add_argument("--data_path", nargs="*", default=[DEFAULT_DATA_PATH],
                       help="datasets: dschat/synthetic[:N], local/jsonfile, a folder with train.json/eval.json, "
                       "or a cached HF dataset name (e.g. Dahoas/rm-static)")
    group.add_argument("--data_split", type=str, default="2,4,4",
                       help="comma-separated weights of the rows for steps 1, 2, 3 (one seeded permutation)")
    group.add_argument("--data_output_path", type=str, default=data_output_path,
                       help="where the tokenized-dataset cache is written (shared storage on multi-node)")
    return group


def _batch_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("batching and sequence")
    group.add_argument("--per_device_train_batch_size", type=int, default=16, help="micro-batch size per rank")
    group.add_argument("--per_device_eval_batch_size", type=int, default=16, help="eval batch size per rank")
    group.add_argument("--max_seq_len", type=int, default=512, help="maximum tokens per sample")


def _schedule_group(parser: argparse.ArgumentParser, learning_rate: Optional[float],
                    num_warmup_steps: int = 0) -> argparse._ArgumentGroup:
    """Schedule flags; `learning_rate=None` leaves out the single-model lr and weight decay (step 3 has two)."""
    group = parser.add_argument_group("optimiser and schedule")
    if learning_rate is not None:
        group.add_argument("--learning_rate", type=float, default=learning_rate, help="initial learning rate")
        group.add_argument("--weight_decay", type=float, default=0.0, help="weight decay")
    group.add_argument("--num_train_epochs", type=int, default=1, help="passes over the training data")
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="micro-steps per optimiser step")
    group.add_argument("--lr_scheduler_type", type=str, default="cosine", choices=SCHEDULER_TYPES,
                       help="HF learning-rate schedule")
    group.add_argument("--num_warmup_steps", type=int, default=num_warmup_steps, help="warm-up steps of the schedule")
    group.add_argument("--seed", type=int, default=DEFAULT_SEED,
                       help="seed of the RNGs and of the data_split permutation (same default in every step)")
    group.add_argument("--output_dir", type=str, default=None, help="where the model is saved (None: not saved)")
    group.add_argument("--local_rank", type=int, default=-1, help="set by the launcher")
    return group


def _precision_group(parser: argparse.ArgumentParser, single_model: bool) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("memory and precision")
    group.add_argument("--offload", action="store_true", help="ZeRO-Offload: optimizer state (and step) on the CPU")
    group.add_argument("--dtype", type=str, default="fp16", choices=DTYPES,
                       help="training precision; fp32 is our addition for CPU runs")
    group.add_argument("--compute_fp32_loss", action="store_true", help="compute the loss on fp32 logits")
    if single_model:
        group.add_argument("--zero_stage", type=int, default=0, choices=(0, 1, 2, 3), help="ZeRO stage")
        group.add_argument("--gradient_checkpointing", action="store_true", help="activation checkpointing")
        group.add_argument("--dropout", type=float, default=None,
                           help="set every dropout of the model config (None keeps the model's own)")
    return group


def _lora_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("LoRA")
    group.add_argument("--lora_dim", type=int, default=0, help="LoRA rank; > 0 turns LoRA on")
    group.add_argument("--lora_module_name", type=str, default=DEFAULT_LORA_MODULE,
                       help="LoRA replaces the Linear layers whose name contains this (Llama: `layers.`)")
    group.add_argument("--only_optimize_lora", action="store_true", help="train only the LoRA parameters")
    group.add_argument("--lora_learning_rate", type=float, default=5e-4, help="learning rate of the LoRA parameters")


def _logging_group(parser: argparse.ArgumentParser, tensorboard_path: str) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("logging")
    group.add_argument("--enable_tensorboard", action="store_true", help="write TensorBoard events")
    group.add_argument("--tensorboard_path", type=str, default=tensorboard_path, help="TensorBoard root folder")
    group.add_argument("--add_eot_token", action="store_true",
                       help="add the end-of-text string as one special token (instead of several BPE pieces)")
    return group


def _task_eval_group(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    group = parser.add_argument_group("beyond DS-Chat: task success")
    group.add_argument("--task_eval_size", type=int, default=256,
                       help="eval prompts for the task-success metric (greedy answers graded by the synthetic "
                       "generator); 0 turns it off. Only data sets whose answers a program can check use it")
    group.add_argument("--task_eval_max_new_tokens", type=int, default=32,
                       help="answer length budget of the task-success evaluation")
    return group


def _finish(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return deepspeed.add_config_arguments(parser)


def step1_parser() -> argparse.ArgumentParser:
    """Step 1 (supervised fine-tuning) flags."""
    parser = argparse.ArgumentParser(prog="dschat.step1", description="Step 1: supervised fine-tuning of the actor.")
    data = _data_group(parser, "/tmp/data_files/")
    data.add_argument("--sft_only_data_path", nargs="*", default=[],
                      help="datasets used only by step 1, all of their rows")
    parser.add_argument("--model_name_or_path", type=str, required=True,
                        help="a preset (tiny-llama, tiny-opt) or a local HF model folder")
    _batch_group(parser)
    _schedule_group(parser, learning_rate=1e-3)
    _precision_group(parser, single_model=True)
    _lora_group(parser)
    log = _logging_group(parser, "step1_tensorboard")
    log.add_argument("--eot_token", type=str, default="<|endoftext|>", help="the end-of-text string")
    log.add_argument("--print_loss", action="store_true", help="print the loss of every step")
    _task_eval_group(parser)
    return _finish(parser)


def step2_parser() -> argparse.ArgumentParser:
    """Step 2 (reward model) flags."""
    parser = argparse.ArgumentParser(prog="dschat.step2", description="Step 2: reward-model fine-tuning.")
    _data_group(parser, "/tmp/data_files/")
    parser.add_argument("--model_name_or_path", type=str, required=True,
                        help="a preset (tiny-llama, tiny-opt) or a local HF model folder")
    parser.add_argument("--num_padding_at_beginning", type=int, default=1,
                        help="pad tokens before every text (OPT: 1, its BOS is the pad id); replaced by the "
                        "tokenizer's real count, with a warning, when they differ")
    _batch_group(parser)
    _schedule_group(parser, learning_rate=5e-5)
    _precision_group(parser, single_model=True)
    _lora_group(parser)
    _logging_group(parser, "step2_tensorboard")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval_interval", type=int, default=0, help="evaluate every N steps (0: off)")
    evaluation.add_argument("--eval_iters", type=int, default=100, help="at most this many eval batches")
    return _finish(parser)


def step3_parser() -> argparse.ArgumentParser:
    """Step 3 (PPO) flags."""
    parser = argparse.ArgumentParser(prog="dschat.step3", description="Step 3: RLHF fine-tuning with PPO.")
    data = _data_group(parser, "/tmp/data_files")
    data.add_argument("--unsupervised_dataset_name", type=str, default=None,
                      help="language-modelling data mixed into PPO (e.g. dschat/synthetic, a .txt/.json file)")
    data.add_argument("--unsupervised_dataset_config_name", type=str, default=None, help="its HF config name")
    data.add_argument("--unsup_coef", type=float, default=27.8, help="weight of the unsupervised loss")
    data.add_argument("--preprocessing_num_workers", type=int, default=None, help="accepted; tokenizing is in-process")
    models = parser.add_argument_group("models")
    models.add_argument("--actor_model_name_or_path", type=str, required=True, help="the step-1 output folder")
    models.add_argument("--critic_model_name_or_path", type=str, required=True, help="the step-2 output folder")
    models.add_argument("--num_padding_at_beginning", type=int, default=1,
                        help="as in step 2; replaced by the tokenizer's real count when they differ")
    batch = parser.add_argument_group("batching and sequence")
    batch.add_argument("--per_device_generation_batch_size", type=int, default=16, help="prompts per generation")
    batch.add_argument("--per_device_training_batch_size", type=int, default=16, help="PPO micro-batch size")
    batch.add_argument("--generation_batches", type=int, default=1, help="generation batches per PPO round")
    batch.add_argument("--ppo_epochs", type=int, default=1, help="passes over each round's experience")
    batch.add_argument("--max_prompt_seq_len", type=int, default=256, help="longer prompts are dropped")
    batch.add_argument("--max_answer_seq_len", type=int, default=256, help="answer length budget")
    schedule = _schedule_group(parser, learning_rate=None, num_warmup_steps=100)
    schedule.add_argument("--actor_learning_rate", type=float, default=9.65e-6, help="actor learning rate")
    schedule.add_argument("--critic_learning_rate", type=float, default=5e-6, help="critic learning rate")
    schedule.add_argument("--actor_weight_decay", type=float, default=0.0, help="actor weight decay")
    schedule.add_argument("--critic_weight_decay", type=float, default=0.0, help="critic weight decay")
    precision = _precision_group(parser, single_model=False)
    precision.add_argument("--offload_reference_model", action="store_true", help="offload the ref (and EMA) model")
    precision.add_argument("--offload_reward_model", action="store_true", help="offload the reward model")
    for role in ("actor", "critic"):
        precision.add_argument(f"--{role}_zero_stage", type=int, default=0, choices=(0, 1, 2, 3),
                               help=f"ZeRO stage of the {role} (the ref/reward follow it at stage 3)")
        precision.add_argument(f"--{role}_gradient_checkpointing", action="store_true",
                               help=f"activation checkpointing for the {role}")
        precision.add_argument(f"--{role}_dropout", type=float, default=None, help=f"{role} dropout (None: keep)")
    hybrid = parser.add_argument_group("Hybrid Engine")
    hybrid.add_argument("--enable_hybrid_engine", action="store_true",
                        help="generate experience with DeepSpeed's Hybrid Engine (fused LoRA, KV-cache decode)")
    hybrid.add_argument("--unpin_actor_parameters", action="store_true",
                        help="ZeRO-3: gather --tp_gather_partition_size layers at a time instead of all at once")
    hybrid.add_argument("--release_inference_cache", action="store_true",
                        help="free the Hybrid Engine's KV cache after every generate call")
    hybrid.add_argument("--inference_tp_size", type=int, default=1,
                        help="tensor-parallel degree of generation (needs --actor_zero_stage 3)")
    hybrid.add_argument("--tp_gather_partition_size", type=int, default=8,
                        help="layers gathered at a time with --unpin_actor_parameters or tensor parallelism")
    lora = parser.add_argument_group("LoRA")
    for role in ("actor", "critic"):
        lora.add_argument(f"--{role}_lora_dim", type=int, default=0, help=f"{role} LoRA rank; > 0 turns it on")
        lora.add_argument(f"--{role}_lora_module_name", type=str, default=DEFAULT_LORA_MODULE,
                          help=f"{role} Linear layers whose name contains this get LoRA")
        lora.add_argument(f"--{role}_lora_learning_rate", type=float, default=5e-4,
                          help=f"learning rate of the {role}'s LoRA parameters")
    lora.add_argument("--only_optimize_lora", action="store_true", help="train only the LoRA parameters")
    log = _logging_group(parser, "step3_tensorboard")
    log.add_argument("--enable_ema", action="store_true", help="keep an EMA of the actor (saved as actor_ema/)")
    log.add_argument("--align_overflow", action="store_true", help="skip actor and critic steps together on overflow")
    log.add_argument("--print_answers", action="store_true", help="print generated answers")
    log.add_argument("--print_answers_interval", type=int, default=1, help="every N steps")
    log.add_argument("--enable_test_mode", action="store_true", help="stop after --test_stop_step steps")
    log.add_argument("--test_stop_step", type=int, default=0, help="non-overflow steps to run in test mode")
    extra = _task_eval_group(parser)
    extra.add_argument("--task_eval_interval", type=int, default=0,
                       help="also evaluate task success and mean reward every N steps (0: only before and after)")
    extra.add_argument("--do_sample", action="store_true",
                       help="sample the experience answers (DS-Chat: greedy for Llama, the model's generation "
                       "config otherwise); evaluation stays greedy")
    extra.add_argument("--temperature", type=float, default=1.0, help="sampling temperature with --do_sample")
    extra.add_argument("--top_k", type=int, default=0, help="top-k sampling with --do_sample (0: off)")
    extra.add_argument("--whiten_advantages", action="store_true",
                       help="whiten the PPO advantages of each micro-batch (DS-Chat: not whitened)")
    extra.add_argument("--critic_warmup_steps", type=int, default=0,
                       help="the first N PPO rounds train only the critic, so the actor's first updates "
                       "see a fitted baseline (DS-Chat: 0)")
    resume = parser.add_argument_group("beyond DS-Chat: checkpoints and resume")
    resume.add_argument("--save_steps", type=int, default=0,
                        help="checkpoint actor, critic, optimizers, data position, RNG and reward EMA every N "
                        "steps into --checkpoint_dir (0: never)")
    resume.add_argument("--checkpoint_dir", type=str, default=None,
                        help="checkpoint folder (default: <output_dir>/checkpoints)")
    resume.add_argument("--resume", action="store_true", help="continue from the latest checkpoint, if any")
    return _finish(parser)


def parse_step1_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return step1_parser().parse_args(argv)


def parse_step2_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    return step2_parser().parse_args(argv)


def parse_step3_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = step3_parser()
    args = parser.parse_args(argv)
    errors = validate_step3_args(args)
    if errors:
        parser.error("; ".join(errors))
    if args.checkpoint_dir is None and args.output_dir is not None:
        args.checkpoint_dir = f"{args.output_dir.rstrip('/')}/checkpoints"
    return args


def validate_step3_args(args: argparse.Namespace) -> List[str]:
    """The step-3 combinations that cannot work, each with the reason.

    Only what would fail later, mid-run, is rejected. DS-Chat also refused
    ZeRO-2 + Hybrid Engine + offload without actor LoRA as "unstable"; that
    combination works here and is allowed.
    """
    errors = []
    positive = ("per_device_generation_batch_size", "per_device_training_batch_size", "generation_batches",
                "ppo_epochs", "max_prompt_seq_len", "max_answer_seq_len", "gradient_accumulation_steps",
                "num_train_epochs")
    for name in positive:
        if getattr(args, name) < 1:
            errors.append(f"--{name} must be >= 1, got {getattr(args, name)}")
    if (args.save_steps > 0 or args.resume) and args.output_dir is None and args.checkpoint_dir is None:
        errors.append("--save_steps/--resume need --output_dir or --checkpoint_dir to know where checkpoints live")
    if args.save_steps < 0:
        errors.append(f"--save_steps must be >= 0, got {args.save_steps}")
    if args.critic_warmup_steps < 0:
        errors.append(f"--critic_warmup_steps must be >= 0, got {args.critic_warmup_steps}")
    if args.inference_tp_size < 1:
        errors.append(f"--inference_tp_size must be >= 1, got {args.inference_tp_size}")
    if args.inference_tp_size > 1 and args.actor_zero_stage != 3:
        errors.append(f"--inference_tp_size {args.inference_tp_size} shards the actor for generation, which needs "
                      f"its parameters partitioned: use --actor_zero_stage 3 (got {args.actor_zero_stage})")
    if args.inference_tp_size > 1 and not args.enable_hybrid_engine:
        errors.append("--inference_tp_size > 1 only applies with --enable_hybrid_engine")
    if args.tp_gather_partition_size < 1:
        errors.append(f"--tp_gather_partition_size must be >= 1, got {args.tp_gather_partition_size}")
    if args.do_sample and args.temperature <= 0:
        errors.append(f"--temperature must be > 0 with --do_sample, got {args.temperature}")
    return errors


def resolve_num_padding(requested: int, tokenizer: Any) -> int:
    """The `num_padding_at_beginning` the reward model should use with `tokenizer`.

    DS-Chat's default 1 is right only when the tokenizer puts a pad-id token
    before every text (OPT under the pad = EOS rule). With any other
    tokenizer (Llama with [PAD], the embedded one) a 1 makes the reward model
    read its score one token past the end of the answer, silently. So the
    tokenizer's own count wins, with a warning when it differs.
    """
    from dschat.data.tokenizer import count_padding_at_beginning
    from dschat.utils import print_rank_0
    actual = count_padding_at_beginning(tokenizer)
    if actual != requested:
        print_rank_0(f"[dschat] warning: --num_padding_at_beginning {requested} does not match this tokenizer, which "
                     f"puts {actual} pad token(s) before each text; using {actual}")
    return actual
