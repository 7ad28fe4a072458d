"""Tiny deterministic models and data shared by the tests and benchmarks."""
from typing import List

import torch
import torch.nn.functional as F

__all__ = ["TinyCausalLM", "random_tokens", "make_model"]


class _Block(torch.nn.Module):

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(hidden)
        self.fc1 = torch.nn.Linear(hidden, 4 * hidden)
        self.fc2 = torch.nn.Linear(4 * hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyCausalLM(torch.nn.Module):
    """Embedding -> MLP blocks with a causal running mean -> tied LM head.

    Small enough for exact parity tests, and has tied weights, a LayerNorm
    and biases, so it exercises shared and 1-D parameters.
    """

    def __init__(self, vocab: int = 64, hidden: int = 32, layers: int = 2, tie: bool = True) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList(_Block(hidden) for _ in range(layers))
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, T) int64 -> mean next-token cross-entropy (scalar)."""
        x = self.embed(tokens)
        # causal mixing: running mean over previous positions
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device).view(1, -1, 1)
        x = x.cumsum(dim=1) / steps
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))


def make_model(seed: int = 0, **kwargs) -> TinyCausalLM:
    torch.manual_seed(seed)
    return TinyCausalLM(**kwargs)


def random_tokens(n_batches: int, batch: int, seq: int = 16, vocab: int = 64, seed: int = 1) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g) for _ in range(n_batches)]
