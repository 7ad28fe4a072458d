"""The raw-dataset interface shared by every source (see `raw_datasets`).

Every source gives train/eval rows and per-row getters for the prompt, the
chosen and rejected answers and their concatenations, each already in the
source's prompt template. A getter returns None when a row cannot provide
that value; such rows are skipped. `fingerprint()` identifies the content
for the token cache, so a changed file never reuses stale tokens.
"""
import hashlib
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .splits import get_raw_dataset_split_index

__all__ = ["PromptRawDataset", "RowView", "cut_train_for_eval", "file_fingerprint"]


class RowView:
    """Rows `indices` of `rows`, without copying (DS-Chat used torch Subset)."""

    def __init__(self, rows: Sequence[Mapping[str, Any]], indices: Sequence[int]) -> None:
        self.rows, self.indices = rows, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        return self.rows[self.indices[i]]


def cut_train_for_eval(rows: Sequence[Mapping[str, Any]], seed: int, part: int) -> RowView:
    """A seeded 9:1 cut of a source that ships no eval split; part 0 trains, 1 evaluates."""
    return RowView(rows, get_raw_dataset_split_index(0, "", "", seed, "", "9,1", part, len(rows)))


def file_fingerprint(path: Path) -> str:
    """Content hash of a file (so a rewritten file with an old mtime still counts as changed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PromptRawDataset:
    """Base class: rows plus template-applying getters.

    Subclasses set `train_rows`/`eval_rows` and override the getters whose
    template differs. The default getters implement the `" Human: q
    Assistant:"` / `" " + answer` template used by most DS-Chat sources.
    """

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str) -> None:
        self.output_path, self.seed, self.local_rank = output_path, seed, local_rank
        self.dataset_name = dataset_name
        # File-name-safe name, as DS-Chat exposes it.
        self.dataset_name_clean = dataset_name.replace("/", "_").replace(":", "_")
        self.train_rows: Sequence[Mapping[str, Any]] = []
        self.eval_rows: Sequence[Mapping[str, Any]] = []

    def get_train_data(self) -> Sequence[Mapping[str, Any]]:
        return self.train_rows

    def get_eval_data(self) -> Sequence[Mapping[str, Any]]:
        return self.eval_rows

    def fingerprint(self) -> str:
        """Identity of the rows' content; subclasses must override."""
        raise NotImplementedError

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return None

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return None

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return None

    def get_prompt_and_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _join(self.get_prompt(sample), self.get_chosen(sample))

    def get_prompt_and_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _join(self.get_prompt(sample), self.get_rejected(sample))


def _join(prompt: Optional[str], answer: Optional[str]) -> Optional[str]:
    return None if prompt is None or answer is None else prompt + answer
