"""DS-Chat data: sources, `data_split`, phase datasets, collators, tokenizer.

Public names are re-exported here and resolved on first use, so importing
`dschat.data` does not pull in transformers or tokenizers until needed.
"""
import importlib
from typing import Any

__all__ = [
    "create_prompt_dataset", "PromptDataset", "DataCollatorReward", "DataCollatorRLHF", "MiniDataset",
    "get_unsupervised_data", "get_raw_dataset", "get_raw_dataset_split_index", "PromptRawDataset",
    "DEFAULT_DATA_SEED", "SYNTHETIC_NAME", "SyntheticTasks", "check_answer", "expected_answer",
    "write_jsonfile_dataset", "load_hf_tokenizer", "load_embedded_tokenizer", "tokenizer_fingerprint",
    "count_padding_at_beginning", "EMBEDDED_NAMES"
]

_HOME = {
    "create_prompt_dataset": "data_utils",
    "PromptDataset": "prompt_dataset",
    "DataCollatorReward": "collators",
    "DataCollatorRLHF": "collators",
    "MiniDataset": "collators",
    "get_unsupervised_data": "unsupervised",
    "get_raw_dataset": "raw_datasets",
    "PromptRawDataset": "raw_base",
    "SYNTHETIC_NAME": "raw_datasets",
    "get_raw_dataset_split_index": "splits",
    "DEFAULT_DATA_SEED": "splits",
    "SyntheticTasks": "synthetic",
    "check_answer": "synthetic",
    "expected_answer": "synthetic",
    "write_jsonfile_dataset": "synthetic",
    "load_hf_tokenizer": "tokenizer",
    "load_embedded_tokenizer": "tokenizer",
    "tokenizer_fingerprint": "tokenizer",
    "count_padding_at_beginning": "tokenizer",
    "EMBEDDED_NAMES": "tokenizer",
}


def __getattr__(name: str) -> Any:
    try:
        module = importlib.import_module(f"{__name__}.{_HOME[name]}")
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_HOME))
