"""Step flags the runners use per model: the tuned CPU recipe of the presets, DS-Chat's defaults otherwise.

[Note: demo recipe] The presets are trained from scratch on the embedded
synthetic set, on CPU, in minutes, so their recipe differs from DS-Chat's
GPU scripts for 1.3B models:
- fp32 (CPU fp16 matmuls are far slower) and ZeRO-2 over 2 ranks;
- short sequences: prompts are at most 22 tokens and answers 6 (+ EOS) with
  the embedded tokenizer, so max_seq_len 48, prompt 24, answer 8;
- the data is the embedded generator's four list families (demo_data.py
  says why), 20000 rows, of which step 1 takes 40%, step 2 50% and step 3
  10% (data_split 4,5,1 keeps the slices disjoint); step 1 runs 3 epochs at
  a high learning rate, since the actor starts from random weights;
- the reward model starts from the SFT actor (as in InstructGPT) instead of
  from scratch, so it already knows the task language, and trains 4 epochs
  on pairs whose rejected answers are the SFT actor's own sampled mistakes
  (`policy_negatives`, demo_data.write_policy_pairs; InstructGPT's labelers
  also compared SFT samples, here `check_answer` labels them). Measured on
  the SFT actor's samples of held-out prompts, such an RM ranks right above
  wrong ~98% of the time; trained 2 epochs on the generator's pairs only,
  67%, and PPO then climbs the RM's errors instead of the task;
- step 3 samples its experience (`--do_sample`; DS-Chat forces greedy
  answers for Llama) and uses large generation batches (64 prompts per rank,
  one PPO update each) at a small constant learning rate with no warm-up:
  with 16-prompt batches and 5e-5 the Adam steps of this 4-layer model are
  mostly sampling noise and the greedy answers drift; task success is
  measured on 512 held-out prompts every 10 steps;
- the first 16 rounds (one epoch of step-3 prompts) train only the critic
  (`--critic_warmup_steps 16`): the critic starts as the reward model,
  whose per-token values were never trained before the answer's end (about
  -7 at the prompt end against returns near +1), so GAE handed wrong answers
  positive advantages at most tokens; its loss falls from ~12 to ~3 in
  those rounds, after which the actor starts;
- answers are sampled from the 3 likeliest tokens (`--top_k 3`): with
  plain sampling most wrong answers contain a token of probability ~1%,
  and pushing those answers down also lowered the probability of the
  *correct* answers, which share their other tokens and the rest of the
  model (measured on one fixed batch: 10 steps took the correct answers'
  log-prob from -0.26 to -0.76 while the wrong ones' fell from -4.1 to -7.9).
  Measured on the same step-1/2 outputs, step 3 alone over seeds
  1234/42/7 (greedy task success change, mean reward change): DS-Chat's
  unwhitened sampling PPO -0.028/-0.043/-0.059 and -0.05/-0.39/-0.62; this
  recipe +0.025/-0.004/-0.010 and +0.28/-0.05/-0.25 (on an AVX2 machine;
  an AVX-512 Xeon gave +0.014 and +0.44 on seed 1234, and a Zen 1 AMD EPYC
  -0.014 and -0.01, the whole pipeline's fp32 sums being ordered
  differently on each). Neither whitening the
  advantages (`--whiten_advantages`), more PPO epochs, nor actor learning
  rates 5e-6..1e-4 gave a gain; even plain REINFORCE with the *true* task
  reward did not raise this model's sampled success within such a budget,
  so PPO here mostly stops harming the SFT actor rather than improving it
  (issue 5; tests/chat/test_demo.py).
"""
import dataclasses
from typing import List

from dschat.models.presets import is_preset

__all__ = ["Recipe", "PRESET_RECIPE", "DEFAULT_RECIPE", "recipe_for", "DEMO_TRAIN_SIZE", "DEMO_EVAL_SIZE"]

# Rows of the demo data set (dschat/cli/demo_data.py): the embedded synthetic
# generator with hard negatives, 20000 train and 2000 held-out rows.
DEMO_TRAIN_SIZE = 20000
DEMO_EVAL_SIZE = 2000
_COMMON = ["--data_split", "4,5,1", "--dtype", "fp32", "--seed", "1234"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Extra flags of each step (the runner adds models and output folders)."""

    step1: List[str]
    step2: List[str]
    step3: List[str]
    reward_from_sft: bool = False
    """Build the step-2 model from the step-1 output when actor and reward model are the same preset."""
    demo_data: bool = False
    """Train on the demo data set (written by the runner) instead of the steps' default data."""
    policy_negatives: bool = False
    """Step 2 trains on pairs whose rejected answers the SFT actor sampled (demo_data.write_policy_pairs)."""


PRESET_RECIPE = Recipe(
    step1=_COMMON + [
        "--zero_stage", "2", "--max_seq_len", "48", "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "64", "--learning_rate", "3e-3", "--weight_decay", "0.0",
        "--num_train_epochs", "3", "--lr_scheduler_type", "cosine", "--num_warmup_steps", "20",
        "--task_eval_size", "256", "--task_eval_max_new_tokens", "8",
    ],
    step2=_COMMON + [
        "--zero_stage", "2", "--max_seq_len", "48", "--per_device_train_batch_size", "32",
        "--per_device_eval_batch_size", "64", "--learning_rate", "1e-3", "--weight_decay", "0.0",
        "--num_train_epochs", "4", "--lr_scheduler_type", "cosine", "--num_warmup_steps", "10",
        "--num_padding_at_beginning", "0",
    ],
    step3=_COMMON + [
        "--actor_zero_stage", "2", "--critic_zero_stage", "2", "--num_padding_at_beginning", "0",
        "--per_device_generation_batch_size", "64", "--per_device_training_batch_size", "64",
        "--max_prompt_seq_len", "24", "--max_answer_seq_len", "8", "--actor_learning_rate", "2e-5",
        "--critic_learning_rate", "1e-3", "--num_warmup_steps", "0", "--lr_scheduler_type", "constant",
        "--do_sample", "--top_k", "3", "--critic_warmup_steps", "16", "--task_eval_size", "512",
        "--task_eval_max_new_tokens", "8", "--task_eval_interval", "10", "--num_train_epochs", "4",
    ],
    reward_from_sft=True,
    demo_data=True,
    # On: the RM then ranks the SFT actor's own right and wrong samples
    # correctly ~98% of the time (67% without), see [Note: demo recipe].
    policy_negatives=True,
)

DEFAULT_RECIPE = Recipe(step1=[], step2=[], step3=[])


def recipe_for(model: str) -> Recipe:
    """The preset recipe for `tiny-llama`/`tiny-opt`, DS-Chat's defaults for anything else."""
    return PRESET_RECIPE if is_preset(model) else DEFAULT_RECIPE
