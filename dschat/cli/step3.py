"""Step 3: RLHF fine-tuning of the step-1 actor with PPO against the step-2 reward model.

What it does (spec §8): for each batch of step-3 prompts the actor generates
answers; the reward model scores them, the frozen reference (SFT) model and
the critic add KL penalties and values; once `--generation_batches` batches
are buffered, `--ppo_epochs` passes of clipped PPO update the actor and
critic (plus an LM loss on `--unsupervised_dataset_name` text with
`--unsup_coef`, and an EMA of the actor with `--enable_ema`). The mean reward
is all-reduced and smoothed by an EMA (alpha 0.9).

Beyond DS-Chat: `--save_steps N` checkpoints engines, optimizers, data
position, RNG and reward statistics every N steps and `--resume` continues
from the latest checkpoint; on gradeable data the task success and mean
reward of greedy answers are measured before, every `--task_eval_interval`
steps and after training (and the success of the sampled experience
answers is logged every round); `--do_sample` samples the experience
answers; `--critic_warmup_steps N` trains only the critic in the first N
rounds; `--whiten_advantages` whitens each micro-batch's advantages.

Launch:

    python -m dschat.step3 --actor_model_name_or_path out/actor --critic_model_name_or_path out/reward \\
        --dtype fp32 --output_dir out/step3
    deepspeed --num_gpus 2 -m dschat.step3 ... --actor_zero_stage 3 --critic_zero_stage 3

Outputs under `--output_dir`: `actor/`, `critic/` (and `actor_ema/`) in HF
format, training.log, metrics.json (with the reward curve).
Flags: `python -m dschat.step3 --help` (spec §2; defined in dschat/cli/args.py).
"""
import itertools
import random
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from transformers import default_data_collator

from dschat.cli.args import parse_step3_args, resolve_num_padding
from dschat.cli.common import run_main, init_distributed, make_loader, set_epoch
from dschat.cli.resume import Step3State, load_step3_checkpoint, save_step3_checkpoint, set_rng_state
from dschat.data.collators import DataCollatorRLHF, MiniDataset
from dschat.data.data_utils import create_prompt_dataset
from dschat.data.synthetic import check_answer
from dschat.data.tokenizer import load_hf_tokenizer
from dschat.data.unsupervised import get_unsupervised_data
from dschat.eval.task_success import evaluate_actor, load_task_prompts
from dschat.instrument import ScalarWriter, progress, training_log, write_metrics
from dschat.models.saving import save_hf_format
from dschat.ppo.trainer import DeepSpeedPPOTrainer, DeepSpeedPPOTrainerUnsupervised
from dschat.rlhf_engine import DeepSpeedRLHFEngine, actor_gradient_accumulation_steps
from dschat.utils import (ExponentialMovingAverage, get_all_reduce_mean, moving_average, print_rank_0,
                          set_random_seed, to_device)

__all__ = ["main", "trainer_class"]

# DS-Chat fixes the end-of-conversation string of steps 2 and 3 (spec §2).
END_OF_CONVERSATION = "<|endoftext|>"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_step3_args(argv)
    device = init_distributed(args)
    with training_log(args.output_dir, args, "step 3 (PPO)"):
        return _run(args, device)


def trainer_class(args: Any) -> type:
    """The PPO trainer for `args`: with the unsupervised mix or not, sampling answers or not."""
    base = DeepSpeedPPOTrainerUnsupervised if args.unsupervised_dataset_name else DeepSpeedPPOTrainer
    if not args.do_sample:
        return base

    class SamplingPPOTrainer(base):
        """Samples the experience answers; DS-Chat forces greedy answers for Llama (spec §8)."""

        def _generation_kwargs(self) -> Dict[str, Any]:
            return {"do_sample": True, "temperature": args.temperature, "top_k": args.top_k}

    return SamplingPPOTrainer


