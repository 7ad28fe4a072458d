"""Tokenizers: the embedded byte-level BPE and DS-Chat's `load_hf_tokenizer`.

The embedded tokenizer is what the `tiny-opt` / `tiny-llama` presets and the
`dschat/synthetic` dataset use, so the whole pipeline runs offline. It is a
byte-level BPE trained with `tokenizers` on the synthetic corpus in well under
a second, with three special tokens: `<s>` (BOS, id 0), `<pad>` (id 1) and
`<|endoftext|>` (EOS, id 2). Being byte-level, it encodes any text.

It adds no BOS when encoding and its pad differs from EOS, so a model using it
needs `num_padding_at_beginning=0` (`count_padding_at_beginning` says so for
any tokenizer); pad tokens never hide a real EOS.

[Note: tokenizer cache] Training is deterministic, but every step and every
rank must use byte-for-byte the same vocabulary, so the trained tokenizer is
written once to `<cache_dir>/tokenizer-<key>/` (default cache dir
`~/.cache/dschat`), where `key` hashes the tokenizer recipe and the synthetic
generator's version. The folder is written under a temporary name and renamed
into place, so a reader never sees half of it; whoever loses a race discards
its copy and loads the winner's. Every caller loads from that folder.
"""
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .synthetic import GENERATOR_VERSION, SyntheticTasks

__all__ = [
    "BOS_TOKEN", "PAD_TOKEN", "EOS_TOKEN", "EMBEDDED_NAMES", "DEFAULT_VOCAB_SIZE", "is_embedded_name",
    "train_embedded_tokenizer", "load_embedded_tokenizer", "load_hf_tokenizer", "tokenizer_fingerprint",
    "count_padding_at_beginning"
]

logger = logging.getLogger(__name__)

BOS_TOKEN = "<s>"
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
# Names that resolve to the embedded tokenizer instead of a path or hub id.
EMBEDDED_NAMES = ("tiny-opt", "tiny-llama", "dschat/synthetic")
DEFAULT_VOCAB_SIZE = 1024
# Bump when the training recipe below changes, so old caches are not reused.
_RECIPE_VERSION = 1
_MODEL_MAX_LENGTH = 2048
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                    "vocab.txt")
_HUB_HINT = ("Nothing is downloaded: pass a local folder holding the tokenizer files (e.g. one written by "
             "`save_pretrained`, or a model folder from an earlier step), a tokenizer already in the Hugging Face "
             "cache, or one of the embedded presets {presets}.")


def is_embedded_name(name_or_path: str) -> bool:
    """True for preset names served by the embedded tokenizer."""
    return name_or_path in EMBEDDED_NAMES or name_or_path.startswith("dschat/synthetic")


def _corpus(tasks: SyntheticTasks) -> Iterator[str]:
    for record in tasks.records():
        yield record["prompt"] + record["chosen"]
        yield record["prompt"] + record["rejected"]
    # The chat REPL's template, so interactive prompts tokenize as compactly.
    yield " Human: hello\n Assistant: hi"


def train_embedded_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the embedded byte-level BPE in memory (no cache; see `load_embedded_tokenizer`)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                  special_tokens=[BOS_TOKEN, PAD_TOKEN, EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(SyntheticTasks()), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, padding_side="right", model_max_length=_MODEL_MAX_LENGTH,
                                   clean_up_tokenization_spaces=False)


def _cache_key(vocab_size: int) -> str:
    tasks = SyntheticTasks()
    recipe = [_RECIPE_VERSION, GENERATOR_VERSION, tasks.fingerprint(), vocab_size, BOS_TOKEN, PAD_TOKEN, EOS_TOKEN]
    return hashlib.sha256(json.dumps(recipe).encode()).hexdigest()[:16]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "dschat"


def _load_saved(folder: Path) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    tokenizer.padding_side = "right"
    return tokenizer


def load_embedded_tokenizer(cache_dir: Optional[Union[str, Path]] = None,
                            vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """The embedded tokenizer, trained once and shared through the disk cache.

    See [Note: tokenizer cache]. If the cache folder cannot be written (a
    read-only home), the freshly trained tokenizer is returned with a warning.
    """
    root = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    final = root / f"tokenizer-{_cache_key(vocab_size)}"
    if (final / "tokenizer.json").is_file():
        return _load_saved(final)
    tokenizer = train_embedded_tokenizer(vocab_size)
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=".tokenizer-"))
    except OSError as err:
        logger.warning("cannot cache the embedded tokenizer under %s (%s); using an uncached copy", root, err)
        return tokenizer
    try:
        tokenizer.save_pretrained(str(staging))
        os.rename(staging, final)
    except OSError:
        # Another process renamed its copy into place first (or the rename
        # failed); theirs is identical by construction, so use it.
        shutil.rmtree(staging, ignore_errors=True)
        if not (final / "tokenizer.json").is_file():
            raise
    return _load_saved(final)


