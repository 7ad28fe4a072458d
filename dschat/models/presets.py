"""Named tiny model presets, built from configs so that nothing is downloaded.

`tiny-opt` and `tiny-llama` stand in for OPT and Llama-2 in the embedded
demo and the tests. They keep the architectural traits the pipeline has to
handle: OPT's learned positions and separate `word_embed_proj_dim`, Llama's
rotary embeddings, RMSNorm, SiLU-gated MLP and grouped-query attention (4
query heads sharing 2 key/value heads, as Llama-2-70B shares 8 KV heads among
64 query heads). The vocabulary always comes from the tokenizer, rounded up
to a multiple of 8 like `create_hf_model` resizes real models.

Dropout is 0 in both: the demo trains from scratch for a few hundred steps,
and PPO computes its "old" log-probs in train mode (spec §8), where dropout
would make old and new log-probs differ before any update.
"""
from __future__ import annotations

import math
from typing import Any

from transformers import LlamaConfig, OPTConfig, PretrainedConfig

__all__ = ["PRESET_NAMES", "is_preset", "preset_config", "padded_vocab_size"]

PRESET_NAMES = ("tiny-opt", "tiny-llama")

# Architecture of each preset; vocab and special-token ids are filled in from
# the tokenizer by `preset_config`. Tuples of pairs keep this immutable.
_TINY_OPT = (
    ("hidden_size", 64),
    ("word_embed_proj_dim", 64),
    ("ffn_dim", 256),
    ("num_hidden_layers", 2),
    ("num_attention_heads", 4),
    ("max_position_embeddings", 512),
    ("do_layer_norm_before", True),
    ("dropout", 0.0),
    ("attention_dropout", 0.0),
    ("activation_dropout", 0.0),
    ("layerdrop", 0.0),
)
_TINY_LLAMA = (
    ("hidden_size", 64),
    ("intermediate_size", 176),
    ("num_hidden_layers", 4),
    ("num_attention_heads", 4),
    ("num_key_value_heads", 2),
    ("max_position_embeddings", 512),
    ("hidden_act", "silu"),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10000.0),
    ("attention_dropout", 0.0),
    ("tie_word_embeddings", False),
)


def is_preset(name_or_path: str) -> bool:
    """True when `name_or_path` names a built-in preset (not a path or hub id)."""
    return name_or_path in PRESET_NAMES


def padded_vocab_size(num_tokens: int) -> int:
    """`ceil(num_tokens / 8) * 8`: the vocabulary size DS-Chat resizes to (spec §4)."""
    return int(8 * math.ceil(num_tokens / 8.0))


def preset_config(name: str, tokenizer: Any, **overrides: Any) -> PretrainedConfig:
    """The HF config of preset `name` with the vocabulary of `tokenizer`.

    `overrides` replace architecture fields (e.g. ``num_hidden_layers=2``).
    The bos/eos/pad ids are the tokenizer's, so generation stops on the
    tokenizer's EOS and the pad embedding row is the tokenizer's pad.
    """
    if name == "tiny-opt":
        config_cls, fields = OPTConfig, dict(_TINY_OPT)
    elif name == "tiny-llama":
        config_cls, fields = LlamaConfig, dict(_TINY_LLAMA)
    else:
        raise ValueError(f"unknown model preset {name!r}; known presets: {', '.join(PRESET_NAMES)}")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    fields.update(vocab_size=padded_vocab_size(len(tokenizer)), bos_token_id=bos, eos_token_id=eos,
                  pad_token_id=pad)
    fields.update(overrides)
    return config_cls(**fields)