def _run(args, device: torch.device) -> dict:
    set_random_seed(args.seed)
    # ------------------------------------------------------------------- data
    tokenizer = load_hf_tokenizer(args.actor_model_name_or_path, fast_tokenizer=True,
                                  add_special_tokens=END_OF_CONVERSATION if args.add_eot_token else None)
    args.num_padding_at_beginning = resolve_num_padding(args.num_padding_at_beginning, tokenizer)
    prompt_dataset, _ = create_prompt_dataset(args.local_rank, args.data_path, args.data_split, args.data_output_path,
                                              3, args.seed, tokenizer, args.max_prompt_seq_len,
                                              end_of_conversation_token=END_OF_CONVERSATION)
    prompt_loader = make_loader(prompt_dataset, args.per_device_generation_batch_size,
                                DataCollatorRLHF(args.max_prompt_seq_len), True, args.seed)
    unsupervised = args.unsupervised_dataset_name is not None
    unsup_loader = None
    if unsupervised:
        unsup_loader = make_loader(get_unsupervised_data(args, tokenizer), args.per_device_generation_batch_size,
                                   default_data_collator, True, args.seed)
    steps_per_epoch = min(len(prompt_loader), len(unsup_loader)) if unsupervised else len(prompt_loader)
    # Scheduler length, as DS-Chat computes it (spec §8).
    num_total_iters = int(args.num_train_epochs * steps_per_epoch * args.per_device_generation_batch_size /
                          args.per_device_training_batch_size * args.ppo_epochs / args.gradient_accumulation_steps)
    task_prompts = load_task_prompts(args.data_path, args.task_eval_size, args.seed, args.data_output_path)

    # ----------------------------------------------------------------- models
    rlhf_engine = DeepSpeedRLHFEngine(args.actor_model_name_or_path, args.critic_model_name_or_path, tokenizer, args,
                                      num_total_iters=num_total_iters)
    trainer = trainer_class(args)(rlhf_engine, args)
    gas_actor = actor_gradient_accumulation_steps(args)
    exp_buffer = MiniDataset(args.generation_batches, args.per_device_training_batch_size)
    unsup_buffer = MiniDataset(args.generation_batches, args.per_device_training_batch_size)
    engines = {"actor": rlhf_engine.actor, "critic": rlhf_engine.critic}
    if rlhf_engine.actor_ema is not None:
        engines["actor_ema"] = rlhf_engine.actor_ema

    state, rng_state = Step3State(), None
    if args.resume:
        state, rng_state = load_step3_checkpoint(args.checkpoint_dir, engines) or (state, None)
    reward_ema = ExponentialMovingAverage(0.9)
    if state.reward_ema is not None:
        reward_ema.load_state_dict(state.reward_ema)
    scalars = ScalarWriter(args.enable_tensorboard, args.tensorboard_path, "step3_tensorboard_logs")

    def evaluate(tag: str) -> None:
        if not task_prompts:
            return
        result = evaluate_actor(rlhf_engine.actor, tokenizer, task_prompts, args.task_eval_max_new_tokens, device,
                                args.per_device_generation_batch_size, rlhf_engine.reward, num_examples=3)
        print_rank_0(f"[{tag}] task success {result['task_success']:.3f}, mean reward {result['mean_reward']:.4f} "
                     f"({result['count']} greedy eval answers)")
        for prompt, answer, correct in result["examples"]:
            print_rank_0(f"  {'OK ' if correct else 'BAD'} {prompt.strip()!r} -> {answer.strip()!r}")
        state.evaluations.append({"step": state.global_step, "task_success": result["task_success"],
                                  "mean_reward": result["mean_reward"]})
        scalars.add_scalars({"task_success": result["task_success"], "eval_mean_reward": result["mean_reward"]},
                            state.global_step)
        trainer.train()

    # ------------------------------------------------------------------- loop
    print_rank_0(f"***** Running PPO: {len(prompt_dataset)} prompts, {steps_per_epoch} steps/epoch per rank, "
                 f"{num_total_iters} scheduler steps *****")
    if state.global_step == 0:
        evaluate("before PPO")
    stopped = False
    sampled_success: List[Tuple[int, int]] = []  # (correct, graded) experience answers since the last round
    for epoch in range(state.epoch, args.num_train_epochs):
        set_epoch(prompt_loader, epoch)
        batches = zip(prompt_loader, unsup_loader) if unsupervised else ((b, None) for b in prompt_loader)
        if rng_state is not None:
            # After the loaders drew their seeds, as in the interrupted run.
            set_rng_state(rng_state)
            rng_state = None
        skip = state.step if epoch == state.epoch else 0
        batches = itertools.islice(batches, skip, steps_per_epoch)  # resume: skip consumed batches
        for step, (batch_prompt, batch_unsup) in enumerate(progress(batches, f"step3 epoch {epoch + 1}",
                                                                    steps_per_epoch, skip), start=skip):
            batch_prompt = to_device(batch_prompt, device)
            experience = trainer.generate_experience(batch_prompt["prompt"], batch_prompt["prompt_att_mask"],
                                                     state.global_step)
            sampled_success.append(_experience_success(tokenizer, experience) if task_prompts else (0, 0))
            training_start = time.time()
            exp_dataset = exp_buffer.add(experience)
            unsup_dataset = unsup_buffer.add(to_device(batch_unsup, device)) if unsupervised else None
            if exp_dataset is not None:
                _ppo_round(args, rlhf_engine, trainer, exp_dataset, unsup_dataset, state, reward_ema, gas_actor,
                           scalars, training_start, sampled_success)
                sampled_success = []
            state.epoch, state.step, state.global_step = epoch, step + 1, state.global_step + 1
            actor_overflow, critic_overflow = trainer.get_overflow()
            if not actor_overflow and not critic_overflow:
                state.non_overflow_steps += 1
            if args.task_eval_interval and state.global_step % args.task_eval_interval == 0:
                evaluate(f"step {state.global_step}")
            if args.save_steps and state.global_step % args.save_steps == 0 and not exp_buffer.dataset:
                state.reward_ema = reward_ema.state_dict()
                save_step3_checkpoint(args.checkpoint_dir, engines, state)
            if args.enable_test_mode and state.non_overflow_steps == args.test_stop_step:
                stopped = True
                break
        if stopped:
            break
        state.epoch, state.step = epoch + 1, 0

    # ------------------------------------------------------------------ save
    if not args.task_eval_interval or state.global_step % args.task_eval_interval:
        evaluate("after PPO")
    scalars.close()
    metrics = _summary(state)
    if args.output_dir is not None:
        print_rank_0(f"saving the final models to {args.output_dir} ...")
        for name, engine in engines.items():
            sub = "critic" if name == "critic" else name
            save_hf_format(engine, tokenizer, args, sub_folder=sub)  # every rank; LoRA fused in the saved copy
        write_metrics(args.output_dir, metrics)
    return metrics


