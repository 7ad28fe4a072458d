"""One batch of PPO experience: what generation and scoring produce for training.

Shapes: B = batch, P = padded prompt length, L = P + answer slots.
Action quantities have length L-1; see [Note: reward placement] in
losses.py for how position t maps to token t+1.
"""
from dataclasses import dataclass, fields
from typing import Any, Dict, Union

import torch

__all__ = ["Experience"]


@dataclass
class Experience:
    """Tensors of one experience batch, all on the same device.

    The dict keys of the original trainer (`input_ids` for `seq`) are
    accepted by `from_dict` and produced by `to_dict`, so code that passes
    the release's dicts around keeps working.
    """

    prompts: torch.Tensor
    """(B, P) left-padded prompt ids; only P is used downstream (start = P-1)."""
    seq: torch.Tensor
    """(B, L) prompt + generated answer ids, answers right-padded with pad id."""
    logprobs: torch.Tensor
    """(B, L-1) actor log-prob of token t+1 at generation time ("old" policy)."""
    ref_logprobs: torch.Tensor
    """(B, L-1) reference (frozen SFT) model log-prob of token t+1."""
    value: torch.Tensor
    """(B, L-1) critic value of the state before token t+1 ("old" values)."""
    rewards: torch.Tensor
    """(B,) reward-model score of each full sequence (end-of-answer score)."""
    attention_mask: torch.Tensor
    """(B, L) 1 for real tokens, 0 for pads (left prompt pads and answer pads)."""

    @property
    def action_mask(self) -> torch.Tensor:
        """(B, L-1) whether the token each action produced is real: attention_mask[:, 1:]."""
        return self.attention_mask[:, 1:]

    @property
    def prompt_length(self) -> int:
        return int(self.prompts.shape[1])

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    def __getitem__(self, index: Union[int, slice, str]) -> Union["Experience", torch.Tensor]:
        """Rows of the batch (an int keeps the batch dimension; MiniDataset
        slices), or a field by its release dict key (`exp["rewards"]`)."""
        if isinstance(index, str):
            return self.seq if index == "input_ids" else getattr(self, index)
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Experience(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device: Union[str, torch.device]) -> "Experience":
        return Experience(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def to_dict(self) -> Dict[str, torch.Tensor]:
        """The release's experience dict (`input_ids` is `seq`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["input_ids"] = out.pop("seq")
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Experience":
        kwargs = {f.name: data[f.name] for f in fields(cls) if f.name != "seq"}
        kwargs["seq"] = data["seq"] if "seq" in data else data["input_ids"]
        return cls(**kwargs)

    def validate(self) -> None:
        """Raise ValueError when the shapes disagree (catches collation bugs early)."""
        b, length = self.seq.shape
        expect = {
            "prompts": (b, self.prompt_length),
            "logprobs": (b, length - 1),
            "ref_logprobs": (b, length - 1),
            "value": (b, length - 1),
            "rewards": (b, ),
            "attention_mask": (b, length),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Experience.{name} has shape {got}, expected {shape} (B={b}, L={length})")
        if self.prompt_length >= length:
            raise ValueError(f"Experience has no answer slots: prompt length {self.prompt_length} >= L={length}")
