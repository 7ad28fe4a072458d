"""Reward-model evaluation on held-out preference pairs.

Accuracy is the share of pairs whose chosen answer scores above the rejected
one (scores are the values at each answer's last token). DS-Chat's
`rw_eval.py` never loaded the trained `v_head` (#808) and so scored with a
random head; here a saved model is always loaded with
`create_critic_model(..., rlhf_training=True)`, which loads base model and
head strictly and fails, naming the keys, on anything else.

    python -m dschat.eval.reward_eval --model_name_or_path out/reward-models/tiny-llama \\
        --data_path dschat/synthetic --max_seq_len 64

The held-out pairs are the eval rows of step 2's `data_split` slice, i.e.
exactly what step 2 reports on.
"""
import argparse
import json
from typing import Any, Dict, Iterable, Optional, Sequence

import torch

from deepspeed import comm as dist
from dschat.utils import to_device

__all__ = ["evaluate_reward_model", "load_reward_model", "evaluate_saved_reward_model", "main"]


def evaluate_reward_model(model: Any, dataloader: Iterable, device: Any, eval_iters: int = 0) -> Dict[str, float]:
    """Pairwise accuracy and mean chosen/rejected scores of `model` (engine or `RewardModel`).

    Batches are DataCollatorReward batches (chosen rows first). At most
    `eval_iters` batches per rank when > 0. Every rank must call it; the
    numbers are averaged over ranks. The model is left in eval mode.
    """
    model.eval()
    correct = total = 0
    chosen_sum = rejected_sum = 0.0
    with torch.no_grad():
        for step, batch in enumerate(dataloader):
            if eval_iters > 0 and step >= eval_iters:
                break
            outputs = model(**to_device(batch, device))
            chosen, rejected = outputs["chosen_mean_scores"].float(), outputs["rejected_mean_scores"].float()
            correct += int((chosen > rejected).sum())
            total += chosen.shape[0]
            chosen_sum += float(chosen.sum())
            rejected_sum += float(rejected.sum())
    stats = torch.tensor([correct, total, chosen_sum, rejected_sum], dtype=torch.float32, device=device)
    if dist.is_initialized():
        dist.all_reduce(stats)
    count = max(float(stats[1]), 1.0)
    return {
        "accuracy": float(stats[0]) / count,
        "chosen_mean_score": float(stats[2]) / count,
        "rejected_mean_score": float(stats[3]) / count,
        "pairs": int(stats[1]),
    }


def load_reward_model(path: str, tokenizer: Any, num_padding_at_beginning: int = 0) -> torch.nn.Module:
    """A saved step-2 model with its trained head, loaded strictly."""
    from dschat.models.model_utils import create_critic_model
    return create_critic_model(path, tokenizer, None, num_padding_at_beginning=num_padding_at_beginning,
                               rlhf_training=True)


def evaluate_saved_reward_model(path: str, data_path: Sequence[str] = ("dschat/synthetic", ),
                                data_split: str = "2,4,4", max_seq_len: int = 512, batch_size: int = 16,
                                seed: int = 1234, data_output_path: str = "/tmp/data_files",
                                eval_iters: int = 0, num_padding_at_beginning: Optional[int] = None,
                                device: str = "cpu") -> Dict[str, float]:
    """Held-out accuracy and mean scores of the reward model saved at `path` (one process)."""
    from torch.utils.data import DataLoader, SequentialSampler

    from dschat.data.collators import DataCollatorReward
    from dschat.data.data_utils import create_prompt_dataset
    from dschat.data.tokenizer import count_padding_at_beginning, load_hf_tokenizer

    tokenizer = load_hf_tokenizer(path, fast_tokenizer=True)
    npad = count_padding_at_beginning(tokenizer) if num_padding_at_beginning is None else num_padding_at_beginning
    model = load_reward_model(path, tokenizer, npad).to(device)
    _, eval_dataset = create_prompt_dataset(-1, list(data_path), data_split, data_output_path, 2, seed, tokenizer,
                                            max_seq_len, end_of_conversation_token="<|endoftext|>")
    loader = DataLoader(eval_dataset, batch_size=batch_size, sampler=SequentialSampler(eval_dataset),
                        collate_fn=DataCollatorReward())
    return evaluate_reward_model(model, loader, device, eval_iters)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(prog="dschat.eval.reward_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", required=True, help="a step-2 output folder")
    parser.add_argument("--data_path", nargs="*", default=["dschat/synthetic"])
    parser.add_argument("--data_split", default="2,4,4")
    parser.add_argument("--data_output_path", default="/tmp/data_files")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--per_device_eval_batch_size", type=int, default=16)
    parser.add_argument("--eval_iters", type=int, default=0, help="at most this many batches (0: all)")
    parser.add_argument("--num_padding_at_beginning", type=int, default=None,
                        help="default: what the saved tokenizer does")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    result = evaluate_saved_reward_model(args.model_name_or_path, args.data_path, args.data_split, args.max_seq_len,
                                         args.per_device_eval_batch_size, args.seed, args.data_output_path,
                                         args.eval_iters, args.num_padding_at_beginning)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
