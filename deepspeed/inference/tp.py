"""Tensor parallelism for generation: shard layer views by heads and MLP columns, and merge the TP group's batches.

[Note: inference TP]
Rank r of a TP group of size w keeps query heads [r*nq/w, (r+1)*nq/w) and
the matching kv heads (GQA groups never straddle ranks because nkv % w ==
0), the matching columns of the attention output, and 1/w of the MLP's
intermediate width (gate and up sharded alike). Each rank's partial
attention and MLP outputs are summed by an all-reduce; the output biases
live on TP rank 0 only, so they are added exactly once. Shards are
contiguous copies: under ZeRO-3 the gathered full tensors are released
right after sharding.

The LM head is sharded by vocabulary rows (`VocabShard`): rank r computes
logits [r*Vs, (r+1)*Vs) with Vs = ceil(V / w) (the last shard padded with
zero rows, whose logits are cut off), and an all-gather rebuilds the full
logits, the same values on every rank. Each logit is the same dot product
it is unsharded, so greedy tokens do not change.

The ranks of a TP group run one decode loop over the concatenation of
their batches (left-padded to the longest prompt, padded with empty rows
to the largest batch) and each takes its own rows back, so every rank's
output equals what it would have generated alone.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, List, Optional, Tuple

import torch

from deepspeed import comm as dist
from deepspeed.comm.shm import ShmGroup
from deepspeed.inference.containers.base import LayerView, NormSpec
from deepspeed.inference.decode import Segment

__all__ = ["TP_GROUP_NAME", "tp_layout", "shard_view", "TPBatch", "VocabShard"]

#: Registry name of the inference tensor-parallel group (deepspeed.comm.groups).
TP_GROUP_NAME = "inference_tp"


def tp_layout(world_size: int, tp_size: int) -> List[List[int]]:
    """Consecutive blocks of `tp_size` ranks."""
    if world_size % tp_size:
        raise ValueError(f"hybrid_engine.inference_tp_size={tp_size} must divide the world size {world_size}")
    return [list(range(s, s + tp_size)) for s in range(0, world_size, tp_size)]


def _rows(t: Optional[torch.Tensor], parts: List[Tuple[int, int]]) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return torch.cat([t[a:b] for a, b in parts])  # cat always allocates: the result is already a copy


def _copy_norm(n: NormSpec) -> NormSpec:
    clone = (lambda t: t.detach().clone() if t is not None else None)
    return NormSpec(n.kind, clone(n.weight), clone(n.bias), n.eps)


def shard_view(view: LayerView, rank: int, world: int, group) -> LayerView:
    """Rank `rank`'s shard of `view` (see the note at the top); every tensor is a fresh copy."""
    nq, nkv, hd = view.n_heads, view.n_kv_heads, view.head_dim
    if nq % world or nkv % world:
        raise ValueError(f"inference_tp_size={world} must divide the attention heads ({nq}) and kv heads ({nkv})")
    lq, lkv = nq // world, nkv // world
    if view.qkv_layout == "per_head":
        qkv = [(rank * lq * 3 * hd, (rank + 1) * lq * 3 * hd)]
    else:
        kv0 = nq * hd
        qkv = [(rank * lq * hd, (rank + 1) * lq * hd),
               (kv0 + rank * lkv * hd, kv0 + (rank + 1) * lkv * hd),
               (kv0 + nkv * hd + rank * lkv * hd, kv0 + nkv * hd + (rank + 1) * lkv * hd)]
    width = view.mlp_out_w.shape[1]
    if width % world:
        raise ValueError(f"inference_tp_size={world} must divide the MLP width {width}")
    lw = width // world
    mlp = [(rank * lw, (rank + 1) * lw)]
    if view.gated:
        mlp.append((width + rank * lw, width + (rank + 1) * lw))
    first = rank == 0
    cols = slice(rank * lq * hd, (rank + 1) * lq * hd)
    return replace(view,
                   qkv_w=_rows(view.qkv_w, qkv), qkv_b=_rows(view.qkv_b, qkv), n_heads=lq, n_kv_heads=lkv,
                   out_w=view.out_w[:, cols].contiguous(),
                   out_b=view.out_b.detach().clone() if first and view.out_b is not None else None,
                   mlp_in_w=_rows(view.mlp_in_w, mlp), mlp_in_b=_rows(view.mlp_in_b, mlp),
                   mlp_out_w=view.mlp_out_w[:, rank * lw:(rank + 1) * lw].contiguous(),
                   mlp_out_b=view.mlp_out_b.detach().clone() if first and view.mlp_out_b is not None else None,
                   attn_norm=_copy_norm(view.attn_norm), mlp_norm=_copy_norm(view.mlp_norm), reduce_group=group,
                   owned=[])