def _ppo_round(args, rlhf_engine, trainer, exp_dataset, unsup_dataset, state: Step3State,
               reward_ema: ExponentialMovingAverage, gas_actor: int, scalars: ScalarWriter,
               training_start: float, sampled_success: Sequence[Tuple[int, int]] = ()) -> None:
    """`--ppo_epochs` passes over one buffer of experience, then logging (spec §8 "Step-3 loop").

    The first `--critic_warmup_steps` rounds train the critic only.
    `sampled_success` holds the (correct, graded) counts of each buffered
    batch's answers; their all-ranks ratio is logged next to the reward.
    """
    train_actor = state.global_step >= args.critic_warmup_steps
    if unsup_dataset is None:
        unsup_dataset = [None] * len(exp_dataset)
    actor_loss_sum = critic_loss_sum = unsup_loss_sum = reward_sum = 0.0
    inner_iter = 0
    if args.actor_gradient_checkpointing:
        rlhf_engine.actor.gradient_checkpointing_enable()
    for _ in range(args.ppo_epochs):
        for exp_data, unsup_data in zip(exp_dataset, unsup_dataset):
            actor_loss, critic_loss = trainer.train_rlhf(exp_data, train_actor=train_actor)
            actor_loss_sum += actor_loss.item()
            critic_loss_sum += critic_loss.item()
            reward_sum += exp_data.rewards.float().mean().item()
            if unsup_data is not None:
                unsup_loss_sum += trainer.train_unsupervised(unsup_data, args.unsup_coef).item()
            inner_iter += 1
            if rlhf_engine.actor_ema is not None:
                moving_average(rlhf_engine.actor, rlhf_engine.actor_ema, zero_stage=args.actor_zero_stage)
        random.shuffle(exp_dataset)
        random.shuffle(unsup_dataset)
    if args.actor_gradient_checkpointing:
        rlhf_engine.actor.gradient_checkpointing_disable()
    # The release fed the EMA the *sum* over inner iterations (spec §13); we
    # average first, so the logged reward does not scale with ppo_epochs.
    device = rlhf_engine.actor.device
    average_reward = get_all_reduce_mean(torch.tensor(reward_sum / inner_iter, device=device)).item()
    state.step_average_reward += average_reward / gas_actor
    if (state.global_step + 1) % gas_actor == 0:
        reward_ema.update(state.step_average_reward)
        state.step_average_reward = 0.0
    state.reward_ema = reward_ema.state_dict()
    state.rewards.append([state.global_step, average_reward])
    e2e_time = time.time() - training_start + trainer.generate_time * args.generation_batches
    print_rank_0(f"Epoch: {state.epoch} | Step: {state.global_step} | PPO Epoch: {args.ppo_epochs} | "
                 f"Actor Loss: {actor_loss_sum / inner_iter:.4f} | Critic Loss: {critic_loss_sum / inner_iter:.4f} | "
                 f"Unsupervised Loss: {unsup_loss_sum / inner_iter:.4f}")
    ema = reward_ema.get()
    # Every rank reduces every round (no rank-dependent collective); the mean keeps the ratio.
    counts = get_all_reduce_mean(torch.tensor([float(sum(c for c, _ in sampled_success)),
                                               float(sum(g for _, g in sampled_success))], device=device))
    success = float(counts[0] / counts[1]) if counts[1] > 0 else None
    print_rank_0(f"Average reward score: {average_reward:.4f} | EMA reward score: "
                 f"{'n/a' if ema is None else f'{ema:.4f}'} | "
                 f"{'' if success is None else f'Sampled task success: {success:.3f} | '}"
                 f"{'' if train_actor else 'critic warm-up | '}End-to-end {e2e_time:.2f}s "
                 f"(generation {trainer.generate_time:.2f}s)")
    values = {"reward": average_reward, "actor_loss": actor_loss_sum / inner_iter, "actor_loss_sum": actor_loss_sum,
              "critic_loss": critic_loss_sum / inner_iter, "critic_loss_sum": critic_loss_sum}
    if success is not None:
        values["sampled_task_success"] = success
    scalars.add_scalars(values, state.global_step)


