"""Task success: does the actor answer the eval prompts *correctly*?

A reward curve can rise because the actor learned to please the reward
model, not because it got better. The embedded data set has answers a
program can check, so here the actor answers held-out prompts by greedy
decoding and `dschat.data.synthetic.check_answer` grades each answer. The
same pass also scores the answers with the reward model, when one is given,
so "mean reward" and "task success" describe the same answers.

Prompts come from the eval part of the `--data_path` sources (rows no step
trains on). Sources whose prompts the generator cannot grade are skipped;
with none left the metric is off (`load_task_prompts` returns []).

Distributed: the prompts are dealt out over the ranks, every rank runs the
same number of `generate` calls (padding its share with repeats that are not
counted), so ZeRO-3's `synced_gpus` generation and the final all-reduce of
the counts line up.
"""
import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from deepspeed import comm as dist
from dschat.data.raw_datasets import get_raw_dataset
from dschat.data.splits import resolve_seed
from dschat.data.synthetic import check_answer, expected_answer
from dschat.utils import is_zero3_param, unwrap_model

__all__ = ["load_task_prompts", "left_pad", "generate_answers", "evaluate_actor"]


def _gradeable(prompt: str) -> bool:
    try:
        expected_answer(prompt)
    except ValueError:
        return False
    return True


def load_task_prompts(data_path: Sequence[str], size: int, seed: Optional[int] = None,
                      output_path: str = "/tmp/data_files") -> List[str]:
    """Up to `size` gradeable eval prompts from the `data_path` sources, in a seeded order."""
    if size <= 0:
        return []
    prompts: List[str] = []
    for path in data_path:
        try:
            raw = get_raw_dataset(path, output_path, resolve_seed(seed), -1)
        except Exception:  # noqa: BLE001  an unavailable source simply has no gradeable prompts
            continue
        rows = raw.get_eval_data()
        candidates = [raw.get_prompt(rows[i]) for i in range(min(len(rows), 4 * size))]
        prompts += [p for p in candidates if p is not None and _gradeable(p)]
    order = np.random.RandomState(resolve_seed(seed)).permutation(len(prompts))
    return [prompts[i] for i in order[:size]]


def left_pad(tokenizer: Any, prompts: Sequence[str], device: Any) -> Dict[str, torch.Tensor]:
    """(B, P) left-padded `input_ids` and `attention_mask`, P = longest prompt, as step 3 feeds `generate`."""
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, tokens in enumerate(encoded):
        ids[row, width - len(tokens):] = torch.tensor(tokens, dtype=torch.long)
        mask[row, width - len(tokens):] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _is_zero3(model: Any) -> bool:
    return any(is_zero3_param(p) for p in unwrap_model(model).parameters())


def generate_answers(actor: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, device: Any,
                     synced_gpus: bool = False) -> Dict[str, Any]:
    """Greedy answers of `actor` (engine or HF model) to `prompts`: the sequences and decoded texts."""
    batch = left_pad(tokenizer, prompts, device)
    with torch.no_grad():
        seq = unwrap_model(actor).generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                           pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                           synced_gpus=synced_gpus)
    width = batch["input_ids"].shape[1]
    answers = tokenizer.batch_decode(seq[:, width:], skip_special_tokens=True)
    return {"seq": seq, "prompt_length": width, "answers": answers}


def evaluate_actor(actor: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, device: Any,
                   batch_size: int = 16, reward_model: Any = None, num_examples: int = 0) -> Dict[str, Any]:
    """Task success (and mean reward with `reward_model`) of `actor` on `prompts`; every rank must call it.

    Returns `task_success` (fraction correct), `mean_reward` (None without a
    reward model), `count`, and on rank 0 the first `num_examples`
    (prompt, answer, correct) triples of its share, for the log. Models are
    put in eval mode; callers switch back.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    mine = list(prompts[rank::world])
    per_rank = math.ceil(len(prompts) / world) if prompts else 0
    weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
    mine += [prompts[0]] * (per_rank - len(mine))
    synced = dist.is_initialized() and world > 1 and _is_zero3(actor)
    actor.eval()
    if reward_model is not None:
        reward_model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # correct, reward sum, count
    examples = []
    for start in range(0, per_rank, batch_size):
        chunk, chunk_w = mine[start:start + batch_size], weights[start:start + batch_size]
        out = generate_answers(actor, tokenizer, chunk, max_new_tokens, device, synced_gpus=synced)
        correct = [check_answer(p, a) for p, a in zip(chunk, out["answers"])]
        if reward_model is not None:
            seq = out["seq"]
            with torch.no_grad():
                scores = reward_model.forward_value(seq, seq.ne(tokenizer.pad_token_id).long(),
                                                    prompt_length=out["prompt_length"])["chosen_end_scores"]
            totals[1] += float((scores.double().cpu() * torch.tensor(chunk_w, dtype=torch.float64)).sum())
        totals[0] += sum(w for c, w in zip(correct, chunk_w) if c)
        totals[2] += sum(chunk_w)
        examples += [(p, a, c) for p, a, c, w in zip(chunk, out["answers"], correct, chunk_w) if w][:num_examples]
    if dist.is_initialized():
        reduced = totals.to(torch.float32).to(device)
        dist.all_reduce(reduced)
        totals = reduced.double().cpu()
    count = max(float(totals[2]), 1.0)
    return {
        "task_success": float(totals[0]) / count,
        "mean_reward": float(totals[1]) / count if reward_model is not None else None,
        "count": int(totals[2]),
        "examples": examples[:num_examples],
    }
