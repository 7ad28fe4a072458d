"""The embedded tokenizer, its cache, and `load_hf_tokenizer` for local sources."""
import json

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import dschat.data.tokenizer as tokmod
from dschat.data.synthetic import SyntheticTasks
from dschat.data.tokenizer import (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, count_padding_at_beginning,
                                   load_embedded_tokenizer, load_hf_tokenizer, tokenizer_fingerprint,
                                   train_embedded_tokenizer)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tokcache")


@pytest.fixture()
def embedded(cache_root, monkeypatch):
    monkeypatch.setattr(tokmod, "_default_cache_dir", lambda: cache_root)
    return load_embedded_tokenizer()


def _word_tokenizer(tmp_path, name, specials, bos_is_prepended=None):
    """A tiny word-level fast tokenizer saved at tmp_path/name, standing in for a real local model's."""
    vocab = {tok: i for i, tok in enumerate(specials + ["hello", "world", "a", "[UNK]"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_is_prepended:
        backend.post_processor = processors.TemplateProcessing(single=f"{bos_is_prepended} $A",
                                                               special_tokens=[(bos_is_prepended,
                                                                                vocab[bos_is_prepended])])
    kwargs = {"eos_token": "</s>"} if "</s>" in specials else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **kwargs)
    folder = tmp_path / name
    tok.save_pretrained(str(folder))
    return folder


def test_training_is_deterministic_and_cached(cache_root, monkeypatch):
    first = train_embedded_tokenizer()
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(train_embedded_tokenizer())
    root = cache_root / "fresh"
    cached = load_embedded_tokenizer(root)
    assert tokenizer_fingerprint(cached) == tokenizer_fingerprint(first)
    assert len(list(root.glob("tokenizer-*"))) == 1 and not list(root.glob(".tokenizer-*"))

    def no_training(*_args, **_kwargs):
        raise AssertionError("a cached tokenizer must not be retrained")

    monkeypatch.setattr(tokmod, "train_embedded_tokenizer", no_training)
    assert tokenizer_fingerprint(load_embedded_tokenizer(root)) == tokenizer_fingerprint(first)


def test_special_tokens_and_round_trip(embedded):
    assert (embedded.bos_token, embedded.pad_token, embedded.eos_token) == (BOS_TOKEN, PAD_TOKEN, EOS_TOKEN)
    assert (embedded.bos_token_id, embedded.pad_token_id, embedded.eos_token_id) == (0, 1, 2)
    assert embedded.padding_side == "right"
    assert 512 <= len(embedded) <= 1024
    assert embedded(EOS_TOKEN)["input_ids"] == [2]  # the end token is one token, not several BPE pieces
    for text in ("\n\nHuman: What is 17 + 9?\n\nAssistant: 26", "héllo wörld 漢字\ttabs  and  spaces", "x<|endoftext|>y"):
        assert embedded.decode(embedded(text)["input_ids"]) == text
    ids = embedded("\n\nHuman: What is 1 + 2?\n\nAssistant: 3")["input_ids"]
    assert 0 not in ids and 1 not in ids  # no BOS prepended, no pads
    assert count_padding_at_beginning(embedded) == 0


def test_synthetic_texts_are_short_for_tiny_models(embedded):
    train, _ = SyntheticTasks().split()
    assert max(len(embedded(r["prompt"])["input_ids"]) for r in train) <= 24
    assert max(len(embedded(r["chosen"])["input_ids"]) for r in train) <= 8


def test_presets_and_saved_folders_resolve_to_embedded(embedded, tmp_path):
    reference = tokenizer_fingerprint(embedded)
    for name in ("tiny-opt", "tiny-llama", "dschat/synthetic"):
        assert tokenizer_fingerprint(load_hf_tokenizer(name)) == reference
    saved = tmp_path / "actor"
    embedded.save_pretrained(str(saved))
    loaded = load_hf_tokenizer(str(saved))
    assert loaded.pad_token == PAD_TOKEN and loaded.pad_token_id == 1  # not forced to EOS
    assert tokenizer_fingerprint(loaded) == reference
    bare = tmp_path / "weights_only"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps({"_name_or_path": "tiny-llama"}))
    assert tokenizer_fingerprint(load_hf_tokenizer(str(bare))) == reference


def test_local_tokenizers_follow_ds_chat_pad_rules(tmp_path):
    opt_like = load_hf_tokenizer(str(_word_tokenizer(tmp_path, "opt-like", ["<pad>", "</s>"], "</s>")))
    assert opt_like.pad_token == "</s>" and opt_like.padding_side == "right"
    assert count_padding_at_beginning(opt_like) == 1  # BOS has the pad id, hence OPT's num_padding_at_beginning=1
    llama = load_hf_tokenizer(str(_word_tokenizer(tmp_path, "my-llama", ["<s>", "</s>"], "<s>")))
    assert llama.pad_token == "[PAD]" and llama.pad_token_id == len(llama) - 1
    assert count_padding_at_beginning(llama) == 0
    extra = load_hf_tokenizer(str(_word_tokenizer(tmp_path, "plain", ["</s>"])), add_special_tokens="<|eot|>")
    assert "<|eot|>" in extra.all_special_tokens and len(extra("a <|eot|>")["input_ids"]) == 2


def test_missing_sources_fail_with_offline_hint(tmp_path):
    with pytest.raises(OSError, match="Nothing is downloaded"):
        load_hf_tokenizer("no-such-org/no-such-model-dschat-test")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_hf_tokenizer(str(empty))


def test_fingerprint_tracks_vocabulary_not_call_settings(embedded):
    before = tokenizer_fingerprint(embedded)
    embedded(["a b c"], truncation=True, max_length=2)
    assert tokenizer_fingerprint(embedded) == before
    embedded.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert tokenizer_fingerprint(embedded) != before
