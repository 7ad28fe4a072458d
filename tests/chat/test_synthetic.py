"""The embedded synthetic preference set and its answer checker."""
import json
from collections import Counter

import pytest

from dschat.data.raw_datasets import LocalJsonFileDataset
from dschat.data.synthetic import (REJECTED_KINDS, TASK_FAMILIES, SyntheticTasks, check_answer, expected_answer,
                                   extract_question, format_prompt, write_jsonfile_dataset)


@pytest.fixture(scope="module")
def default_split():
    return SyntheticTasks().split()


def test_generator_is_deterministic_and_seeded():
    a = SyntheticTasks(seed=3, train_size=300, eval_size=30).records()
    b = SyntheticTasks(seed=3, train_size=300, eval_size=30).records()
    c = SyntheticTasks(seed=4, train_size=300, eval_size=30).records()
    assert a == b
    assert a != c
    assert SyntheticTasks(seed=3).fingerprint() == SyntheticTasks(seed=3).fingerprint()
    assert SyntheticTasks(seed=3).fingerprint() != SyntheticTasks(seed=4).fingerprint()


def test_default_set_size_coverage_and_disjoint_prompts(default_split):
    train, evaluation = default_split
    assert len(train) == 5000 and len(evaluation) == 500
    prompts = [r["prompt"] for r in train + evaluation]
    assert len(set(prompts)) == len(prompts)
    for part in (train, evaluation):
        assert set(Counter(r["task"] for r in part)) == set(TASK_FAMILIES)
        kinds = Counter(r["rejected_kind"] for r in part)
        assert set(kinds) == set(REJECTED_KINDS)
        assert kinds["wrong"] > kinds["evasive"] > 0  # all three kinds of bad answer, wrong the most common
    for record in train[:50]:
        assert record["prompt"].startswith("\n\nHuman: ") and record["prompt"].endswith("\n\nAssistant:")
        assert record["chosen"].startswith(" ") and record["rejected"].startswith(" ")


def test_chosen_always_correct_and_rejected_graded_by_kind(default_split):
    train, evaluation = default_split
    for record in train + evaluation:
        assert check_answer(record["prompt"], record["chosen"]), record
        # Wrong, evasive and rambling-lead-in answers fail; answer-then-chatter passes by the documented rule.
        assert check_answer(record["prompt"], record["rejected"]) == (record["rejected_kind"] == "padded_suffix"), record


@pytest.mark.parametrize("question, answer", [
    ("What is 12 + 30?", "42"),
    ("What is 9 - 4?", "5"),
    ("What is 7 times 8?", "56"),
    ("Reverse the word apple.", "elppa"),
    ("Spell tiger backwards.", "regit"),
    ("Write milk in capital letters.", "MILK"),
    ("How many letters are in the word island?", "6"),
    ("Count the letters in cat.", "3"),
    ("Sort these numbers: 13 2 20 4.", "2 4 13 20"),
    ("What is the largest number in 9 20 6?", "20"),
    ("What is the smallest number in 12 3 14 5 18?", "3"),
    ("How many numbers are in the list 1 2 3 4 5?", "5"),
    ("Which city is the capital of South Korea?", "Seoul"),
    ("Name the capital city of Argentina.", "Buenos Aires"),
    ("What colour is a ripe banana?", "yellow"),
])
def test_expected_answers_by_hand(question, answer):
    assert expected_answer(format_prompt(question)) == answer


def test_check_answer_rule():
    prompt = format_prompt("What is 3 + 4?")
    for good in ("7", " 7 ", "7.", "7!", "7<|endoftext|>garbage", "7</s>", "7\n\nHuman: next", "7. I hope this helps.",
                 "7, and that is all."):
        assert check_answer(prompt, good), good
    for bad in ("70", "7 8", "7.5", "The answer is 7", "I don't know.", "", "8"):
        assert not check_answer(prompt, bad), bad
    capital = format_prompt("What is the capital of France?")
    assert check_answer(capital, "paris") and check_answer(capital, " PARIS.")
    upper = format_prompt("Write apple in capital letters.")
    assert check_answer(upper, "APPLE") and not check_answer(upper, "Apple")
    sort = format_prompt("Sort these numbers: 3 1 2.")
    assert check_answer(sort, "1 2 3") and not check_answer(sort, "1 2 3 4") and not check_answer(sort, "3 2 1")


