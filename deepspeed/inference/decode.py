"""The KV-cache decode loop over container views.

One call = one prefill over the (left-padded) prompts, then one step per
new token. Per layer and step: one fused qkv matmul, rotary, an in-place
append into a preallocated K/V cache, `scaled_dot_product_attention` over a
view of the cache, the output projection and the MLP. Nothing of full
sequence length is allocated per step: the cache, the token buffer and the
key-validity mask are allocated once per call (the cache once per engine,
unless it must grow) and sliced. On CPU, the fp32 decode steps' products of
the static layers and the LM head run through the skinny C++ kernel, or on
weights MKL-packed for the call's row count, and their attention through a
C++ kernel that reads the caches in place ([Note: decode weight packing]
in kernels.py); the prefill uses F.linear and SDPA.

Semantics follow HF `generate` so greedy output matches it token for token:
positions are `cumsum(attention_mask) - 1`, each new token's position is the
previous one + 1, its mask entry is 1; finished rows (EOS seen) get
`pad_token_id`; the loop stops when every row has finished or the length
limit is reached. `segments` lets several callers' batches (tensor
parallelism concatenates the TP group's batches) stop independently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from deepspeed.inference.containers.base import LayerView, ModelPolicy
from deepspeed.inference.graph import GraphedStep
from deepspeed.inference.kernels import (DECODE_PRODUCTS, SKINNY_MAX_ROWS, InferenceKernels, PackedWeight,
                                         SkinnyWeight, decode_products, linear, packing_possible,
                                         skinny_linear_op)

__all__ = ["GenerationParams", "KVWorkspace", "StaticLayers", "DecodeLoop", "Segment", "process_logits"]


@dataclass
class GenerationParams:
    """The resolved HF generate arguments the decode path implements."""

    max_new_tokens: int
    eos_token_ids: Tuple[int, ...]
    pad_token_id: int
    do_sample: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0


@dataclass
class Segment:
    """Rows [start, end) of the batch that stop together, after at most `max_new_tokens` steps."""

    start: int
    end: int
    max_new_tokens: int
    steps: int = 0
    done: bool = False
    #: seed of this segment's sampling generator (drawn from its owner's global RNG)
    seed: int = 0


class KVWorkspace:
    """Per-layer K and V caches, (batch, kv_heads, length, head_dim), kept across calls and grown on demand."""

    def __init__(self) -> None:
        self.k: List[torch.Tensor] = []
        self.v: List[torch.Tensor] = []
        self._key: Optional[tuple] = None
        self._capacity = (0, 0)

    def reserve(self, n_layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype: torch.dtype,
                device: torch.device) -> None:
        key = (n_layers, kv_heads, head_dim, dtype, device)
        if key == self._key and batch <= self._capacity[0] and length <= self._capacity[1]:
            return
        self.release()
        shape = (batch, kv_heads, length, head_dim)
        # Zeros, not empty: fixed-shape steps attend over unwritten slots (masked), and a masked
        # NaN would still poison the weighted sum (0 * NaN).
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self._key, self._capacity = key, (batch, length)

    def release(self) -> None:
        self.k, self.v, self._key, self._capacity = [], [], None, (0, 0)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class StaticLayers:
    """Views built once for the whole call (pinned parameters, or TP shards)."""

    def __init__(self, views: Sequence[LayerView]) -> None:
        self.views = list(views)

    def __len__(self) -> int:
        return len(self.views)

    def iterate(self) -> Iterator[List[Tuple[int, LayerView]]]:
        yield list(enumerate(self.views))

    def participate(self) -> None:
        """Nothing collective happens per step."""

    def with_products(self, weight: Callable[[torch.Tensor], object]) -> "StaticLayers":
        """The same layers carrying `weight(w)` (a kernels.PackedWeight or SkinnyWeight) for each matrix."""
        return StaticLayers([v.with_packed(weight) for v in self.views])

    @property
    def meta(self) -> Tuple[int, int, torch.dtype]:
        """(kv heads, head dim, dtype) of the cache."""
        v = self.views[0]
        return v.n_kv_heads, v.head_dim, v.qkv_w.dtype


def process_logits(scores: torch.Tensor, params: GenerationParams) -> torch.Tensor:
    """HF's sampling warpers in HF's order: temperature, top-k, top-p. scores (B, V) fp32."""
    if params.temperature is not None and params.temperature != 1.0:
        scores = scores / params.temperature
    if params.top_k is not None and params.top_k > 0:
        k = min(params.top_k, scores.shape[-1])
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - params.top_p)
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        scores = scores.masked_fill(remove, -float("inf"))
    return scores


class DecodeLoop:
    """Runs prefill + decode steps of one model over its layer views (see the module docstring).

    `layers` yields the views group by group (`StaticLayers`, or the ZeRO-3
    per-group gatherer of the hybrid engine). `reduce` all-reduces partial
    outputs under tensor parallelism; `sync_tokens` makes every TP rank use
    the same sampled tokens; `any_running` keeps data-parallel ranks in
    lock-step when the layers gather collectively on every step.

    `kernels` supplies norms, rotary and bias+activation (the CUDA op on
    CUDA tensors, the torch references otherwise). With `fixed_shape_steps`
    every decode step has the same shapes: the new K/V go in with an
    index_copy_ at a device-side position and attention covers the call's
    whole cache under a mask, so on CUDA the step is captured once per call
    in a CUDA graph and replayed (graph.py); on CPU it runs eagerly, which
    is how the tests check it against the variable-shape path.

    `products` says how the decode steps' products of static layers and
    the LM head run ([Note: decode weight packing] in kernels.py): "auto"
    decides per call (`decode_products`), "skinny" uses the C++ kernel,
    "packed" MKL-packed copies, "plain" F.linear. A choice the call's
    device, dtype or row count rules out falls back to "plain".
    """

    def __init__(self, policy: ModelPolicy, layers, workspace: KVWorkspace,
                 reduce: Optional[Callable[[torch.Tensor], None]] = None,
                 sync_tokens: Optional[Callable[[torch.Tensor], None]] = None,
                 any_running: Optional[Callable[[bool], bool]] = None,
                 kernels: Optional[InferenceKernels] = None, cache_tokens: int = 0,
                 fixed_shape_steps: bool = False, products: str = "auto", vocab_shard: Optional[Any] = None) -> None:
        if products != "auto" and products not in DECODE_PRODUCTS:
            raise ValueError(f"products={products!r}: expected 'auto' or one of {DECODE_PRODUCTS}")
        self.policy = policy
        self.layers = layers
        self.products = products
        self.vocab_shard = vocab_shard
        #: this call's layers (carrying Packed/SkinnyWeights, or the originals), and its LM head:
        #: (weight (V', H), bias or None, Packed/SkinnyWeight or None), V' = V or this rank's rows
        self._call_layers = layers
        self._head: Optional[Tuple[torch.Tensor, Optional[torch.Tensor], Optional[object]]] = None
        self.ws = workspace
        self.reduce = reduce
        self.sync_tokens = sync_tokens
        self.any_running = any_running
        self.kernels = kernels if kernels is not None else InferenceKernels(None)
        self.cache_tokens = cache_tokens
        if fixed_shape_steps and (reduce is not None or any_running is not None):
            raise ValueError("fixed-shape (CUDA graph) decode steps need static layers without collectives")
        self.fixed_shape_steps = fixed_shape_steps
        self._rot: Optional[Tuple[torch.Tensor, torch.Tensor]] = None
        #: the cpu_inference op when this call's decode steps attend through its kernel, else None
        self._step_attention: Optional[Any] = None

    # ------------------------------------------------------------ one layer
    def _attention(self, view: LayerView, idx: int, h: torch.Tensor, start, mask: torch.Tensor,
                   cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> torch.Tensor:
        """h (B, S, H) -> attention output (B, S, H). `start` is the cache slot of h's first token:
        an int, or a (1,) device tensor for a fixed-shape step, which then attends over the
        first `mask.shape[-1]` slots."""
        b, s, _ = h.shape
        q, k, v = view.split_qkv(self._linear(view, "qkv", h))
        if view.q_scale is not None:
            q = q * view.q_scale
        if view.rotary_dims:
            q, k = self.kernels.rotary(q, k, cos, sin, view.rotary_dims)
        kc, vc = self.ws.k[idx], self.ws.v[idx]
        if isinstance(start, torch.Tensor):
            end = mask.shape[-1]
            kc[:b].index_copy_(2, start, k)
            vc[:b].index_copy_(2, start, v)
        else:
            end = start + s
            kc[:b, :, start:end].copy_(k)
            vc[:b, :, start:end].copy_(v)
        keys, values = kc[:b, :, :end], vc[:b, :, :end]
        nq, nkv, hd = view.n_heads, view.n_kv_heads, view.head_dim
        if s == 1:
            # Each kv head serves nq/nkv query heads: fold them into the query length.
            q = q.reshape(b, nkv, nq // nkv, hd)
            if self._step_attention is not None and not isinstance(start, torch.Tensor):
                # The C++ kernel reads the caches in place; mask (B, 1, 1, end) is a view of the call's
                # (B, total) key-validity rows ([Note: decode weight packing] in kernels.py says when).
                out = self._step_attention.decode_attention(q.contiguous(), kc, vc, mask[:, 0, 0, :], end,
                                                            float(view.attn_scale))
            else:
                out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=view.attn_scale)
            return self._linear(view, "out", out.reshape(b, 1, nq * hd))
        if nq != nkv:
            keys = keys.repeat_interleave(nq // nkv, dim=1)
            values = values.repeat_interleave(nq // nkv, dim=1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=view.attn_scale)
        return self._linear(view, "out", out.transpose(1, 2).reshape(b, s, nq * hd))

    @staticmethod
    def _linear(view: LayerView, role: str, x: torch.Tensor) -> torch.Tensor:
        """The view's `role` linear layer (LINEAR_ROLES) applied to x (..., in)."""
        return linear(x, getattr(view, role + "_w"), getattr(view, role + "_b"), view.packed.get(role))

    def _mlp(self, view: LayerView, h: torch.Tensor) -> torch.Tensor:
        if view.gated:
            gate, up = self._linear(view, "mlp_in", h).chunk(2, dim=-1)
            u = view.act(gate) * up
        elif view.act_name and self.kernels.fuses(h, view.mlp_in_b):
            # The bias add and activation run as one kernel over the matmul's output.
            u = self.kernels.bias_act(F.linear(h, view.mlp_in_w), view.mlp_in_b, view.act_name)
        else:
            u = view.act(self._linear(view, "mlp_in", h))
        return self._linear(view, "mlp_out", u)

    def _norm(self, spec, x: torch.Tensor) -> torch.Tensor:
        return self.kernels.norm(spec, x)

    def _reduce(self, t: torch.Tensor, view: LayerView) -> torch.Tensor:
        if view.reduce_group is not None and self.reduce is not None:
            self.reduce(t)
        return t

    def _layer(self, view: LayerView, idx: int, x: torch.Tensor, start: int, mask: torch.Tensor,
               cos: Optional[torch.Tensor], sin: Optional[torch.Tensor]) -> torch.Tensor:
        if view.residual == "post":
            x = x + self._reduce(self._attention(view, idx, x, start, mask, cos, sin), view)
            x = self._norm(view.attn_norm, x)
            return self._norm(view.mlp_norm, x + self._reduce(self._mlp(view, x), view))
        attn = self._attention(view, idx, self._norm(view.attn_norm, x), start, mask, cos, sin)
        if view.residual == "parallel":
            if view.reduce_group is None:
                return self._mlp(view, self._norm(view.mlp_norm, x)) + attn + x
            return self._reduce(attn + self._mlp(view, self._norm(view.mlp_norm, x)), view) + x
        x = x + self._reduce(attn, view)
        return x + self._reduce(self._mlp(view, self._norm(view.mlp_norm, x)), view)

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, start, mask: torch.Tensor) -> torch.Tensor:
        """ids, positions (B, S) -> logits of the last position (B, V), fp32; `start` as in `_attention`."""
        x = self.policy.embed(ids, positions)
        cos = sin = None
        if self._rot is not None:
            cos, sin = self._rot[0][positions].unsqueeze(1), self._rot[1][positions].unsqueeze(1)
        for group in self._call_layers.iterate():
            for idx, view in group:
                x = self._layer(view, idx, x, start, mask, cos, sin)
        w, b, packed = self._head if self._head is not None else (*self._head_weights(), None)
        logits = linear(self.policy.final_hidden(x[:, -1]), w, b, packed)
        if self.vocab_shard is not None:
            logits = self.vocab_shard.gather(logits, self.policy.lm_head()[0].shape[0])
        return logits.float()

    def _head_weights(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The LM head's (weight, bias), or this rank's rows of them under a vocab shard (copies)."""
        w, b = self.policy.lm_head()
        return self.vocab_shard.cut(w, b) if self.vocab_shard is not None else (w, b)

    def _plan_products(self, rows: int, steps: int, device: torch.device, dtype: torch.dtype) -> str:
        """Pick this call's layers and LM head (see `products` in the class docstring); -> the choice."""
        choice = decode_products(device, dtype, rows, steps) if self.products == "auto" else self.products
        op = skinny_linear_op() if choice == "skinny" else None
        if choice == "skinny" and (op is None or rows > SKINNY_MAX_ROWS or device.type != "cpu"
                                   or dtype != torch.float32):
            choice = "plain"
        if choice == "packed" and not packing_possible(device, dtype):
            choice = "plain"
        # The attention kernel comes with the skinny products (CPU, fp32, the op built), whatever the layers.
        self._step_attention = op if choice == "skinny" else None
        head_w, head_b = self._head_weights()
        if choice == "plain" or not isinstance(self.layers, StaticLayers):
            self._call_layers, self._head = self.layers, (head_w, head_b, None)
            return "plain"
        make = (lambda w: SkinnyWeight(w, rows, op)) if choice == "skinny" else (lambda w: PackedWeight(w, rows))
        self._call_layers = self.layers.with_products(make)
        # The head may live elsewhere (a tied embedding kept in another dtype): then it keeps F.linear.
        packed = make(head_w) if (head_w.device, head_w.dtype) == (device, dtype) else None
        self._head = (head_w, head_b, packed)
        return choice

    # ------------------------------------------------------------- the loop
    def _choose(self, logits: torch.Tensor, params: GenerationParams, segments: List[Segment]) -> torch.Tensor:
        if params.do_sample:
            # One generator per segment: a rank's rows draw the same tokens whether or not
            # they were concatenated with other ranks' rows (TP), given the same seed.
            probs = F.softmax(process_logits(logits, params), dim=-1)
            tokens = torch.zeros(probs.shape[0], dtype=torch.long, device=probs.device)
            for s in segments:
                if s.end > s.start:
                    tokens[s.start:s.end] = torch.multinomial(probs[s.start:s.end], 1,
                                                              generator=self._generators[id(s)]).squeeze(1)
        else:
            tokens = torch.argmax(logits, dim=-1)
        if self.sync_tokens is not None:
            self.sync_tokens(tokens)
        return tokens

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: GenerationParams,
                 segments: Optional[List[Segment]] = None,
                 live_rows: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, List[Segment]]:
        """input_ids, attention_mask (B, P), left-padded -> tokens (B, P + steps) and the segments' step counts.

        `live_rows` (B,) bool marks real rows; padding rows added by TP batch
        concatenation count as finished from the start.
        """
        try:
            return self._generate(input_ids, attention_mask, params, segments, live_rows)
        finally:
            # The packed weights, the rotary table and the kernel choice live for one call.
            self._rot, self._call_layers, self._head, self._step_attention = None, self.layers, None, None

    def _generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: GenerationParams,
                  segments: Optional[List[Segment]],
                  live_rows: Optional[torch.Tensor]) -> Tuple[torch.Tensor, List[Segment]]:
        b, p = input_ids.shape
        device = input_ids.device
        if segments is None:
            seed = int(torch.randint(0, 2**62, (1,)).item()) if params.do_sample else 0
            segments = [Segment(0, b, params.max_new_tokens, seed=seed)]
        total = p + max(s.max_new_tokens for s in segments)
        n_kv_heads, head_dim, dtype = self.layers.meta
        self.ws.reserve(len(self.layers), b, n_kv_heads, max(total, self.cache_tokens), head_dim, dtype, device)
        rot = self.policy.rotary_table(total, device, dtype)
        self._rot = rot
        self._plan_products(b, total - p, device, dtype)
        self._generators = {}
        if params.do_sample:
            for s in segments:
                self._generators[id(s)] = torch.Generator(device=device).manual_seed(s.seed)

        tokens = torch.full((b, total), params.pad_token_id, dtype=input_ids.dtype, device=device)
        tokens[:, :p] = input_ids
        valid = torch.ones((b, total), dtype=torch.bool, device=device)
        valid[:, :p] = attention_mask.bool()
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        next_pos = positions[:, -1:] + 1
        unfinished = torch.ones(b, dtype=torch.bool, device=device) if live_rows is None else live_rows.clone()
        eos = torch.tensor(params.eos_token_ids, dtype=input_ids.dtype, device=device)

        causal = torch.ones((p, p), dtype=torch.bool, device=device).tril_()
        # A row always sees its own position, so all-padding rows stay finite.
        prefill_mask = (causal & valid[:, None, :p]) | torch.eye(p, dtype=torch.bool, device=device)
        logits = self._forward(input_ids, positions, 0, prefill_mask.unsqueeze(1))
        fixed = None
        if self.fixed_shape_steps:
            fixed = GraphedStep(self._forward, valid[:, :p], total, capture=True)

        step = 0
        while True:
            running = not all(s.done for s in segments)
            if self.any_running is not None:
                if not self.any_running(running):
                    break
            elif not running:
                break
            if not running:
                # Other ranks still decode and gather collectively: take part without computing.
                self._call_layers.participate()
                continue
            new = self._choose(logits, params, segments)
            new = torch.where(unfinished, new, torch.full_like(new, params.pad_token_id))
            tokens[:, p + step] = new
            if eos.numel():
                unfinished &= ~torch.isin(new, eos)
            step += 1
            for s in segments:
                if not s.done:
                    s.steps = step
                    s.done = step >= s.max_new_tokens or not bool(unfinished[s.start:s.end].any())
            if all(s.done for s in segments):
                if self.any_running is None:
                    break
                self._call_layers.participate()  # this iteration's collective step, without the compute
                continue
            end = p + step
            if fixed is not None:
                logits = fixed(new.unsqueeze(1), next_pos, end - 1)
            else:
                logits = self._forward(new.unsqueeze(1), next_pos, end - 1, valid[:, None, None, :end])
            next_pos = next_pos + 1
        if fixed is not None:
            fixed.release()
        return tokens[:, :p + step], segments
