"""Step 1's evaluation: perplexity = exp(mean eval LM loss), averaged over ranks."""
import math
from typing import Any, Iterable, Tuple

import torch

from dschat.utils import get_all_reduce_mean, to_device

__all__ = ["evaluate_perplexity"]


def evaluate_perplexity(model: Any, dataloader: Iterable, device: Any) -> Tuple[float, float]:
    """(perplexity, mean loss) of `model` (an engine or HF causal LM) over `dataloader`.

    Each rank averages its own batches; the result is the mean over ranks
    (every rank must call this). The model is left in eval mode; callers
    switch it back. An overflowing loss gives perplexity inf, not an error.
    """
    model.eval()
    total, batches = torch.zeros((), dtype=torch.float32, device=device), 0
    with torch.no_grad():
        for batch in dataloader:
            outputs = model(**to_device(batch, device), use_cache=False)
            total += outputs.loss.float()
            batches += 1
    loss = get_all_reduce_mean(total / max(batches, 1)).item()
    try:
        perplexity = math.exp(loss)
    except OverflowError:
        perplexity = float("inf")
    return perplexity, loss
