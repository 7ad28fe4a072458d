"""`data_split`: which rows of a dataset each training phase uses.

DS-Chat trains its three steps on disjoint parts of one dataset: with
`--data_split 2,4,4`, step 1 gets the first 20% of a seeded permutation,
step 2 the next 40% and step 3 the last 40%. That only holds when all three
steps draw the *same* permutation, i.e. use the same seed; DS-Chat's step 3
defaulted to `seed=None` and so could overlap steps 1 and 2. Here a missing
seed resolves to `DEFAULT_DATA_SEED` (step 1/2's default) everywhere.

Indices are recomputed on every call (a permutation is cheap) rather than
cached in `.npy` files as DS-Chat did, so they can never go stale.
"""
import logging
from typing import List, Optional, Sequence, Union

import numpy as np

__all__ = [
    "DEFAULT_DATA_SEED", "resolve_seed", "parse_data_split", "split_boundaries", "get_shuffle_idx",
    "get_raw_dataset_split_index"
]

logger = logging.getLogger(__name__)

DEFAULT_DATA_SEED = 1234


def resolve_seed(seed: Optional[int]) -> int:
    """`seed`, or `DEFAULT_DATA_SEED` when None (the step-3 pitfall, fixed)."""
    if seed is None:
        logger.warning("data seed is None; using %d so this step's data_split rows stay disjoint from the "
                       "other steps'", DEFAULT_DATA_SEED)
        return DEFAULT_DATA_SEED
    return int(seed)


def parse_data_split(data_split: Union[str, Sequence[float]]) -> List[float]:
    """`"2,4,4"` -> normalised weights `[0.2, 0.4, 0.4]`."""
    parts = data_split.split(",") if isinstance(data_split, str) else list(data_split)
    try:
        weights = [float(p) for p in parts]
    except ValueError as err:
        raise ValueError(f"data_split must be comma-separated numbers like '2,4,4', got {data_split!r}") from err
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"data_split needs non-negative weights with a positive sum, got {data_split!r}")
    total = sum(weights)
    return [w / total for w in weights]


def split_boundaries(data_split: Union[str, Sequence[float]], data_size: int) -> List[int]:
    """Cumulative rounded boundaries: part i is `[b[i], b[i+1])`, `b[-1] == data_size`.

    Rounding the cumulative sums (not each part) keeps the parts contiguous
    and makes them cover exactly `data_size` rows.
    """
    weights = parse_data_split(data_split)
    bounds = [0]
    cumulative = 0.0
    for weight in weights:
        cumulative += weight
        bounds.append(int(round(cumulative * data_size)))
    bounds[-1] = data_size  # float round-off in the sum must not drop or add a row
    return bounds


def get_shuffle_idx(seed: int, size: int) -> np.ndarray:
    """The one seeded permutation every phase slices."""
    return np.random.RandomState(seed).permutation(size).astype(np.int64)


def get_raw_dataset_split_index(local_rank: int, output_path: str, dataset_name: str, seed: Optional[int],
                                split_name: str, data_split: Union[str, Sequence[float]], split_index: int,
                                data_size: int, rebuild: bool = False) -> List[int]:
    """Row indices of part `split_index` (0-based phase) of a dataset part.

    The signature is DS-Chat's, so scripts that call it keep working;
    `local_rank`, `output_path`, `dataset_name`, `split_name` and `rebuild`
    only named DS-Chat's `.npy` index cache, which this version does not
    need (see the module docstring).
    """
    del local_rank, output_path, dataset_name, split_name, rebuild
    bounds = split_boundaries(data_split, data_size)
    if not 0 <= split_index < len(bounds) - 1:
        raise ValueError(f"split index {split_index} is out of range for data_split {data_split!r} "
                         f"({len(bounds) - 1} parts)")
    order = get_shuffle_idx(resolve_seed(seed), data_size)
    return order[bounds[split_index]:bounds[split_index + 1]].tolist()
