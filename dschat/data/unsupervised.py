"""Unsupervised (language-modelling) data mixed into PPO with `unsup_coef`.

As in DS-Chat, every text is tokenized, all tokens are concatenated, and the
stream is cut into blocks of `max_prompt_seq_len + max_answer_seq_len`
tokens (the tail that does not fill a block is dropped); `labels` equal
`input_ids`.

Sources for `--unsupervised_dataset_name`, all offline:
- `dschat/synthetic`: the embedded set's prompt + chosen texts;
- a `.txt` file (one text per non-empty line) or a `.json`/`.jsonl` file of
  records (the `text` field, else each record's first field);
- a `save_to_disk` folder or a cached hub dataset, through `datasets`
  (the `text` column of the train split, else its first column).
"""
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from .hf_datasets import load_hf_dataset
from .raw_datasets import SYNTHETIC_NAME, SyntheticDataset

__all__ = ["UnsupervisedDataset", "get_unsupervised_data", "load_unsupervised_texts", "group_into_blocks"]


class UnsupervisedDataset(Dataset):
    """Fixed-length LM blocks; `blocks` is (N, block_size) int64."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, idx: int) -> Dict[str, torch.Tensor]:
        ids = self.blocks[idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _first_text_field(record: Any) -> Optional[str]:
    if isinstance(record, str):
        return record
    if isinstance(record, dict) and record:
        value = record.get("text", next(iter(record.values())))
        return value if isinstance(value, str) else None
    return None


def _file_texts(path: Path) -> List[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".txt":
        return [line for line in text.splitlines() if line.strip()]
    try:
        records = json.loads(text)
    except json.JSONDecodeError:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(records, list):
        records = [records]
    return [t for t in (_first_text_field(r) for r in records) if t]


def _column_texts(rows: Any) -> List[str]:
    names = getattr(rows, "column_names", None)
    if names:
        column = "text" if "text" in names else names[0]
        return [t for t in rows[column] if isinstance(t, str) and t]
    return [t for t in (_first_text_field(r) for r in rows) if t]


def load_unsupervised_texts(name: str, config_name: Optional[str] = None) -> List[str]:
    """The raw texts of an unsupervised source (see the module docstring)."""
    if name == SYNTHETIC_NAME or name.startswith(SYNTHETIC_NAME + ":"):
        raw = SyntheticDataset("", 0, -1, name)
        return [t for t in (raw.get_prompt_and_chosen(r) for r in raw.get_train_data()) if t]
    path = Path(name)
    if path.is_file():
        return _file_texts(path)
    splits = load_hf_dataset(name, config_name)
    return _column_texts(splits["train"])


def group_into_blocks(token_lists: List[List[int]], block_size: int) -> torch.Tensor:
    """Concatenate token lists and cut them into (N, block_size) blocks, dropping the remainder."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    flat = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.long)
    usable = (flat.numel() // block_size) * block_size
    return flat[:usable].view(-1, block_size)


def get_unsupervised_data(args: Any, tokenizer: PreTrainedTokenizerBase) -> UnsupervisedDataset:
    """DS-Chat's helper: reads `args.unsupervised_dataset_name`,
    `args.unsupervised_dataset_config_name`, `args.max_prompt_seq_len` and
    `args.max_answer_seq_len`."""
    texts = load_unsupervised_texts(args.unsupervised_dataset_name,
                                    getattr(args, "unsupervised_dataset_config_name", None))
    token_lists = tokenizer(texts)["input_ids"] if texts else []
    block_size = int(args.max_prompt_seq_len) + int(args.max_answer_seq_len)
    blocks = group_into_blocks(token_lists, block_size)
    if blocks.size(0) == 0:
        raise ValueError(f"unsupervised dataset {args.unsupervised_dataset_name!r} has fewer than {block_size} tokens, "
                         "not one block of max_prompt_seq_len + max_answer_seq_len")
    return UnsupervisedDataset(blocks)
