"""A decode step with fixed shapes, replayed from a CUDA graph on CUDA.

Small-batch decoding on a GPU is bound by kernel launches, not by the
GPU: one step of a 24-layer model is a few hundred small kernels, and the
Python that issues them takes longer than the kernels run. A CUDA graph
records the launches once and replays them with one call. Replay needs
every tensor the step reads to live at a fixed address with a fixed shape,
so the step reads its inputs from buffers owned here:

* ids, positions (B, 1): the new tokens and their positions;
* slot (1,): the cache slot the new K/V are written to (index_copy_);
* mask (B, 1, 1, T): which of the call's T cache slots each row attends to.

`__call__` refreshes the buffers with a few small copies and replays. The
graph is captured per generate call, because under ZeRO-3 the gathered
weights (which the graph reads by address) live only for one call. On CPU
the same fixed-shape step runs eagerly.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["GraphedStep"]

StepFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class GraphedStep:
    """Fixed-shape decode steps over a call of `total` cache slots (see the module docstring).

    `step(ids, positions, slot, mask) -> logits (B, V)` is the model's
    forward; `prompt_valid` (B, P) marks the real prompt tokens.
    """

    def __init__(self, step: StepFn, prompt_valid: torch.Tensor, total: int, capture: bool) -> None:
        b, p = prompt_valid.shape
        device = prompt_valid.device
        self.step = step
        self.ids = torch.zeros((b, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((b, 1), dtype=torch.long, device=device)
        # Warm-up and capture write K/V to the last slot, which no real step writes
        # (the last token is never fed back) and every real step masks out.
        self.slot = torch.full((1,), total - 1, dtype=torch.long, device=device)
        self.mask = torch.zeros((b, 1, 1, total), dtype=torch.bool, device=device)
        self.mask[:, 0, 0, :p] = prompt_valid
        self.capture = capture and device.type == "cuda"
        self.graph: Optional["torch.cuda.CUDAGraph"] = None
        self.out: Optional[torch.Tensor] = None

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: lazy library init must not happen inside the capture
            self.step(self.ids, self.positions, self.slot, self.mask)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self.step(self.ids, self.positions, self.slot, self.mask)
        self.graph = graph

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """ids, positions (B, 1): the tokens fed at cache slot `slot` -> logits (B, V), fp32.

        Under a graph the returned tensor is overwritten by the next call.
        """
        if self.capture and self.graph is None:
            self._capture()
        self.ids.copy_(ids)
        self.positions.copy_(positions)
        self.slot.fill_(slot)
        self.mask[:, :, :, slot] = True
        if self.graph is None:
            return self.step(self.ids, self.positions, self.slot, self.mask)
        self.graph.replay()
        return self.out

    def release(self) -> None:
        """Drop the graph (and with it its memory pool and its references to the weights)."""
        self.graph = None
        self.out = None
