"""Batch collators for phases 2 and 3, and the PPO experience buffer.

Phase 1 batches need no collator of their own: its items are equal-length
dicts, which `transformers.default_data_collator` (or torch's default
collate) stacks.
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

__all__ = ["DataCollatorReward", "DataCollatorRLHF", "MiniDataset"]


class DataCollatorReward:
    """Phase-2 pairs -> `input_ids`/`attention_mask` of shape (2B, L).

    Rows 0..B-1 are the chosen answers and rows B..2B-1 the rejected ones, in
    the same order, which is the layout `RewardModel.forward` splits in half.
    """

    def __call__(self, data: Sequence[Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]) -> Dict[str,
                                                                                                              torch.Tensor]:
        return {
            "input_ids": _rows([f[0] for f in data] + [f[2] for f in data]),
            "attention_mask": _rows([f[1] for f in data] + [f[3] for f in data]),
        }


def _rows(tensors: List[torch.Tensor]) -> torch.Tensor:
    """Stack (L,) items, or concatenate DS-Chat-style (1, L) ones, into (N, L)."""
    return torch.cat(tensors, dim=0) if tensors[0].dim() == 2 else torch.stack(tensors, dim=0)


class DataCollatorRLHF:
    """Phase-3 prompts -> left-padded `prompt`/`prompt_att_mask` of shape (B, max_token_len).

    Items arrive reversed (see `PromptDataset`); right-padding the reversed
    ids and flipping the batch back yields left padding, so every prompt ends
    at the last column, where generation continues it.

    Args:
        max_token_len: the step's `max_prompt_seq_len`; every batch is padded
            to it so all ranks generate from the same shape.
        inference_tp_size: kept for DS-Chat's signature; padding does not
            depend on it.
    """

    def __init__(self, max_token_len: int, inference_tp_size: int = 1) -> None:
        self.max_token_len = max_token_len
        self.inference_tp_size = inference_tp_size

    def __call__(self, data: Sequence[Tuple[torch.Tensor, torch.Tensor, int]]) -> Dict[str, torch.Tensor]:
        pad_token_id = data[-1][-1]
        prompt = pad_sequence([f[0] for f in data], padding_value=pad_token_id, batch_first=True)
        mask = pad_sequence([f[1] for f in data], padding_value=0, batch_first=True)
        extra = self.max_token_len - prompt.size(-1)
        if extra < 0:
            raise ValueError(f"a prompt of {prompt.size(-1)} tokens exceeds max_token_len={self.max_token_len}; "
                             "phase-3 datasets drop such prompts, so this batch came from elsewhere")
        if extra > 0:
            prompt = F.pad(prompt, (0, extra), value=pad_token_id)
            mask = F.pad(mask, (0, extra), value=0)
        return {"prompt": prompt.flip(1), "prompt_att_mask": mask.flip(1)}


class MiniDataset:
    """Buffers `max_size` large batches, then hands them back as micro-batches.

    PPO generates `generation_batches` batches of experience before training;
    `add` returns None until the buffer is full, then the list of micro-
    batches of size `small_batch_size` cut from every buffered batch (lists,
    tuples and dicts of tensors are sliced element-wise), and empties itself.
    """

    def __init__(self, max_size: int, small_batch_size: int) -> None:
        if max_size < 1 or small_batch_size < 1:
            raise ValueError(f"max_size and small_batch_size must be >= 1, got {max_size}, {small_batch_size}")
        self.dataset: List[Any] = []
        self.max_size = max_size
        self.small_batch_size = small_batch_size

    def separate(self) -> List[Any]:
        """Cut every buffered batch into micro-batches and clear the buffer."""
        small: List[Any] = []
        for large in self.dataset:
            if isinstance(large, (list, tuple)):
                size = len(large[0])
            elif isinstance(large, dict):
                size = len(next(iter(large.values())))
            else:
                size = len(large)
            for i in range(0, size, self.small_batch_size):
                end = i + self.small_batch_size
                if isinstance(large, (list, tuple)):
                    small.append([x[i:end] for x in large])
                elif isinstance(large, dict):
                    small.append({k: v[i:end] for k, v in large.items()})
                else:
                    small.append(large[i:end])
        self.free()
        return small

    # DS-Chat's spelling, for scripts that call it directly.
    seperate = separate

    def add(self, data: Any) -> Optional[List[Any]]:
        if len(self.dataset) >= self.max_size:
            raise ValueError("MiniDataset is full; its micro-batches were not taken")
        self.dataset.append(data)
        return self.separate() if len(self.dataset) == self.max_size else None

    def free(self) -> None:
        self.dataset = []