def _is_embedded(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Recognise the embedded tokenizer after a save/load round trip (e.g. from
    a model folder): its three special tokens sit at ids 0, 1, 2."""
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN)]
    return (ids == [0, 1, 2] and tokenizer.eos_token == EOS_TOKEN and tokenizer.pad_token == PAD_TOKEN)


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _resolve_folder_source(folder: Path) -> Optional[str]:
    """For a model folder without tokenizer files, where its config says the
    model came from (DS-Chat's `_name_or_path` lookup), when that is local."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    try:
        origin = json.loads(config.read_text()).get("_name_or_path")
    except (OSError, ValueError):
        return None
    if not isinstance(origin, str) or not origin:
        return None
    if is_embedded_name(origin):
        return origin
    if Path(origin).is_dir() and Path(origin).resolve() != folder.resolve():
        return origin
    return None


def _load_local_or_cached(name_or_path: str, fast_tokenizer: bool) -> PreTrainedTokenizerBase:
    path = Path(name_or_path)
    if path.is_dir() and not _has_tokenizer_files(path):
        origin = _resolve_folder_source(path)
        if origin is None:
            raise FileNotFoundError(f"{name_or_path} holds no tokenizer files ({', '.join(_TOKENIZER_FILES)}) and its "
                                    f"config.json names no local origin. " +
                                    _HUB_HINT.format(presets=", ".join(EMBEDDED_NAMES)))
        return _load_any(origin, fast_tokenizer)
    try:
        return AutoTokenizer.from_pretrained(name_or_path, use_fast=fast_tokenizer, local_files_only=True)
    except (OSError, ValueError) as err:
        where = "the local folder" if path.is_dir() else "the local Hugging Face cache"
        raise OSError(f"cannot load tokenizer {name_or_path!r} from {where}: {err}. " +
                      _HUB_HINT.format(presets=", ".join(EMBEDDED_NAMES))) from err


def _load_any(name_or_path: str, fast_tokenizer: bool) -> PreTrainedTokenizerBase:
    if is_embedded_name(name_or_path):
        return load_embedded_tokenizer()
    return _load_local_or_cached(name_or_path, fast_tokenizer)


def _add_extra_special_tokens(tokenizer: PreTrainedTokenizerBase, tokens: List[str]) -> None:
    """Append to the extra special tokens, keeping those already there.

    transformers 5 renamed `additional_special_tokens` (and the matching
    `replace_...` flag) to `extra_special_tokens`; support both.
    """
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    if "replace_extra_special_tokens" in params:
        tokenizer.add_special_tokens({"extra_special_tokens": tokens}, replace_extra_special_tokens=False)
    else:
        tokenizer.add_special_tokens({"additional_special_tokens": tokens}, replace_additional_special_tokens=False)


def load_hf_tokenizer(name_or_path: str, fast_tokenizer: bool = True,
                      add_special_tokens: Optional[Union[str, Sequence[str]]] = None) -> PreTrainedTokenizerBase:
    """DS-Chat's tokenizer loader, offline.

    - `tiny-opt`, `tiny-llama`, `dschat/synthetic` -> the embedded tokenizer;
    - a local folder -> its own tokenizer files (`local_files_only`); a model
      folder without them falls back to the local origin in its config;
    - any other name -> the local Hugging Face cache only, else an error
      saying how to provide it offline.

    Pad handling follows DS-Chat: a Llama tokenizer without a pad token gets
    `[PAD]` added (the model must then be resized); other tokenizers use EOS
    as pad, which is why OPT needs `num_padding_at_beginning=1` (its BOS is
    the EOS id). The embedded tokenizer keeps its own `<pad>`. Padding side
    is right. `add_special_tokens` are added as extra special tokens
    (`additional_special_tokens` before transformers 5).
    """
    tokenizer = _load_any(name_or_path, fast_tokenizer)
    if not _is_embedded(tokenizer):
        is_llama = "llama" in name_or_path.lower() or "llama" in type(tokenizer).__name__.lower()
        if is_llama:
            if tokenizer.pad_token is None:
                tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        elif tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if add_special_tokens is not None:
        extra: List[str] = [add_special_tokens] if isinstance(add_special_tokens, str) else list(add_special_tokens)
        missing = [tok for tok in extra if tok not in tokenizer.all_special_tokens]
        if missing:
            _add_extra_special_tokens(tokenizer, missing)
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything about a tokenizer that changes token ids.

    Used by the dataset cache key: the vocabulary, merges, normaliser and
    added tokens (the whole serialised tokenizer for fast tokenizers, the
    vocabulary for slow ones), the special tokens and the padding side.
    """
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        # Per-call settings: every `tokenizer(..., truncation=True)` rewrites
        # them, and they do not change how a text maps to ids.
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    specials = {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token, "pad": tokenizer.pad_token,
                "pad_id": tokenizer.pad_token_id, "all": sorted(tokenizer.all_special_tokens),
                "side": tokenizer.padding_side}
    digest.update(json.dumps(specials, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:32]


def count_padding_at_beginning(tokenizer: PreTrainedTokenizerBase) -> int:
    """How many pad-id tokens the tokenizer puts before every text.

    This is the right `num_padding_at_beginning` for the reward model: 1 for
    OPT under DS-Chat's pad=EOS rule (its BOS has the EOS id), 0 for Llama
    with `[PAD]` and for the embedded tokenizer.
    """
    ids = tokenizer("a")["input_ids"]
    count = 0
    while count < len(ids) and ids[count] == tokenizer.pad_token_id:
        count += 1
    return count
