"""Step 1: supervised fine-tuning (SFT) of the actor on prompt + chosen answer.

What it does: tokenizes `prompt + chosen + EOS` rows of the step-1 slice of
`--data_path`, trains a causal LM on them with the LM loss (pads masked out
of the labels), reports eval perplexity before training and after each epoch
and, on data a program can grade, the task success of greedy answers. With
`--output_dir` it saves the actor in HF format there, with a training.log
and metrics.json.

Launch:

    python -m dschat.step1 --model_name_or_path tiny-llama --dtype fp32 --output_dir out/actor
    deepspeed --num_gpus 2 -m dschat.step1 --model_name_or_path facebook/opt-1.3b --zero_stage 2 ...

Flags: `python -m dschat.step1 --help` (spec §2; defined in dschat/cli/args.py).
"""
import math
import time
from typing import Optional, Sequence

import torch
from transformers import AutoModelForCausalLM, default_data_collator

import deepspeed
from dschat.cli.args import parse_step1_args
from dschat.cli.common import (apply_lora, init_distributed, make_loader, optimizer_and_scheduler, run_main,
                               save_step_output, set_epoch, train_ds_config)
from dschat.data.data_utils import create_prompt_dataset
from dschat.data.tokenizer import load_hf_tokenizer
from dschat.eval.perplexity import evaluate_perplexity
from dschat.eval.task_success import evaluate_actor, load_task_prompts
from dschat.instrument import progress, training_log
from dschat.models.model_utils import causal_lm_model_to_fp32_loss, create_hf_model
from dschat.utils import get_all_reduce_mean, print_rank_0, set_random_seed, to_device

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_step1_args(argv)
    device = init_distributed(args)
    with training_log(args.output_dir, args, "step 1 (SFT)"):
        return _run(args, device)


def _run(args, device: torch.device) -> dict:
    set_random_seed(args.seed)
    # ------------------------------------------------------------------ model
    eot = args.eot_token if args.add_eot_token else None
    tokenizer = load_hf_tokenizer(args.model_name_or_path, fast_tokenizer=True, add_special_tokens=eot)
    ds_config = train_ds_config(args, args.zero_stage, "step1_model", args.per_device_train_batch_size,
                                args.gradient_accumulation_steps)
    model = create_hf_model(AutoModelForCausalLM, args.model_name_or_path, tokenizer, ds_config,
                            dropout=args.dropout)
    if args.compute_fp32_loss:
        model = causal_lm_model_to_fp32_loss(model)
    model = apply_lora(model, args.lora_dim, args.lora_module_name, args.only_optimize_lora)

    # ------------------------------------------------------------------- data
    # Step 1 ends each text with the tokenizer's own EOS (spec §2, #819), so
    # the model learns to stop where generation stops.
    end_token = args.eot_token if args.add_eot_token else tokenizer.eos_token
    train_dataset, eval_dataset = create_prompt_dataset(args.local_rank, args.data_path, args.data_split,
                                                        args.data_output_path, 1, args.seed, tokenizer,
                                                        args.max_seq_len, end_of_conversation_token=end_token,
                                                        sft_only_data_path=args.sft_only_data_path)
    train_loader = make_loader(train_dataset, args.per_device_train_batch_size, default_data_collator, True,
                               args.seed)
    eval_loader = make_loader(eval_dataset, args.per_device_eval_batch_size, default_data_collator, False, args.seed)
    task_prompts = load_task_prompts(args.data_path, args.task_eval_size, args.seed, args.data_output_path)

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
    print_rank_0(f"***** Running training: {len(train_dataset)} train rows, {len(eval_dataset)} eval rows, "
                 f"{len(train_loader)} steps/epoch per rank *****")
    perplexity, eval_loss = evaluate_perplexity(model, eval_loader, device)
    print_rank_0(f"ppl: {perplexity}, loss: {eval_loss}")
    metrics = {"initial_eval_perplexity": perplexity}
    for epoch in range(args.num_train_epochs):
        print_rank_0(f"Beginning of Epoch {epoch + 1}/{args.num_train_epochs}, "
                     f"Total Micro Batches {len(train_loader)}")
        set_epoch(train_loader, epoch)
        model.train()
        started, loss_sum = time.time(), 0.0
        for step, batch in enumerate(progress(train_loader, f"step1 epoch {epoch + 1}")):
            outputs = model(**to_device(batch, device), use_cache=False)
            loss = outputs.loss
            if args.print_loss:
                print(f"Epoch: {epoch}, Step: {step}, Rank: {args.global_rank}, loss = {loss.item()}", flush=True)
            model.backward(loss)
            model.step()
            loss_sum += loss.item()
        mean_train_loss = get_all_reduce_mean(torch.tensor(loss_sum / max(len(train_loader), 1))).item()
        print_rank_0(f"Epoch {epoch + 1}: mean train loss {mean_train_loss:.4f} ({time.time() - started:.1f}s)")
        perplexity, eval_loss = evaluate_perplexity(model, eval_loader, device)
        print_rank_0(f"ppl: {perplexity}, loss: {eval_loss}")
        metrics.update(train_loss=mean_train_loss, eval_perplexity=perplexity, eval_loss=eval_loss)

    # ------------------------------------------------------------- evaluate
    if task_prompts:
        result = evaluate_actor(model, tokenizer, task_prompts, args.task_eval_max_new_tokens, device,
                                args.per_device_eval_batch_size, num_examples=3)
        print_rank_0(f"Task success (greedy, {result['count']} eval prompts): {result['task_success']:.3f}")
        for prompt, answer, correct in result["examples"]:
            print_rank_0(f"  {'OK ' if correct else 'BAD'} {prompt.strip()!r} -> {answer.strip()!r}")
        metrics["task_success"] = result["task_success"]

    # ------------------------------------------------------------------ save
    save_step_output(model, tokenizer, args, metrics)  # every rank: gathers under ZeRO-3, rank 0 writes
    return metrics


if __name__ == "__main__":
    run_main(main)  # shuts the process group down, then exits without finalizing
