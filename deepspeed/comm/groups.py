"""Named process groups: data parallel (the world by default), hpZ
intra-node groups, inference tensor-parallel groups.

torch requires every rank to call `new_group` for every group, in the same
order, even for groups it is not in. `create_group` does exactly that and
keeps only the calling rank's own group, so callers never hand-roll the
loop. The registry is one small object instead of module globals, and
`reset()` empties it when the world is torn down.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch.distributed as dist

__all__ = [
    "DATA_PARALLEL",
    "create_group",
    "get_group",
    "get_group_ranks",
    "has_group",
    "reset",
    "get_data_parallel_group",
    "get_data_parallel_world_size",
    "get_data_parallel_rank",
]

#: Registry name of the data-parallel group; when absent the world is used.
DATA_PARALLEL = "data_parallel"


class _GroupRegistry:
    """This rank's named groups, plus the full layout each was built from."""

    def __init__(self) -> None:
        # name -> this rank's group (None when the rank is in no subgroup).
        self.groups: Dict[str, Optional[Any]] = {}
        # name -> every subgroup's ranks, used to spot conflicting re-creation.
        self.layouts: Dict[str, List[List[int]]] = {}
        # name -> the ranks of this rank's own subgroup.
        self.own_ranks: Dict[str, List[int]] = {}


_REGISTRY = _GroupRegistry()


def _validate_layout(name: str, ranks_per_group: Sequence[Sequence[int]]) -> List[List[int]]:
    world = dist.get_world_size()
    layout = [sorted(int(r) for r in ranks) for ranks in ranks_per_group]
    seen: set = set()
    for ranks in layout:
        if not ranks:
            raise ValueError(f"group {name!r}: empty rank list in {layout}")
        bad = [r for r in ranks if not 0 <= r < world]
        if bad:
            raise ValueError(f"group {name!r}: ranks {bad} outside world of size {world}")
        if seen.intersection(ranks):
            raise ValueError(f"group {name!r}: rank lists overlap in {layout}")
        seen.update(ranks)
    return layout


def create_group(name: str, ranks_per_group: Sequence[Sequence[int]]) -> Optional[Any]:
    """Create the disjoint subgroups `ranks_per_group` under `name`.

    Collective: every rank must call it with the same arguments. Returns the
    calling rank's group (None if it is in none). Calling again with the
    same layout returns the existing group; a different layout raises.
    """
    layout = _validate_layout(name, ranks_per_group)
    if name in _REGISTRY.layouts:
        if _REGISTRY.layouts[name] != layout:
            raise ValueError(f"group {name!r} already exists with layout {_REGISTRY.layouts[name]}, "
                             f"cannot re-create it as {layout}; call reset() first")
        return _REGISTRY.groups[name]
    me = dist.get_rank()
    own_group, own_ranks = None, []
    for ranks in layout:
        group = dist.new_group(ranks)
        if me in ranks:
            own_group, own_ranks = group, ranks
    _REGISTRY.groups[name] = own_group
    _REGISTRY.layouts[name] = layout
    _REGISTRY.own_ranks[name] = own_ranks
    return own_group


def has_group(name: str) -> bool:
    return name in _REGISTRY.groups


def get_group(name: str) -> Optional[Any]:
    """This rank's group registered under `name`."""
    if name not in _REGISTRY.groups:
        raise KeyError(f"no process group named {name!r}; known: {sorted(_REGISTRY.groups)}")
    return _REGISTRY.groups[name]


def get_group_ranks(name: str) -> List[int]:
    """Global ranks of this rank's own subgroup under `name`."""
    get_group(name)
    return list(_REGISTRY.own_ranks[name])


def reset() -> None:
    """Forget every named group (the caller destroys them, if needed)."""
    _REGISTRY.groups.clear()
    _REGISTRY.layouts.clear()
    _REGISTRY.own_ranks.clear()


def get_data_parallel_group(mpu: Optional[Any] = None) -> Any:
    """The data-parallel group: the mpu's if given, else the registered one,
    else the whole world."""
    if mpu is not None:
        return mpu.get_data_parallel_group()
    if DATA_PARALLEL in _REGISTRY.groups:
        return _REGISTRY.groups[DATA_PARALLEL]
    return dist.group.WORLD


def get_data_parallel_world_size(mpu: Optional[Any] = None) -> int:
    if mpu is not None:
        return mpu.get_data_parallel_world_size()
    return dist.get_world_size(group=get_data_parallel_group())


def get_data_parallel_rank(mpu: Optional[Any] = None) -> int:
    if mpu is not None:
        return mpu.get_data_parallel_rank()
    return dist.get_rank(group=get_data_parallel_group())
