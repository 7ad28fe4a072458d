"""`RewardModel`: a base transformer plus a scalar `v_head`, for the reward and critic models (spec §4).

Shapes: B = pairs (step 2) or sequences (step 3), L = sequence length.

[Note: reward-model end index]
A row's "end" is where its answer stops: the first pad token at or after a
starting point, or L when the row has no pad there. In step 2 the starting
point skips `num_padding_at_beginning` pads (OPT's BOS has the pad id, so
OPT uses 1); in step 3 it is `prompt_length`, past the left-padded prompt.
The score of a row is the value at `end - 1`, its last real token.

[Note: pairwise loss]
For a chosen/rejected pair the loss covers the positions where the two
sequences can differ: from the first differing token (`div`) up to the
later of the two ends (`end`), mean of ``-logsigmoid(r_chosen - r_rejected)``,
then averaged over pairs. An identical pair compares only its last position
(div = L-1, end = L). Our one addition: when the pair differs only after both
ends (div >= end, e.g. in trailing padding) the span would be empty and its
mean NaN, so that pair is treated like an identical one.
"""
from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from dschat.utils import position_ids_from_mask

__all__ = ["RewardModel", "end_index"]


def end_index(row: torch.Tensor, pad_token_id: int, start: int = 0, skip_pads: int = 0) -> int:
    """Index of the `skip_pads`-th pad at or after `start` in `row` (L), or L if there is none.

    See [Note: reward-model end index].
    """
    pads = (row[start:] == pad_token_id).nonzero()
    return int(pads[skip_pads].item()) + start if len(pads) > skip_pads else row.shape[-1]


