"""DS-Chat's data entry point: `create_prompt_dataset` and friends.

This module keeps DS-Chat's import surface (`create_prompt_dataset`,
`PromptDataset`, the collators, `MiniDataset`, `get_unsupervised_data`,
`get_raw_dataset_split_index`), each defined in the module that owns its
concept and re-exported here.

How a phase's dataset is made, per `--data_path` entry:
1. the raw source's train and eval rows are each cut by `data_split` with
   one seeded permutation, and the phase takes its slice (`splits.py`), so
   steps 1, 2 and 3 with the same seed never share a row;
2. the slice is tokenized for the phase ([Note: phase rows]);
3. several sources (and, in phase 1, the `sft_only_data_path` sources, which
   use all their rows) are concatenated and shuffled with the same seed.
The result is cached under `output_path` ([Note: dataset cache]).
"""
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from transformers import PreTrainedTokenizerBase

from .cache import build_once, cache_key, cache_path, load_tensors, save_tensors_atomic
from .collators import DataCollatorReward, DataCollatorRLHF, MiniDataset
from .prompt_dataset import PHASE_FIELDS, PromptDataset, RaggedTokens, tokenize_phase_rows
from .raw_datasets import PromptRawDataset, get_raw_dataset
from .splits import get_raw_dataset_split_index, get_shuffle_idx, resolve_seed
from .tokenizer import tokenizer_fingerprint
from .unsupervised import get_unsupervised_data

__all__ = [
    "create_prompt_dataset", "PromptDataset", "DataCollatorReward", "DataCollatorRLHF", "MiniDataset",
    "get_unsupervised_data", "get_raw_dataset", "get_raw_dataset_split_index"
]

logger = logging.getLogger(__name__)

_SFT_ONLY_SPLIT = "10,0,0"
_PARTS = ("train", "eval")


def _phase_slice(raw: PromptRawDataset, part: str, data_split: str, train_phase: int, seed: int,
                 tokenizer: PreTrainedTokenizerBase, max_seq_len: int, end_token: str) -> Dict[str, RaggedTokens]:
    rows = raw.get_train_data() if part == "train" else raw.get_eval_data()
    index = get_raw_dataset_split_index(-1, "", raw.dataset_name_clean, seed, part, data_split, train_phase - 1,
                                        len(rows))
    picked = [rows[i] for i in index]
    return tokenize_phase_rows(raw, picked, train_phase, tokenizer, max_seq_len, end_token)


def _blend(pieces: List[Dict[str, RaggedTokens]], train_phase: int, seed: int) -> Dict[str, RaggedTokens]:
    fields = {name: RaggedTokens.concat([p[name] for p in pieces]) for name in PHASE_FIELDS[train_phase]}
    if len(pieces) > 1:
        order = get_shuffle_idx(seed, len(fields[PHASE_FIELDS[train_phase][0]])).tolist()
        fields = {name: ragged.select(order) for name, ragged in fields.items()}
    return fields


def _as_list(value: Union[str, Sequence[str], None]) -> List[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def create_prompt_dataset(local_rank: int, data_path: Union[str, Sequence[str]], data_split: str, output_path: str,
                          train_phase: int, seed: Optional[int], tokenizer: PreTrainedTokenizerBase, max_seq_len: int,
                          end_of_conversation_token: str = "<|endoftext|>",
                          sft_only_data_path: Sequence[str] = (), reload: bool = False) -> Tuple[PromptDataset,
                                                                                                    PromptDataset]:
    """The (train, eval) `PromptDataset`s of `train_phase` (1, 2 or 3).

    `seed=None` means `DEFAULT_DATA_SEED` (1234), the same as steps 1 and 2,
    so step 3's slice stays disjoint from theirs. `reload=True` rebuilds the
    cache even when a valid one exists (it is never needed for freshness).
    Raises ValueError when the phase's train slice comes out empty.
    """
    if train_phase not in PHASE_FIELDS:
        raise ValueError(f"train_phase must be 1, 2 or 3, got {train_phase}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load it with dschat.data.load_hf_tokenizer, which sets one")
    seed = resolve_seed(seed)
    paths = _as_list(data_path)
    if not paths:
        raise ValueError("data_path is empty")
    sft_paths = _as_list(sft_only_data_path) if train_phase == 1 else []
    os.makedirs(output_path, exist_ok=True)
    sources = [get_raw_dataset(p, output_path, seed, local_rank) for p in paths]
    sft_sources = [get_raw_dataset(p, output_path, seed, local_rank) for p in sft_paths]
    key = cache_key({
        "sources": [(p, s.fingerprint()) for p, s in zip(paths, sources)],
        "sft_only": [(p, s.fingerprint()) for p, s in zip(sft_paths, sft_sources)],
        "data_split": data_split, "train_phase": train_phase, "seed": seed,
        "tokenizer": tokenizer_fingerprint(tokenizer), "max_seq_len": max_seq_len,
        "end_of_conversation_token": end_of_conversation_token,
    })
    path = cache_path(output_path, train_phase, key)

    def build() -> None:
        tensors: Dict[str, Any] = {}
        for part in _PARTS:
            pieces = [_phase_slice(s, part, data_split, train_phase, seed, tokenizer, max_seq_len,
                                   end_of_conversation_token) for s in sources]
            pieces += [_phase_slice(s, part, _SFT_ONLY_SPLIT, 1, seed, tokenizer, max_seq_len,
                                    end_of_conversation_token) for s in sft_sources]
            for name, ragged in _blend(pieces, train_phase, seed).items():
                tensors.update(ragged.to_tensors(f"{part}.{name}"))
        save_tensors_atomic(path, tensors, key, {"train_phase": str(train_phase), "data_path": ",".join(paths)})
        logger.info("wrote dataset cache %s", path)

    build_once(path, key, build, local_rank, reload)
    tensors, _ = load_tensors(path, key)
    datasets = []
    for part in _PARTS:
        fields = {name: RaggedTokens.from_tensors(tensors, f"{part}.{name}") for name in PHASE_FIELDS[train_phase]}
        datasets.append(PromptDataset(train_phase, tokenizer.pad_token_id, max_seq_len, fields))
    if len(datasets[0]) == 0:
        raise ValueError(f"data_split {data_split!r} leaves phase {train_phase} no training rows from {paths} "
                         f"(with max_seq_len={max_seq_len}, phase 3 also drops longer prompts)")
    return datasets[0], datasets[1]
