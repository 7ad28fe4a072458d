"""DeepSpeed's private group accessors that HF transformers / TRL import.

They call `deepspeed.utils.groups._get_data_parallel_world_size()` and
friends directly, so these names must exist; each forwards to the registry
in `deepspeed.comm.groups`. Sequence parallelism is not implemented, so its
world size is 1 and its rank 0.
"""
from typing import Any

from deepspeed.comm import groups as _registry

__all__ = [
    "_get_data_parallel_group",
    "_get_data_parallel_world_size",
    "_get_data_parallel_rank",
    "_get_sequence_parallel_world_size",
    "_get_sequence_parallel_rank",
]


def _get_data_parallel_group() -> Any:
    return _registry.get_data_parallel_group()


def _get_data_parallel_world_size() -> int:
    return _registry.get_data_parallel_world_size()


def _get_data_parallel_rank() -> int:
    return _registry.get_data_parallel_rank()


def _get_sequence_parallel_world_size() -> int:
    return 1


def _get_sequence_parallel_rank() -> int:
    return 0
