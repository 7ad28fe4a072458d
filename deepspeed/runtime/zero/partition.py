"""Flat, bucketed, padded layout of a parameter group, shared by ZeRO stages 0-2.

[Note: bucket-interleaved partitioning]
A group's trainable parameters are laid out in order and cut into buckets of
about `bucket_numel` elements, always at parameter boundaries. Each bucket is
one contiguous 16-bit (or fp32) buffer, padded to a multiple of the shard
world size, and the parameters become views into it. Rank r owns the r-th
equal chunk of *every* bucket, so:

* a bucket's gradient is reduced with one `reduce_scatter` whose output is
  exactly this rank's chunk, and can be launched as soon as the bucket is
  complete;
* after the optimizer step, one `all_gather_into_tensor` per bucket writes the
  updated chunks straight into the parameters' storage;
* the rank's fp32 master partition is the concatenation of its chunks, so its
  size is `sum(padded_bucket_numel) / shard_world` on every rank (gloo needs
  equal sizes).

Padding elements hold zeros in parameters and gradients, so they never change
norms or updates.
"""
from dataclasses import dataclass, field
from typing import List, Sequence

import torch

__all__ = ["Bucket", "FlatLayout"]


@dataclass
class Bucket:
    """One contiguous communication unit."""

    params: List[torch.nn.Parameter]
    #: offset of each parameter inside the bucket buffer
    offsets: List[int]
    #: elements actually used by parameters
    numel: int
    #: `numel` rounded up to a multiple of the shard world size
    padded_numel: int
    #: elements of this bucket owned by each rank
    chunk_numel: int
    #: offset of this bucket's chunk inside the rank's master partition
    partition_offset: int
    #: the bucket's storage; parameters are views into it
    buffer: torch.Tensor = field(repr=False)

    def chunk(self, rank: int) -> torch.Tensor:
        """View of `rank`'s chunk in the bucket storage."""
        return self.buffer.narrow(0, rank * self.chunk_numel, self.chunk_numel)


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


class FlatLayout:
    """Owns the bucket buffers of one parameter group and the param views into them."""

    def __init__(self, params: Sequence[torch.nn.Parameter], bucket_numel: int, shard_world: int,
                 align: int = 1) -> None:
        if shard_world < 1:
            raise ValueError(f"shard_world must be >= 1, got {shard_world}")
        self.shard_world = shard_world
        self.params = list(params)
        self.buckets: List[Bucket] = []
        # Chunks are aligned so that SIMD kernels and collectives see aligned
        # starts; `align` is in elements.
        multiple = shard_world * max(1, align)
        groups = self._split(self.params, max(1, int(bucket_numel)))
        partition_offset = 0
        for group in groups:
            offsets, n = [], 0
            for p in group:
                offsets.append(n)
                n += p.numel()
            padded = _round_up(max(n, 1), multiple)
            dtype, device = group[0].dtype, group[0].device
            buffer = torch.zeros(padded, dtype=dtype, device=device)
            for p, off in zip(group, offsets):
                buffer.narrow(0, off, p.numel()).copy_(p.data.reshape(-1))
                p.data = buffer.narrow(0, off, p.numel()).view_as(p)
            chunk = padded // shard_world
            self.buckets.append(Bucket(group, offsets, n, padded, chunk, partition_offset, buffer))
            partition_offset += chunk
        #: size of this rank's master partition (identical on every rank)
        self.partition_numel = partition_offset

    @staticmethod
    def _split(params: Sequence[torch.nn.Parameter], bucket_numel: int) -> List[List[torch.nn.Parameter]]:
        groups: List[List[torch.nn.Parameter]] = []
        current: List[torch.nn.Parameter] = []
        size = 0
        for p in params:
            # A bucket holds one dtype/device so it can be one tensor.
            if current and (size + p.numel() > bucket_numel or p.dtype != current[0].dtype
                            or p.device != current[0].device):
                groups.append(current)
                current, size = [], 0
            current.append(p)
            size += p.numel()
        if current:
            groups.append(current)
        return groups

    def gather_local_chunks(self, rank: int) -> torch.Tensor:
        """Concatenate this rank's chunks of every bucket: the partition, in the model dtype."""
        return torch.cat([b.chunk(rank) for b in self.buckets]) if self.buckets else torch.empty(0)

    def flat_grad(self, bucket: Bucket, dtype: torch.dtype) -> torch.Tensor:
        """Gradients of `bucket`'s parameters as one padded tensor (missing grads count as zero).

        Returns: shape (bucket.padded_numel,)
        """
        device = bucket.buffer.device
        pieces = [p.grad.reshape(-1).to(dtype) if p.grad is not None else torch.zeros(p.numel(), dtype=dtype,
                                                                                       device=device)
                  for p in bucket.params]
        pad = bucket.padded_numel - bucket.numel
        if pad:
            pieces.append(torch.zeros(pad, dtype=dtype, device=device))
        # one pass over the gradient bytes (no zero-fill of the whole bucket first)
        return torch.cat(pieces)
