"""The DS-Chat data pipeline: sources, data_split, phases, collators, cache."""
import json
import os
import sys
import types

import pytest
import torch

import dschat.data.tokenizer as tokmod
from dist_harness import run_distributed
from dschat.data.cache import cache_key
from dschat.data.collators import DataCollatorReward, DataCollatorRLHF, MiniDataset
from dschat.data.data_utils import create_prompt_dataset, get_raw_dataset, get_raw_dataset_split_index
from dschat.data.splits import DEFAULT_DATA_SEED, resolve_seed, split_boundaries
from dschat.data.unsupervised import get_unsupervised_data, group_into_blocks

N_ROWS = 60


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tokmod.load_embedded_tokenizer(tmp_path_factory.mktemp("tok"))


def _write_rows(folder, n=N_ROWS, eval_n=10, tag=""):
    """A json source whose prompts are unique and recognisable: `q<i>`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": f"Human: q{i}{tag} Assistant:", "chosen": f"good{i}", "rejected": f"bad{i}"} for i in range(n)]
    (folder / "train.json").write_text(json.dumps(rows))
    if eval_n:
        ev = [{"prompt": f"Human: e{i}{tag} Assistant:", "chosen": "ok", "rejected": "no"} for i in range(eval_n)]
        (folder / "eval.json").write_text(json.dumps(ev))
    return str(folder)


def _prompt_ids(dataset, tok):
    """The `q<i>` number of every row of a phase dataset."""
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        ids = item["input_ids"] if isinstance(item, dict) else (item[0].flip(0) if len(item) == 3 else item[0])
        text = tok.decode(ids, skip_special_tokens=True)
        out.append(int(text.split("Human: q")[1].split(" ")[0]))
    return out


def test_split_boundaries_by_hand():
    assert split_boundaries("2,4,4", 10) == [0, 2, 6, 10]
    assert split_boundaries("6,2,2", 7) == [0, 4, 6, 7]  # round(4.2), round(5.6), 7
    assert split_boundaries("1,1,1", 10) == [0, 3, 7, 10]
    assert split_boundaries("10,0,0", 5) == [0, 5, 5, 5]
    with pytest.raises(ValueError):
        split_boundaries("a,b", 5)
    assert resolve_seed(None) == DEFAULT_DATA_SEED == 1234


@pytest.mark.parametrize("seed", [0, 1234, 99])
@pytest.mark.parametrize("split", ["2,4,4", "6,2,2", "1,1,1", "3,7"])
@pytest.mark.parametrize("size", [1, 10, 101])
def test_split_indices_partition_rows(seed, split, size):
    parts = [get_raw_dataset_split_index(-1, "", "x", seed, "train", split, p, size) for p in range(len(split.split(",")))]
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(size))  # disjoint and complete
    assert parts[0] == get_raw_dataset_split_index(0, "/elsewhere", "y", seed, "eval", split, 0, size)


@pytest.mark.parametrize("seed, split", [(1234, "2,4,4"), (7, "6,2,2"), (None, "1,1,1")])
def test_phases_never_share_rows(tmp_path, tok, seed, split):
    src = _write_rows(tmp_path / "src")
    seen = {}
    for phase in (1, 2, 3):
        train, _ = create_prompt_dataset(-1, [src], split, str(tmp_path / "cache"), phase, seed, tok, 64)
        seen[phase] = _prompt_ids(train, tok)
        assert len(set(seen[phase])) == len(seen[phase])
    assert not set(seen[1]) & set(seen[2]) and not set(seen[1]) & set(seen[3]) and not set(seen[2]) & set(seen[3])
    assert sorted(seen[1] + seen[2] + seen[3]) == list(range(N_ROWS))


def test_step3_default_seed_matches_steps_1_and_2(tmp_path, tok):
    src = _write_rows(tmp_path / "src")
    out = str(tmp_path / "cache")
    with_none, _ = create_prompt_dataset(-1, [src], "2,4,4", out, 3, None, tok, 64)
    with_default, _ = create_prompt_dataset(-1, [src], "2,4,4", out, 3, DEFAULT_DATA_SEED, tok, 64)
    assert _prompt_ids(with_none, tok) == _prompt_ids(with_default, tok)


def test_phase1_labels_masked_by_attention_not_pad_id(tmp_path, tok):
    """With pad == EOS (DS-Chat's rule for OPT) the real EOS keeps its label."""
    tok_eos_pad = tokmod.train_embedded_tokenizer()
    tok_eos_pad.pad_token = tok_eos_pad.eos_token
    src = _write_rows(tmp_path / "src")
    train, _ = create_prompt_dataset(-1, [src], "10,0,0", str(tmp_path / "c"), 1, 1, tok_eos_pad, 32)
    eos = tok_eos_pad.eos_token_id
    for i in range(len(train)):
        item = train[i]
        ids, mask, labels = item["input_ids"], item["attention_mask"], item["labels"]
        assert ids.shape == mask.shape == labels.shape == (32, )
        n = int(mask.sum())
        row = _prompt_ids(train, tok_eos_pad)[i]
        expected = tok_eos_pad(f" Human: q{row} Assistant: good{row}<|endoftext|>")["input_ids"]
        assert ids[:n].tolist() == expected and ids[n - 1] == eos
        assert mask[:n].eq(1).all() and mask[n:].eq(0).all() and ids[n:].eq(eos).all()
        assert labels[:n].tolist() == expected and labels[n:].eq(-100).all()
        break


def test_phase2_pairs_and_reward_collator(tmp_path, tok):
    src = _write_rows(tmp_path / "src")
    train, _ = create_prompt_dataset(-1, [src], "0,1,0", str(tmp_path / "c"), 2, 1, tok, 24)
    assert len(train) == N_ROWS
    c_ids, c_mask, r_ids, r_mask = train[0]
    assert c_ids.shape == r_ids.shape == (24, )
    row = int(tok.decode(c_ids, skip_special_tokens=True).split("q")[1].split(" ")[0])
    assert tok.decode(c_ids[:int(c_mask.sum())]) == f" Human: q{row} Assistant: good{row}<|endoftext|>"
    assert tok.decode(r_ids[:int(r_mask.sum())]) == f" Human: q{row} Assistant: bad{row}<|endoftext|>"
    assert c_ids[int(c_mask.sum()):].eq(tok.pad_token_id).all()
    batch = DataCollatorReward()([train[0], train[1], train[2]])
    assert batch["input_ids"].shape == (6, 24)
    assert torch.equal(batch["input_ids"][0], c_ids) and torch.equal(batch["input_ids"][3], r_ids)
    assert torch.equal(batch["attention_mask"][3], r_mask)


def test_phase3_drops_long_prompts_and_left_pads(tmp_path, tok):
    folder = tmp_path / "src"
    folder.mkdir()
    rows = [{"prompt": "Human: hi Assistant:", "chosen": "a", "rejected": "b"},
            {"prompt": "Human: " + "very long words " * 20 + "Assistant:", "chosen": "a", "rejected": "b"},
            {"prompt": "Human: what is it Assistant:", "chosen": "a", "rejected": "b"}]
    (folder / "train.json").write_text(json.dumps(rows))
    (folder / "eval.json").write_text(json.dumps(rows[:1]))
    limit = 12
    train, _ = create_prompt_dataset(-1, [str(folder)], "0,0,1", str(tmp_path / "c"), 3, 1, tok, limit)
    lengths = sorted(len(tok(" " + r["prompt"])["input_ids"]) for r in rows)
    assert lengths[-1] > limit >= lengths[1]
    assert len(train) == 2  # the long prompt is dropped, not truncated
    items = [train[i] for i in range(len(train))]
    for ids, mask, pad in items:
        assert pad == tok.pad_token_id and mask.eq(1).all()
    batch = DataCollatorRLHF(limit, 1)(items)
    assert batch["prompt"].shape == batch["prompt_att_mask"].shape == (2, limit)
    for row, (ids, _, _) in enumerate(items):
        n = ids.numel()
        assert batch["prompt"][row, limit - n:].tolist() == ids.flip(0).tolist()  # prompt ends at the last column
        assert batch["prompt"][row, :limit - n].eq(tok.pad_token_id).all()
        assert batch["prompt_att_mask"][row].tolist() == [0] * (limit - n) + [1] * n


def test_rlhf_collator_by_hand():
    items = [(torch.tensor([3, 2, 1]), torch.ones(3, dtype=torch.long), 0), (torch.tensor([5]), torch.ones(1), 0)]
    batch = DataCollatorRLHF(max_token_len=4)(items)
    assert batch["prompt"].tolist() == [[0, 1, 2, 3], [0, 0, 0, 5]]
    assert batch["prompt_att_mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    with pytest.raises(ValueError):
        DataCollatorRLHF(max_token_len=2)(items)


def test_mini_dataset():
    mini = MiniDataset(max_size=2, small_batch_size=2)
    assert mini.add({"a": torch.arange(3)}) is None
    out = mini.add([torch.arange(4), torch.arange(4) * 10])
    assert [o["a"].tolist() for o in out[:2]] == [[0, 1], [2]]
    assert [[t.tolist() for t in o] for o in out[2:]] == [[[0, 1], [0, 10]], [[2, 3], [20, 30]]]
    assert mini.dataset == []


def test_cache_key_covers_every_input(tmp_path, tok):
    base = {"sources": [("a", "f1")], "sft_only": [], "data_split": "2,4,4", "train_phase": 1, "seed": 1,
            "tokenizer": "t", "max_seq_len": 64, "end_of_conversation_token": "<|endoftext|>"}
    variants = [dict(base, **{k: v}) for k, v in [("sources", [("a", "f2")]), ("sft_only", [("b", "f")]),
                                                  ("data_split", "6,2,2"), ("train_phase", 2), ("seed", 2),
                                                  ("tokenizer", "u"), ("max_seq_len", 65),
                                                  ("end_of_conversation_token", "</s>")]]
    keys = {cache_key(v) for v in variants} | {cache_key(base)}
    assert len(keys) == len(variants) + 1 and cache_key(dict(base)) == cache_key(base)


def test_stale_cache_is_never_reused(tmp_path, tok):
    src = tmp_path / "src"
    _write_rows(src, n=20)
    out = tmp_path / "cache"
    create = lambda **kw: create_prompt_dataset(-1, [str(src)], "1,0,0", str(out), 1, 1, tok, 32, **kw)[0]
    assert sorted(_prompt_ids(create(), tok)) == list(range(20))
    first = set(os.listdir(out))
    # Rewrite the file with the same size and mtime: only a content hash notices.
    stat = os.stat(src / "train.json")
    text = (src / "train.json").read_text().replace("q1\"", "q9\"", 1).replace("q0 ", "q7 ", 1)
    (src / "train.json").write_text(text)
    os.utime(src / "train.json", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(src / "train.json").st_size == stat.st_size
    assert sorted(_prompt_ids(create(), tok)) == sorted([7] + list(range(1, 20)))
    second = set(os.listdir(out))
    assert len(second) == 2 and first < second
    # A corrupt file under the right name is rebuilt, not trusted.
    newest = (second - first).pop()
    (out / newest).write_bytes(b"junk")
    assert len(create()) == 20
    # Changing the tokenizer or max length makes new entries too.
    create_prompt_dataset(-1, [str(src)], "1,0,0", str(out), 1, 1, tok, 33)
    assert len(os.listdir(out)) == 3
    assert all(name.endswith(".safetensors") for name in os.listdir(out))


def test_sources_local_jsonfile_directory_and_cut(tmp_path, tok, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_rows(tmp_path / "data", n=12, eval_n=3)
    raw = get_raw_dataset("local/jsonfile", str(tmp_path / "c"), 1, -1)
    assert len(raw.get_train_data()) == 12 and len(raw.get_eval_data()) == 3
    sample = raw.get_train_data()[0]
    assert raw.get_prompt_and_chosen(sample) == " Human: q0 Assistant: good0"
    assert raw.get_prompt_and_rejected(sample) == " Human: q0 Assistant: bad0"
    # A directory without eval.json gets a seeded 9:1 cut; JSON lines work too.
    folder = tmp_path / "jl"
    folder.mkdir()
    (folder / "train.json").write_text("\n".join(json.dumps({"prompt": f"p{i}", "chosen": "c", "rejected": "r"})
                                                 for i in range(20)))
    raw = get_raw_dataset(str(folder), "", 3, -1)
    train = [raw.get_prompt(r) for r in raw.get_train_data()]
    evaluation = [raw.get_prompt(r) for r in raw.get_eval_data()]
    assert len(train) == 18 and len(evaluation) == 2 and not set(train) & set(evaluation)
    with pytest.raises(RuntimeError, match="unknown dataset"):
        get_raw_dataset("nobody/nothing", "", 1, -1)


def test_embedded_synthetic_source(tmp_path, tok):
    raw = get_raw_dataset("dschat/synthetic:200", "", 1, -1)
    assert len(raw.get_train_data()) == 200 and len(raw.get_eval_data()) == 20
    assert raw.get_prompt(raw.get_train_data()[0]).startswith("\n\nHuman: ")
    train, evaluation = create_prompt_dataset(-1, ["dschat/synthetic:200"], "2,4,4", str(tmp_path), 3, None, tok, 32)
    assert len(train) == 80 and len(evaluation) == 8


def test_named_datasets_offline(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(RuntimeError, match="not installed.*local/jsonfile"):
        get_raw_dataset("Dahoas/rm-static", "", 1, -1)

    calls = []

    def load_dataset(name, config=None):
        calls.append((name, config, fake.config.HF_HUB_OFFLINE))
        if name == "openai/webgpt_comparisons":
            return {"train": [{"question": {"full_text": f"Q{i}"}, "answer_0": "A [1] x (2)", "answer_1": "B",
                               "score_0": -1.0 if i % 2 else 1.0, "score_1": 0.0} for i in range(10)]}
        if name == "stanfordnlp/SHP":
            rows = [{"history": "H", "human_ref_A": "A", "human_ref_B": "B", "labels": 0}]
            return {"train": rows, "validation": rows}
        rows = [{"prompt": "\n\nHuman: hi\n\nAssistant:", "chosen": " yes", "rejected": " no"}]
        return {"train": rows, "test": rows}

    fake = types.SimpleNamespace(load_dataset=load_dataset, config=types.SimpleNamespace(HF_HUB_OFFLINE=False))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    rm = get_raw_dataset("Dahoas/rm-static", "", 1, -1)
    assert rm.get_prompt_and_chosen(rm.get_train_data()[0]) == "\n\nHuman: hi\n\nAssistant: yes"
    assert calls[-1] == ("Dahoas/rm-static", None, True) and fake.config.HF_HUB_OFFLINE is False
    web = get_raw_dataset("openai/webgpt_comparisons", "", 1, -1)
    assert len(web.get_train_data()) == 9 and len(web.get_eval_data()) == 1
    by_q = {web.get_prompt(r): r for r in list(web.get_train_data()) + list(web.get_eval_data())}
    assert web.get_chosen(by_q[" Human: Q0 Assistant:"]) == " A x" and web.get_rejected(by_q[" Human: Q0 Assistant:"]) == " B"
    assert web.get_chosen(by_q[" Human: Q1 Assistant:"]) == " B"
    shp = get_raw_dataset("stanfordnlp/SHP", "", 1, -1)
    assert shp.get_prompt_and_chosen(shp.get_eval_data()[0]) == " Human: H Assistant: B"


def test_unsupervised_blocks(tmp_path, tok):
    assert group_into_blocks([[1, 2, 3], [4, 5], [6, 7, 8]], 3).tolist() == [[1, 2, 3], [4, 5, 6]]
    text = tmp_path / "corpus.txt"
    text.write_text("\n".join(f"line number {i} of text" for i in range(50)))
    args = types.SimpleNamespace(unsupervised_dataset_name=str(text), unsupervised_dataset_config_name=None,
                                 max_prompt_seq_len=8, max_answer_seq_len=8)
    data = get_unsupervised_data(args, tok)
    total = sum(len(tok(line)["input_ids"]) for line in text.read_text().splitlines())
    assert len(data) == total // 16
    item = data[0]
    assert item["input_ids"].shape == (16, ) and torch.equal(item["labels"], item["input_ids"])
    assert item["attention_mask"].eq(1).all()


def _two_rank_build(src, out, tok_dir):
    tok = tokmod.load_embedded_tokenizer(tok_dir)
    train, _ = create_prompt_dataset(-1, [src], "2,4,4", out, 2, 1, tok, 32)
    return [train[i][0].tolist() for i in range(len(train))], sorted(os.listdir(out))


def test_cache_built_once_across_ranks(tmp_path, tok, monkeypatch):
    import dschat.data.data_utils as data_utils
    log = tmp_path / "builders.log"
    real_save = data_utils.save_tensors_atomic

    def logged_save(*args, **kwargs):
        with open(log, "a") as handle:
            handle.write(os.environ.get("RANK", "?") + "\n")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(data_utils, "save_tensors_atomic", logged_save)  # inherited by the forked ranks
    src = _write_rows(tmp_path / "src")
    out = str(tmp_path / "cache")
    tok_dir = str(tmp_path / "tok")
    tokmod.load_embedded_tokenizer(tok_dir)
    results = run_distributed(_two_rank_build, world_size=2, args=(src, out, tok_dir), timeout=120)
    assert results[0] == results[1]
    assert len(results[0][1]) == 1  # one cache file, no leftovers
    assert log.read_text().split() == ["0"]  # built by global rank 0 only