def _experience_success(tokenizer: Any, experience: Any) -> Tuple[int, int]:
    """(correct, graded) counts of the experience's (sampled) answers; ungradeable prompts are not counted.

    Evaluation is greedy; this is the success of the answers PPO actually
    learns from, so the log shows whether the sampled policy improves too.
    """
    width = experience.prompt_length
    prompts = tokenizer.batch_decode(experience.seq[:, :width], skip_special_tokens=True)
    answers = tokenizer.batch_decode(experience.seq[:, width:], skip_special_tokens=True)
    correct = graded = 0
    for prompt, answer in zip(prompts, answers):
        try:
            correct += bool(check_answer(prompt, answer))
        except ValueError:
            continue
        graded += 1
    return correct, graded


def _summary(state: Step3State) -> Dict[str, Any]:
    metrics: Dict[str, Any] = {"steps": state.global_step, "reward_curve": state.rewards,
                               "evaluations": state.evaluations,
                               "reward_ema": (state.reward_ema or {}).get("ema")}
    if state.evaluations:
        first, last = state.evaluations[0], state.evaluations[-1]
        metrics.update(sft_task_success=first["task_success"], sft_mean_reward=first["mean_reward"],
                       ppo_task_success=last["task_success"], ppo_mean_reward=last["mean_reward"])
    return metrics


if __name__ == "__main__":
    run_main(main)  # shuts the process group down, then exits without finalizing
