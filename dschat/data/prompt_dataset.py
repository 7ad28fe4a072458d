"""Tokenized phase datasets: `PromptDataset` and how its rows are made.

[Note: phase rows] What each DS-Chat phase trains on:
- phase 1 (SFT): `prompt + chosen + end_token`, truncated to `max_seq_len`,
  right-padded; `labels` are `input_ids` where the attention mask is 1 and
  -100 elsewhere. The mask, not the pad id, decides, because pad may equal
  EOS (DS-Chat's pad=EOS rule) and the real EOS must still be learned.
- phase 2 (reward): `prompt + chosen + end_token` and `prompt + rejected +
  end_token`, each truncated and right-padded to `max_seq_len`.
- phase 3 (PPO): the prompt alone; prompts longer than `max_seq_len` (the
  step's `max_prompt_seq_len`) are dropped, never truncated. Items are
  returned reversed, as DS-Chat stores them, and `DataCollatorRLHF` turns
  them into left-padded rows.

Sequences are stored unpadded in `RaggedTokens` (one flat id tensor plus
offsets) and padded per item, so the on-disk cache holds only real tokens
(DS-Chat's padded `.pt` caches grew huge, #841).
"""
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from .raw_base import PromptRawDataset

__all__ = ["RaggedTokens", "PromptDataset", "PhaseItem", "tokenize_phase_rows", "PHASE_FIELDS"]

# Ragged fields each phase stores.
PHASE_FIELDS = {1: ("chosen", ), 2: ("chosen", "rejected"), 3: ("prompt", )}
_TOKENIZE_CHUNK = 2048

# Phase 1: dict of (L,) tensors; phase 2: (chosen_ids, chosen_mask, rejected_ids,
# rejected_mask), each (L,); phase 3: (reversed prompt ids (P,), ones (P,), pad id).
PhaseItem = Union[Dict[str, torch.Tensor], Tuple[torch.Tensor, ...], Tuple[torch.Tensor, torch.Tensor, int]]


class RaggedTokens:
    """Variable-length token sequences: `ids` (total,) int32 holds them back to
    back and `offsets` (n+1,) int64 marks where each starts and ends."""

    def __init__(self, ids: torch.Tensor, offsets: torch.Tensor) -> None:
        self.ids, self.offsets = ids, offsets

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> "RaggedTokens":
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
        return cls(torch.from_numpy(flat), torch.from_numpy(offsets))

    @classmethod
    def concat(cls, parts: Sequence["RaggedTokens"]) -> "RaggedTokens":
        if not parts:
            return cls.from_lists([])
        offsets, base = [torch.zeros(1, dtype=torch.int64)], 0
        for part in parts:
            offsets.append(part.offsets[1:] + base)
            base += int(part.offsets[-1])
        return cls(torch.cat([p.ids for p in parts]), torch.cat(offsets))

    def select(self, indices: Sequence[int]) -> "RaggedTokens":
        return RaggedTokens.from_lists([self[i].tolist() for i in indices])

    def __len__(self) -> int:
        return self.offsets.numel() - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        """Sequence `i` as an int64 tensor of shape (len_i,)."""
        return self.ids[int(self.offsets[i]):int(self.offsets[i + 1])].long()

    def to_tensors(self, prefix: str) -> Dict[str, torch.Tensor]:
        return {f"{prefix}.ids": self.ids.contiguous(), f"{prefix}.offsets": self.offsets.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], prefix: str) -> "RaggedTokens":
        return cls(tensors[f"{prefix}.ids"], tensors[f"{prefix}.offsets"])


def _right_pad(seq: torch.Tensor, length: int, pad_id: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids (length,), mask (length,)) with `seq` first and padding after it."""
    ids = torch.full((length, ), pad_id, dtype=torch.long)
    mask = torch.zeros(length, dtype=torch.long)
    n = min(seq.numel(), length)
    ids[:n] = seq[:n]
    mask[:n] = 1
    return ids, mask


class PromptDataset(Dataset):
    """The tokenized rows of one phase and one part (train or eval).

    Items per phase are in [Note: phase rows]; they match what DS-Chat's
    collators and training loops consume.
    """

    def __init__(self, train_phase: int, pad_token_id: int, max_seq_len: int, fields: Mapping[str,
                                                                                                RaggedTokens]) -> None:
        if train_phase not in PHASE_FIELDS:
            raise ValueError(f"train_phase must be 1, 2 or 3, got {train_phase}")
        missing = [f for f in PHASE_FIELDS[train_phase] if f not in fields]
        if missing:
            raise ValueError(f"phase {train_phase} needs fields {missing}")
        self.train_phase, self.pad_token_id, self.max_seq_len = train_phase, int(pad_token_id), int(max_seq_len)
        self.fields = dict(fields)

    def __len__(self) -> int:
        return len(self.fields[PHASE_FIELDS[self.train_phase][0]])

    def __getitem__(self, idx: int) -> PhaseItem:
        if self.train_phase == 1:
            ids, mask = _right_pad(self.fields["chosen"][idx], self.max_seq_len, self.pad_token_id)
            return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
        if self.train_phase == 2:
            chosen_ids, chosen_mask = _right_pad(self.fields["chosen"][idx], self.max_seq_len, self.pad_token_id)
            rejected_ids, rejected_mask = _right_pad(self.fields["rejected"][idx], self.max_seq_len,
                                                     self.pad_token_id)
            return chosen_ids, chosen_mask, rejected_ids, rejected_mask
        prompt = self.fields["prompt"][idx].flip(0)
        return prompt, torch.ones_like(prompt), self.pad_token_id


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: List[str], max_len: Optional[int]) -> List[List[int]]:
    out: List[List[int]] = []
    kwargs = {"truncation": True, "max_length": max_len} if max_len is not None else {}
    for start in range(0, len(texts), _TOKENIZE_CHUNK):
        out.extend(tokenizer(texts[start:start + _TOKENIZE_CHUNK], **kwargs)["input_ids"])
    return out


def tokenize_phase_rows(raw: PromptRawDataset, rows: Sequence[Mapping], train_phase: int,
                        tokenizer: PreTrainedTokenizerBase, max_seq_len: int,
                        end_of_conversation_token: str) -> Dict[str, RaggedTokens]:
    """Token sequences of `rows` for `train_phase`, unpadded (see [Note: phase rows])."""
    samples = [rows[i] for i in range(len(rows))]
    if train_phase == 1:
        texts = [t for t in (raw.get_prompt_and_chosen(s) for s in samples) if t is not None]
        return {"chosen": RaggedTokens.from_lists(
            _tokenize(tokenizer, [t + end_of_conversation_token for t in texts], max_seq_len))}
    if train_phase == 2:
        pairs = [(c, r) for c, r in ((raw.get_prompt_and_chosen(s), raw.get_prompt_and_rejected(s)) for s in samples)
                 if c is not None and r is not None]
        chosen = _tokenize(tokenizer, [c + end_of_conversation_token for c, _ in pairs], max_seq_len)
        rejected = _tokenize(tokenizer, [r + end_of_conversation_token for _, r in pairs], max_seq_len)
        return {"chosen": RaggedTokens.from_lists(chosen), "rejected": RaggedTokens.from_lists(rejected)}
    if train_phase == 3:
        prompts = [p for p in (raw.get_prompt(s) for s in samples) if p is not None]
        kept = [ids for ids in _tokenize(tokenizer, prompts, None) if len(ids) <= max_seq_len]
        return {"prompt": RaggedTokens.from_lists(kept)}
    raise ValueError(f"train_phase must be 1, 2 or 3, got {train_phase}")
