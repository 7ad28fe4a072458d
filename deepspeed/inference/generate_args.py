"""Resolve HF `generate(...)` arguments into the subset the decode path implements.

The model's own `generation_config` is copied and updated with the call's
keyword arguments, exactly as HF does, so defaults (eos/pad ids, greedy vs.
sampling, max_length) come from the same place. Anything that would change
the tokens and that the decode loop does not implement (beam search,
repetition penalties, forced tokens, score outputs, ...) is reported, and
the hybrid engine then falls back to HF's own generate.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Tuple

from deepspeed.inference.decode import GenerationParams

__all__ = ["resolve_generation", "MODEL_KWARGS"]

# HF fills these in when neither the model nor the caller set them.
_HF_DEFAULTS = {"max_length": 20, "do_sample": False, "temperature": 1.0, "top_k": 50, "top_p": 1.0}

# Generation options whose value must be one of these for the decode path to be exact.
_NEUTRAL: Dict[str, Tuple[Any, ...]] = {
    "num_beams": (None, 1), "num_return_sequences": (None, 1), "repetition_penalty": (None, 1.0),
    "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "bad_words_ids": (None,), "output_scores": (None, False),
    "output_logits": (None, False), "output_attentions": (None, False), "output_hidden_states": (None, False),
    "return_dict_in_generate": (None, False), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "typical_p": (None, 1.0),
    "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0), "min_p": (None,), "top_h": (None,),
    "sequence_bias": (None,), "exponential_decay_length_penalty": (None,), "renormalize_logits": (None, False),
    "stop_strings": (None,), "max_time": (None,), "guidance_scale": (None, 1.0), "penalty_alpha": (None,),
    "prompt_lookup_num_tokens": (None,), "watermarking_config": (None,), "dola_layers": (None,),
    "remove_invalid_values": (None, False), "use_cache": (None, True), "diversity_penalty": (None, 0.0),
    "num_beam_groups": (None, 1), "constraints": (None,), "force_words_ids": (None,),
}

#: Model keyword arguments the decode path accepts (synced_gpus: ranks are kept in lock-step anyway).
MODEL_KWARGS = ("attention_mask", "synced_gpus")


def _ids(value: Any) -> Tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    if hasattr(value, "tolist"):
        value = value.tolist()
        return tuple(int(v) for v in (value if isinstance(value, list) else [value]))
    return (int(value),)


def resolve_generation(module: Any, prompt_len: int,
                       kwargs: Dict[str, Any]) -> Tuple[Optional[GenerationParams], Optional[str]]:
    """-> (params, None) if the decode path can run this call exactly, else (None, why not)."""
    base = kwargs.get("generation_config") or getattr(module, "generation_config", None)
    if base is None:
        return None, "the model has no generation_config"
    config = copy.deepcopy(base)
    rest = {k: v for k, v in kwargs.items() if k not in ("generation_config",) + MODEL_KWARGS}
    unused = config.update(**rest) if rest else {}
    if unused:
        return None, f"unsupported generate arguments {sorted(unused)}"
    for name, allowed in _NEUTRAL.items():
        value = getattr(config, name, None)
        if value not in allowed:
            return None, f"generate option {name}={value!r}"

    def get(name: str) -> Any:
        value = getattr(config, name, None)
        return _HF_DEFAULTS.get(name) if value is None else value

    if getattr(config, "max_new_tokens", None) is not None:
        max_new = int(config.max_new_tokens)
    else:
        max_new = int(get("max_length")) - prompt_len
    eos = _ids(getattr(config, "eos_token_id", None))
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        pad = eos[0] if eos else 0
    return GenerationParams(max_new_tokens=max_new, eos_token_ids=eos, pad_token_id=int(pad),
                            do_sample=bool(get("do_sample")), temperature=float(get("temperature")),
                            top_k=int(get("top_k")) if get("top_k") is not None else None,
                            top_p=float(get("top_p"))), None