def test_check_answer_templates_and_unknown_prompts():
    assert extract_question(" Human: What is 3 + 4? Assistant:") == "What is 3 + 4?"
    assert extract_question("\n\nHuman: earlier\n\nAssistant: x\n\nHuman: What is 1 + 1?\n\nAssistant:") == \
        "What is 1 + 1?"
    assert check_answer(" Human: What is 3 + 4? Assistant:", " 7")
    assert check_answer("What is 3 + 4?", "7")
    with pytest.raises(ValueError):
        check_answer(format_prompt("Tell me a joke."), "no")


def test_write_jsonfile_dataset_round_trip(tmp_path):
    tasks = SyntheticTasks(seed=1, train_size=40, eval_size=8)
    train_path, eval_path = write_jsonfile_dataset(str(tmp_path), tasks)
    train_rows = json.loads(train_path.read_text())
    assert len(train_rows) == 40 and len(json.loads(eval_path.read_text())) == 8
    assert set(train_rows[0]) == {"prompt", "chosen", "rejected"}
    assert not train_rows[0]["prompt"][0].isspace() and not train_rows[0]["chosen"][0].isspace()
    raw = LocalJsonFileDataset("", 1, -1, str(tmp_path), tmp_path)
    for row, record in zip(raw.get_train_data(), tasks.split()[0]):
        assert raw.get_prompt(row).startswith(" Human: ")
        assert check_answer(raw.get_prompt(row), raw.get_chosen(row))
        assert raw.get_chosen(row) == record["chosen"]  # " " + stripped answer restores the original


def _ints(text):
    return [int(x) for x in text.split()]


def test_wrong_answers_have_no_surface_shortcut(default_split):
    """[Note: no shortcuts]: wrong min/max/sort answers fall on both sides of the right one."""
    train, _ = default_split
    wrong = [r for r in train if r["rejected_kind"] == "wrong"]
    for task, beats in (("min", lambda bad, good: bad < good), ("max", lambda bad, good: bad > good)):
        rows = [r for r in wrong if r["task"] == task]
        pairs = [(int(r["rejected"]), int(r["chosen"]), _ints(extract_question(r["prompt"]).split(" in ")[1][:-1]))
                 for r in rows]
        # "smaller is better" (for min) / "larger is better" (for max) must fail on a good share of pairs
        assert 0.2 < sum(beats(bad, good) for bad, good, _ in pairs) / len(pairs) < 0.8, task
        # and so must "any member of the list is right"
        assert 0.2 < sum(bad in listed for bad, _, listed in pairs) / len(pairs) < 0.8, task
    sorts = [r for r in wrong if r["task"] == "sort"]
    ascending = [r for r in sorts if _ints(r["rejected"]) == sorted(_ints(r["rejected"]))]
    assert 0.15 < len(ascending) / len(sorts) < 0.6  # "ascending is better" fails on these
    assert all(len(_ints(r["rejected"])) == len(_ints(r["chosen"])) for r in sorts)


def test_families_restrict_the_set():
    tasks = SyntheticTasks(train_size=200, eval_size=20, families=("max", "sort"))
    records = tasks.records()
    assert {r["task"] for r in records} == {"max", "sort"}
    assert all(check_answer(r["prompt"], r["chosen"]) for r in records)
    assert tasks.fingerprint() != SyntheticTasks(train_size=200, eval_size=20).fingerprint()
    with pytest.raises(ValueError):
        SyntheticTasks(families=("max", "poetry"))
