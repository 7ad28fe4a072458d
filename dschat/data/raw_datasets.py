"""Raw preference datasets: one class per source, looked up by name.

The interface every source implements is `raw_base.PromptRawDataset`.

Sources, in lookup order (`get_raw_dataset`):
- `dschat/synthetic` (optionally `dschat/synthetic:<train rows>`): the
  embedded, generated set of `synthetic.py`;
- `local/jsonfile`: `./data/train.json` and `./data/eval.json` under the
  current directory, `{prompt, chosen, rejected}` records;
- a directory holding `train.json` (and optionally `eval.json`): the same
  format at that path;
- the named Hugging Face datasets of `hf_datasets.py` (a local
  `save_to_disk` folder, or the offline `datasets` cache).
"""
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .hf_datasets import get_hf_raw_dataset
from .raw_base import PromptRawDataset, RowView, cut_train_for_eval, file_fingerprint
from .synthetic import DEFAULT_EVAL_SIZE, DEFAULT_TRAIN_SIZE, SyntheticTasks

__all__ = [
    "SYNTHETIC_NAME", "PromptRawDataset", "RowView", "SyntheticDataset", "LocalJsonFileDataset", "get_raw_dataset",
    "cut_train_for_eval", "file_fingerprint"
]

SYNTHETIC_NAME = "dschat/synthetic"
_LOCAL_JSON_NAME = "local/jsonfile"


class SyntheticDataset(PromptRawDataset):
    """The embedded preference set; its fields are already rm-static formatted.

    `dschat/synthetic:<n>` uses `n` train rows and `max(n // 10, 1)` eval rows,
    e.g. for quick demos; the rows are a fresh draw, not a prefix.
    """

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name)
        _, _, size = dataset_name.partition(":")
        if size:
            try:
                train_size = int(size)
            except ValueError:
                raise ValueError(f"{dataset_name!r}: the size after ':' must be an integer") from None
            self.tasks = SyntheticTasks(train_size=train_size, eval_size=max(train_size // 10, 1))
        else:
            self.tasks = SyntheticTasks(train_size=DEFAULT_TRAIN_SIZE, eval_size=DEFAULT_EVAL_SIZE)
        self.train_rows, self.eval_rows = self.tasks.split()

    def fingerprint(self) -> str:
        return "synthetic:" + self.tasks.fingerprint()

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["prompt"]

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["chosen"]

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["rejected"]


def _read_json_rows(path: Path) -> List[Dict[str, Any]]:
    """A JSON array of records, or JSON lines (both as `datasets.load_dataset('json')` accepts)."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: neither a JSON array nor JSON lines: {err}") from err
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path}: expected a list of {{prompt, chosen, rejected}} records")
    return data


class LocalJsonFileDataset(PromptRawDataset):
    """`{prompt, chosen, rejected}` records from `train.json` / `eval.json`.

    The text is assembled as `" " + prompt` and `" " + answer` (DS-Chat's
    local/jsonfile template). Without `eval.json`, eval is a 9:1 cut of train.
    """

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str, data_dir: Path) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name)
        self.data_dir = Path(data_dir)
        train_file, eval_file = self.data_dir / "train.json", self.data_dir / "eval.json"
        if not train_file.is_file():
            raise FileNotFoundError(f"{dataset_name}: expected {train_file} (and optionally {eval_file}) holding "
                                    "{prompt, chosen, rejected} records")
        self.files = [train_file] + ([eval_file] if eval_file.is_file() else [])
        rows = _read_json_rows(train_file)
        if eval_file.is_file():
            self.train_rows, self.eval_rows = rows, _read_json_rows(eval_file)
        else:
            self.train_rows, self.eval_rows = cut_train_for_eval(rows, seed, 0), cut_train_for_eval(rows, seed, 1)

    def fingerprint(self) -> str:
        parts = [f"{f.name}:{file_fingerprint(f)}" for f in self.files]
        return "jsonfile:" + ",".join(parts)

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _prefixed(sample.get("prompt"))

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _prefixed(sample.get("chosen"))

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _prefixed(sample.get("rejected"))


def _prefixed(value: Any) -> Optional[str]:
    return None if value is None else " " + str(value)


def get_raw_dataset(dataset_name: str, output_path: str, seed: int, local_rank: int) -> PromptRawDataset:
    """The raw dataset for one `--data_path` entry (see the module docstring)."""
    if dataset_name == SYNTHETIC_NAME or dataset_name.startswith(SYNTHETIC_NAME + ":"):
        return SyntheticDataset(output_path, seed, local_rank, dataset_name)
    if dataset_name == _LOCAL_JSON_NAME:
        return LocalJsonFileDataset(output_path, seed, local_rank, dataset_name, Path(os.getcwd()) / "data")
    if os.path.isdir(dataset_name) and os.path.isfile(os.path.join(dataset_name, "train.json")):
        return LocalJsonFileDataset(output_path, seed, local_rank, dataset_name, Path(dataset_name))
    return get_hf_raw_dataset(dataset_name, output_path, seed, local_rank)