def _hidden_size(config: Any) -> int:
    # OPT projects its output to word_embed_proj_dim; others expose hidden_size or GPT-2's n_embd.
    for key in ("word_embed_proj_dim", "hidden_size", "n_embd"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    raise ValueError("cannot find the hidden size of the base model config "
                     "(no word_embed_proj_dim, hidden_size or n_embd)")


class RewardModel(nn.Module):
    """Base transformer (`rwtransformer`) and `v_head = Linear(hidden, 1, bias=False)`.

    `forward` is the step-2 pairwise training pass; `forward_value` gives
    per-token values (critic) and end-of-answer scores (reward) in step 3.
    Positions are derived from the attention mask when the caller passes
    none, so left padding (step 3) does not shift a sequence's positions in
    models whose absolute positions would otherwise count from the first pad
    (rotary attention is shift-invariant anyway; OPT derives them itself);
    with right padding this equals `arange(L)`.
    """

    def __init__(self, base_model: nn.Module, tokenizer: Any, num_padding_at_beginning: int = 0,
                 compute_fp32_loss: bool = False) -> None:
        super().__init__()
        # The base config, so HF-style code (saving, the hybrid engine) finds it here too.
        self.config = base_model.config
        self.num_padding_at_beginning = num_padding_at_beginning
        self.v_head = nn.Linear(_hidden_size(self.config), 1, bias=False)
        self.rwtransformer = base_model
        self.PAD_ID = tokenizer.pad_token_id
        if self.PAD_ID is None:
            raise ValueError("RewardModel needs a tokenizer with a pad token (end of answer = first pad)")
        # Compute the pairwise loss in fp32 even when the model runs in 16 bits.
        self.compute_fp32_loss = compute_fp32_loss
        params = inspect.signature(base_model.forward).parameters
        # Which keyword arguments the base forward takes (transformers 5 renamed
        # past_key_values to cache and dropped head_mask).
        self._accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        self._accepted = frozenset(params)

    # ---- base model plumbing --------------------------------------------

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.rwtransformer.gradient_checkpointing_enable(**kwargs)

    def gradient_checkpointing_disable(self) -> None:
        self.rwtransformer.gradient_checkpointing_disable()

    def _accepts(self, name: str) -> bool:
        return name in self._accepted or self._accepts_any

    def _hidden_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor],
                       past_key_values: Any, position_ids: Optional[torch.Tensor], head_mask: Any,
                       inputs_embeds: Optional[torch.Tensor], use_cache: bool) -> torch.Tensor:
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": use_cache}
        if inputs_embeds is not None:
            kwargs["inputs_embeds"] = inputs_embeds
        else:
            kwargs["input_ids"] = input_ids
        # Only for a full forward: with a cache, the mask also covers past tokens.
        if (position_ids is None and attention_mask is not None and past_key_values is None
                and self._accepts("position_ids")):
            position_ids = position_ids_from_mask(attention_mask)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if past_key_values is not None:
            kwargs["past_key_values" if "past_key_values" in self._accepted else "cache"] = past_key_values
        if head_mask is not None:
            if not self._accepts("head_mask"):
                raise TypeError(f"{type(self.rwtransformer).__name__}.forward takes no head_mask")
            kwargs["head_mask"] = head_mask
        outputs = self.rwtransformer(**kwargs)
        return outputs[0]

    def _values(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, L): the scalar value of every position."""
        return self.v_head(hidden_states).squeeze(-1)

    # ---- step 2 ---------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Any = None, position_ids: Optional[torch.Tensor] = None, head_mask: Any = None,
                inputs_embeds: Optional[torch.Tensor] = None, use_cache: bool = False) -> dict[str, torch.Tensor]:
        """Pairwise loss over a batch of 2B rows: chosen rows first, then their rejected rows.

        input_ids, attention_mask: (2B, L), right-padded. Returns `loss`
        (scalar), `chosen_mean_scores` and `rejected_mean_scores` (B,). The
        "mean" names are DS-Chat's; the scores are the values at each row's
        last real token. See [Note: pairwise loss].
        """
        hidden = self._hidden_states(input_ids, attention_mask, past_key_values, position_ids, head_mask,
                                     inputs_embeds, use_cache)
        rewards = self._values(hidden)
        if rewards.shape[0] % 2:
            raise ValueError(f"RewardModel.forward expects chosen rows then rejected rows, got {rewards.shape[0]}")
        bs, seq_len = rewards.shape[0] // 2, rewards.shape[1]
        chosen_ids, rejected_ids = input_ids[:bs], input_ids[bs:]
        chosen_rewards, rejected_rewards = rewards[:bs], rewards[bs:]

        loss = rewards.new_zeros((), dtype=torch.float32 if self.compute_fp32_loss else rewards.dtype)
        chosen_scores, rejected_scores = [], []
        for i in range(bs):
            chosen_id, rejected_id = chosen_ids[i], rejected_ids[i]
            chosen_reward, rejected_reward = chosen_rewards[i], rejected_rewards[i]
            c_ind = end_index(chosen_id, self.PAD_ID, skip_pads=self.num_padding_at_beginning)
            differ = (chosen_id != rejected_id).nonzero()
            if len(differ) == 0:
                end_ind, div_ind, r_ind = seq_len, seq_len - 1, c_ind
            else:
                r_ind = end_index(rejected_id, self.PAD_ID, skip_pads=self.num_padding_at_beginning)
                end_ind = max(c_ind, r_ind)
                div_ind = int(differ[0].item())
                if div_ind == 0:
                    raise ValueError(f"pair {i}: chosen and rejected differ at position 0; they should share "
                                     "the prompt (are the rows left-padded?)")
                if div_ind >= end_ind:
                    end_ind, div_ind = seq_len, seq_len - 1
            c_span, r_span = chosen_reward[div_ind:end_ind], rejected_reward[div_ind:end_ind]
            if self.compute_fp32_loss:
                c_span, r_span = c_span.float(), r_span.float()
            loss = loss + (-F.logsigmoid(c_span - r_span)).mean()
            chosen_scores.append(chosen_reward[c_ind - 1])
            rejected_scores.append(rejected_reward[r_ind - 1])
        return {
            "loss": loss / bs,
            "chosen_mean_scores": torch.stack(chosen_scores),
            "rejected_mean_scores": torch.stack(rejected_scores),
        }

    # ---- step 3 ---------------------------------------------------------

    def forward_value(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                      past_key_values: Any = None, position_ids: Optional[torch.Tensor] = None,
                      head_mask: Any = None, inputs_embeds: Optional[torch.Tensor] = None,
                      return_value_only: bool = False, prompt_length: int = 0,
                      use_cache: bool = False) -> Any:
        """Per-token values, and each sequence's score at the end of its answer.

        input_ids, attention_mask: (B, L), a left-padded prompt of
        `prompt_length` tokens followed by a right-padded answer. Returns the
        values (B, L) when `return_value_only`, else a dict with `values`
        (B, L) and `chosen_end_scores` (B,): the value at the last real answer
        token (the last prompt token if the answer is empty).
        """
        hidden = self._hidden_states(input_ids, attention_mask, past_key_values, position_ids, head_mask,
                                     inputs_embeds, use_cache)
        values = self._values(hidden)
        if return_value_only:
            return values
        if prompt_length <= 1:
            raise ValueError(f"forward_value needs prompt_length > 1 to locate the answers, got {prompt_length}")
        ends = [end_index(input_ids[i], self.PAD_ID, start=prompt_length) for i in range(values.shape[0])]
        scores = torch.stack([values[i, end - 1] for i, end in enumerate(ends)])
        return {"values": values, "chosen_end_scores": scores}