class VocabShard:
    """This rank's rows of the LM head, and the gather of everyone's logits (see the note at the top).

    `all_gather(out, inp)` fills out (world * n,) with every rank's inp (n,), rank-major.
    """

    def __init__(self, rank: int, world: int, all_gather: Callable[[torch.Tensor, torch.Tensor], None]) -> None:
        self.rank, self.world, self._all_gather = rank, world, all_gather

    def rows(self, vocab: int) -> int:
        return -(-vocab // self.world)

    def cut(self, weight: torch.Tensor,
            bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """weight (V, H), bias (V,) -> this rank's (Vs, H), (Vs,) copies, zero rows past V."""
        vocab, n = weight.shape[0], self.rows(weight.shape[0])
        start, end = min(self.rank * n, vocab), min((self.rank + 1) * n, vocab)
        w = weight.new_zeros((n, weight.shape[1]))
        w[:end - start] = weight[start:end]
        b = None
        if bias is not None:
            b = bias.new_zeros(n)
            b[:end - start] = bias[start:end]
        return w, b

    def gather(self, part: torch.Tensor, vocab: int) -> torch.Tensor:
        """part (B, Vs), this rank's logits -> (B, V), every rank's, in vocabulary order."""
        b, n = part.shape
        out = torch.empty(self.world * b * n, dtype=part.dtype, device=part.device)
        self._all_gather(out, part.contiguous().view(-1))
        return out.view(self.world, b, n).permute(1, 0, 2).reshape(b, self.world * n)[:, :vocab]


class TPBatch:
    """Concatenate the TP group's prompts, and take this rank's rows back out (see the note at the top).

    The per-step all-reduces and token broadcasts go through shared memory
    when the group's ranks share a host ([Note: shared-memory all-reduce] in
    deepspeed/comm/shm.py), else through the process group.
    """

    def __init__(self, group, ranks: List[int], shared_memory: bool = True) -> None:
        self.group = group
        self.ranks = ranks
        self.world = len(ranks)
        self.rank = dist.get_rank(group=group)
        #: the shared-memory all-reduce (CPU tensors), or None: `shared_memory=False` (GPU ranks), other hosts
        self.shm = ShmGroup.create(group, ranks, timeout=dist.get_collective_timeout()) if shared_memory else None

    def combine(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                pad_token_id: int) -> Tuple[torch.Tensor, torch.Tensor, List[Segment], torch.Tensor]:
        """-> ids, mask (world * Bmax, Pmax), one segment per rank, live-row flags."""
        b, p = input_ids.shape
        # Each rank's sampling seed comes from its own RNG, as if it generated alone.
        seed = int(torch.randint(0, 2**62, (1,)).item())
        meta = torch.tensor([b, p, max_new_tokens, seed], dtype=torch.long, device=input_ids.device)
        metas = [torch.zeros_like(meta) for _ in range(self.world)]
        dist.all_gather(metas, meta, group=self.group)
        self.metas = [tuple(int(x) for x in m.tolist()) for m in metas]
        bmax = max(m[0] for m in self.metas)
        pmax = max(m[1] for m in self.metas)
        ids = torch.full((bmax, pmax), pad_token_id, dtype=input_ids.dtype, device=input_ids.device)
        mask = torch.zeros((bmax, pmax), dtype=attention_mask.dtype, device=input_ids.device)
        ids[:b, pmax - p:] = input_ids
        mask[:b, pmax - p:] = attention_mask
        all_ids = [torch.empty_like(ids) for _ in range(self.world)]
        all_mask = [torch.empty_like(mask) for _ in range(self.world)]
        dist.all_gather(all_ids, ids, group=self.group)
        dist.all_gather(all_mask, mask, group=self.group)
        live = torch.zeros(bmax * self.world, dtype=torch.bool, device=input_ids.device)
        segments = []
        for r, (rb, _, rnew, rseed) in enumerate(self.metas):
            live[r * bmax:r * bmax + rb] = True
            segments.append(Segment(r * bmax, r * bmax + rb, rnew, seed=rseed))
        self._bmax, self._pmax = bmax, pmax
        return torch.cat(all_ids), torch.cat(all_mask), segments, live

    def split(self, tokens: torch.Tensor, segments: List[Segment]) -> torch.Tensor:
        """This rank's rows of `tokens`, without the extra left padding and the other ranks' extra steps."""
        b, p = self.metas[self.rank][:2]
        seg = segments[self.rank]
        start = self.rank * self._bmax
        return tokens[start:start + b, self._pmax - p:self._pmax + seg.steps].contiguous()

    def broadcast_tokens(self, tokens: torch.Tensor) -> None:
        """Every rank takes TP rank 0's tokens (B,) int64."""
        if self.shm is not None and self.shm.fits(tokens):
            # A sum in which only rank 0 contributes is its value, exactly (integers).
            if self.rank != 0:
                tokens.zero_()
            self.shm.all_reduce(tokens)
            return
        dist.broadcast(tokens, src=self.ranks[0], group=self.group)

    def vocab_shard(self) -> VocabShard:
        """This rank's share of the LM head, its logits gathered through shared memory or the group."""
        return VocabShard(self.rank, self.world, self.all_gather)

    def all_gather(self, out: torch.Tensor, inp: torch.Tensor) -> None:
        """out (world * n,) <- every rank's inp (n,), rank-major."""
        if self.shm is not None and inp.device.type == "cpu":
            self.shm.all_gather_into_tensor(out, inp)
            return
        dist.all_gather_into_tensor(out, inp, group=self.group)

    def all_reduce(self, t: torch.Tensor) -> None:
        if self.shm is not None and self.shm.fits(t):
            self.shm.all_reduce(t)
            return
        dist.all_reduce(t, group=self.group)
