"""Step 2: reward-model fine-tuning on chosen/rejected pairs.

What it does: builds a `RewardModel` (base transformer + scalar `v_head`) from
`--model_name_or_path`, trains it with the pairwise loss
`-logsigmoid(r_chosen - r_rejected)` on the step-2 slice of `--data_path`,
and reports held-out pairwise accuracy and mean chosen/rejected scores
before training, every `--eval_interval` steps and after each epoch. With
`--output_dir` it saves the reward model (base model + `v_head`, HF format)
there, which step 3 loads strictly as both critic and reward model.

Launch:

    python -m dschat.step2 --model_name_or_path tiny-llama --dtype fp32 --output_dir out/reward
    deepspeed --num_gpus 2 -m dschat.step2 --model_name_or_path facebook/opt-350m --zero_stage 2 ...

Flags: `python -m dschat.step2 --help` (spec §2; defined in dschat/cli/args.py).
"""
import math
import time
from typing import Optional, Sequence

import torch

import deepspeed
from dschat.cli.args import parse_step2_args, resolve_num_padding
from dschat.cli.common import (apply_lora, init_distributed, make_loader, optimizer_and_scheduler, run_main,
                               save_step_output, set_epoch, train_ds_config)
from dschat.data.collators import DataCollatorReward
from dschat.data.data_utils import create_prompt_dataset
from dschat.data.tokenizer import load_hf_tokenizer
from dschat.eval.reward_eval import evaluate_reward_model
from dschat.instrument import progress, training_log
from dschat.models.model_utils import create_critic_model
from dschat.utils import get_all_reduce_mean, print_rank_0, set_random_seed, to_device

__all__ = ["main"]

# DS-Chat fixes the end-of-conversation string of steps 2 and 3 (spec §2).
END_OF_CONVERSATION = "<|endoftext|>"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_step2_args(argv)
    device = init_distributed(args)
    with training_log(args.output_dir, args, "step 2 (reward model)"):
        return _run(args, device)


def _report(tag: str, result: dict) -> None:
    print_rank_0(f"{tag}: chosen_last_scores (higher is better) : {result['chosen_mean_score']:.4f}, "
                 f"rejected_last_scores (lower is better) : {result['rejected_mean_score']:.4f}, "
                 f"acc (higher is better) : {result['accuracy']:.4f} ({result['pairs']} pairs)")


def _run(args, device: torch.device) -> dict:
    set_random_seed(args.seed)
    # ------------------------------------------------------------------ model
    tokenizer = load_hf_tokenizer(args.model_name_or_path, fast_tokenizer=True,
                                  add_special_tokens=END_OF_CONVERSATION if args.add_eot_token else None)
    args.num_padding_at_beginning = resolve_num_padding(args.num_padding_at_beginning, tokenizer)
    ds_config = train_ds_config(args, args.zero_stage, "step2_model", args.per_device_train_batch_size,
                                args.gradient_accumulation_steps)
    model = create_critic_model(args.model_name_or_path, tokenizer, ds_config, args.num_padding_at_beginning,
                                dropout=args.dropout, zero_stage=args.zero_stage,
                                compute_fp32_loss=args.compute_fp32_loss)
    # The head is new and must train even when only LoRA factors do.
    model = apply_lora(model, args.lora_dim, args.lora_module_name, args.only_optimize_lora,
                       force_optimize_params=["v_head.weight"])

    # ------------------------------------------------------------------- data
    train_dataset, eval_dataset = create_prompt_dataset(args.local_rank, args.data_path, args.data_split,
                                                        args.data_output_path, 2, args.seed, tokenizer,
                                                        args.max_seq_len,
                                                        end_of_conversation_token=END_OF_CONVERSATION)
    collator = DataCollatorReward()
    train_loader = make_loader(train_dataset, args.per_device_train_batch_size, collator, True, args.seed)
    eval_loader = make_loader(eval_dataset, args.per_device_eval_batch_size, collator, False, args.seed)

    # ------------------------------------------------------ optimizer, engine
    updates_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    optimizer, scheduler = optimizer_and_scheduler(model, args.weight_decay, args.lora_learning_rate,
                                                   args.learning_rate, args.offload, args.lr_scheduler_type,
                                                   args.num_warmup_steps, args.num_train_epochs * updates_per_epoch)
    model, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                          config=ds_config, dist_init_required=True)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    # ------------------------------------------------------------------ train
    print_rank_0(f"***** Running training: {len(train_dataset)} train pairs, {len(eval_dataset)} eval pairs *****")
    result = evaluate_reward_model(model, eval_loader, device, args.eval_iters)
    _report("Evaluating reward, Epoch 0", result)
    metrics = {"initial_accuracy": result["accuracy"]}
    total_steps = 0
    for epoch in range(args.num_train_epochs):
        print_rank_0(f"Beginning of Epoch {epoch + 1}/{args.num_train_epochs}, "
                     f"Total Micro Batches {len(train_loader)}")
        set_epoch(train_loader, epoch)
        model.train()
        started, loss_sum = time.time(), 0.0
        for step, batch in enumerate(progress(train_loader, f"step2 epoch {epoch + 1}")):
            outputs = model(**to_device(batch, device), use_cache=False)
            loss = outputs["loss"]
            model.backward(loss)
            model.step()
            loss_sum += loss.item()
            total_steps += 1
            if args.eval_interval and total_steps % args.eval_interval == 0:
                _report(f"Step {total_steps}", evaluate_reward_model(model, eval_loader, device, args.eval_iters))
                model.train()
        mean_loss = get_all_reduce_mean(torch.tensor(loss_sum / max(len(train_loader), 1))).item()
        print_rank_0(f"Epoch {epoch + 1}/{args.num_train_epochs} with loss {mean_loss:.4f} "
                     f"({time.time() - started:.1f}s)")
        result = evaluate_reward_model(model, eval_loader, device, args.eval_iters)
        _report(f"Evaluating reward, Epoch {epoch + 1}/{args.num_train_epochs}", result)
        metrics.update(train_loss=mean_loss, **result)

    # ------------------------------------------------------------------ save
    save_step_output(model, tokenizer, args, metrics)  # every rank: gathers under ZeRO-3, rank 0 writes
    return metrics


if __name__ == "__main__":
    run_main(main)  # shuts the process group down, then exits without finalizing
