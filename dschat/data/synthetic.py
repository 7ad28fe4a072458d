"""The embedded preference dataset: synthetic tasks a program can grade.

Why it exists: the README's first command must train all three DS-Chat steps
offline on a CPU, and the demo must show that PPO made the actor *better*,
not only that a reward curve moved. So every prompt here has a single
correct answer that `check_answer` can verify, and each record pairs a
concise correct answer (chosen) with a worse one (rejected).

Task families (each with a few phrasings so facts generalise across them):
arithmetic (add, subtract, multiply small numbers), string transforms
(reverse a word, upper-case it, count its letters), list operations (sort,
largest, smallest, length of a short list) and look-ups in two small tables
(capitals, fruit colours).

Rejected answers mix three kinds of bad answer:
- ``wrong``: a plausible but incorrect answer (see [Note: no shortcuts]);
- ``evasive``: "I don't know." and friends;
- ``padded``: the correct answer buried in filler, either after a rambling
  lead-in (``padded_prefix``) or followed by chatter (``padded_suffix``).

Texts use the Dahoas/rm-static template: the prompt is
``"\\n\\nHuman: <question>\\n\\nAssistant:"`` and answers start with a space.

[Note: no shortcuts]
A reward model trained on these pairs learns whatever separates chosen from
rejected most cheaply, and PPO then optimises exactly that. So a ``wrong``
answer must not differ from the right one by a surface feature that is
easier to learn than the task. Version 1 failed this: a wrong "smallest
number" was always another list member, hence *larger* than the right one
(and a wrong maximum smaller, a wrong sort a non-ascending shuffle), so
"smaller is better" / "ascending is better" ranked every pair right, and a
PPO actor learned to answer small numbers and ascending lists. Now wrong
answers fall on both sides of the right one: numbers are near misses
(+-1..10, either side); a wrong minimum or maximum is another member, or a
near miss that is not in the list, above or below; a wrong sort is a
shuffle, an adjacent swap, or an *ascending* list with one number nudged
to a value outside the list. Wrong words keep the letters (reverse) or the
word (case). Only correctness separates the pairs.

[Note: answer grading] `check_answer` recomputes the expected answer from
the question and accepts a generated answer when, after cutting it at the
first end marker (``<|endoftext|>``, ``</s>``, ``<pad>``, or a following
``Human:`` turn) and collapsing whitespace, it *starts with* the expected
answer and what follows is nothing, trailing punctuation, or a clause break
(one of ``.,;:!?`` followed by a space). So ``"7"``, ``"7."`` and
``"7. I hope this helps."`` are correct; ``"70"``, ``"7 8"``,
``"The answer is 7"`` (a ``padded_prefix`` answer) and ``"I don't know."``
are not. Look-up answers ignore case; string transforms do not (``APPLE``
is the upper-case of ``apple``, ``Apple`` is not).
"""
import hashlib
import json
import os
import random
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = [
    "GENERATOR_VERSION", "SYNTHETIC_SEED", "DEFAULT_TRAIN_SIZE", "DEFAULT_EVAL_SIZE", "TASK_FAMILIES",
    "REJECTED_KINDS", "SyntheticTasks", "format_prompt", "extract_question", "expected_answer",
    "check_answer", "write_jsonfile_dataset"
]

# Bump whenever the generated records change, so caches keyed on it go stale.
GENERATOR_VERSION = 2
SYNTHETIC_SEED = 0
DEFAULT_TRAIN_SIZE = 5000
DEFAULT_EVAL_SIZE = 500
REJECTED_KINDS = ("wrong", "evasive", "padded_prefix", "padded_suffix")
# Probabilities of each rejected kind, in REJECTED_KINDS order.
_REJECTED_WEIGHTS = (0.5, 0.2, 0.15, 0.15)

_END_MARKERS = ("<|endoftext|>", "</s>", "<pad>", "Human:")
_CLAUSE_BREAK = re.compile(r"[.,;:!?]+(\s|$)")

_EVASIVE = ("I don't know.", "I am not sure.", "I cannot answer that.", "Sorry, I have no idea.",
            "That is hard to say.")
_LEAD_INS = ("Well, let me think about this for a moment. The answer is", "That is a good question. I believe it is",
             "Hmm, let me see. It should be")
_FILLERS = ("I hope this helps.", "Let me know if you have more questions.", "That was a fun one to work out.",
            "I am quite sure about this one.")

# Short words for the string tasks; no palindromes, so a reversed word is a
# real change.
_WORDS = (
    "apple", "river", "cloud", "stone", "green", "house", "light", "table", "chair", "water", "bread", "plant",
    "music", "paper", "sugar", "tiger", "zebra", "horse", "mouse", "snake", "eagle", "train", "plane", "truck",
    "sound", "night", "smile", "dream", "storm", "beach", "ocean", "field", "grass", "flower", "garden", "window",
    "pencil", "rocket", "planet", "silver", "golden", "winter", "summer", "spring", "autumn", "candle", "basket",
    "bottle", "button", "carpet", "castle", "cookie", "dinner", "doctor", "dragon", "engine", "forest", "friend",
    "guitar", "hammer", "island", "jacket", "kitten", "ladder", "lizard", "magnet", "market", "monkey", "orange",
    "parrot", "pepper", "pillow", "pocket", "puzzle", "rabbit", "ribbon", "saddle", "school", "shadow", "spider",
    "ticket", "turtle", "violin", "wallet", "yellow", "cat", "dog", "sun", "moon", "star", "tree", "book", "fish",
    "bird", "frog", "milk", "rain", "snow", "wind", "fire", "rock", "sand", "ship", "lamp", "door", "king", "bell",
    "coin", "desk", "drum", "gift", "hat", "key", "map", "net", "pen", "cup", "box", "bag")

_CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima",
    "Chile": "Santiago", "Canada": "Ottawa", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin",
    "Belgium": "Brussels", "Hungary": "Budapest", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Indonesia": "Jakarta",
    "South Korea": "Seoul", "Australia": "Canberra", "Turkey": "Ankara", "Cuba": "Havana", "Argentina": "Buenos Aires",
    "Nigeria": "Abuja", "Morocco": "Rabat", "Ghana": "Accra",
}

_FRUIT_COLOURS = {
    "banana": "yellow", "lemon": "yellow", "lime": "green", "strawberry": "red", "cherry": "red",
    "raspberry": "red", "cranberry": "red", "tomato": "red", "blueberry": "blue", "blackberry": "black",
    "orange": "orange", "tangerine": "orange", "pumpkin": "orange", "grape": "purple", "plum": "purple",
    "coconut": "brown", "watermelon": "green", "avocado": "green",
}


@dataclass(frozen=True)
class _Family:
    """One task family: how to draw a question, grade it, and get it wrong.

    `solve` parses a question back into its expected answer (None when the
    question is not from this family), which is what lets `check_answer`
    grade any generated answer without a lookup table of prompts.
    """
    name: str
    make: Callable[[random.Random], str]
    solve: Callable[[str], Optional[str]]
    wrong: Callable[[random.Random, str, str], str]  # (rng, question, correct answer) -> wrong answer
    case_sensitive: bool = True


def _pick(rng: random.Random, options: Sequence[str], exclude: str) -> str:
    return rng.choice([o for o in options if o != exclude])


def _wrong_number(rng: random.Random, answer: str) -> str:
    value = int(answer)
    delta = rng.choice([d for d in range(-10, 11) if d != 0 and value + d >= 0])
    return str(value + delta)


def _numbers(text: str) -> List[int]:
    return [int(tok) for tok in text.split()]


def _binary(pattern: str, fn: Callable[[int, int], int]) -> Callable[[str], Optional[str]]:
    regex = re.compile(pattern)

    def solve(question: str) -> Optional[str]:
        m = regex.fullmatch(question)
        return None if m is None else str(fn(int(m.group(1)), int(m.group(2))))

    return solve


def _phrased(templates: Sequence[str], group: str) -> Tuple[Sequence[str], List["re.Pattern[str]"]]:
    """Templates with one `{x}` slot and their parsing regexes."""
    regexes = [re.compile(re.escape(t).replace(re.escape("{x}"), f"(?P<x>{group})")) for t in templates]
    return templates, regexes


def _lookup_solver(regexes: Sequence["re.Pattern[str]"], fn: Callable[[str], Optional[str]]) -> Callable[[str], Optional[str]]:

    def solve(question: str) -> Optional[str]:
        for regex in regexes:
            m = regex.fullmatch(question)
            if m is not None:
                return fn(m.group("x"))
        return None

    return solve


def _sub_make(rng: random.Random) -> str:
    a, b = rng.randint(0, 50), rng.randint(0, 50)
    return f"What is {max(a, b)} - {min(a, b)}?"


def _list_text(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(str(n) for n in rng.sample(range(0, 21), rng.randint(lo, hi)))


def _near_misses(value: int, excluded: Sequence[int], spread: int = 3) -> List[int]:
    """Non-negative values near `value`, on both sides where possible, that are not in `excluded`.

    Within `spread` of `value`, widened until something qualifies (a list of
    at most 6 numbers cannot exclude every value within 10).
    """
    while True:
        found = [value + d for d in range(-spread, spread + 1) if d and value + d >= 0 and value + d not in excluded]
        if found:
            return found
        spread += 1


def _wrong_sort(rng: random.Random, question: str, answer: str) -> str:
    """A shuffle, an adjacent swap, or an ascending list with one value nudged off the list.

    The third kind is ascending like the right answer, so "ascending" alone
    cannot tell right from wrong ([Note: no shortcuts]).
    """
    values = [int(v) for v in answer.split()]
    kind = rng.choice(("shuffle", "swap", "nudge"))
    if kind == "nudge":
        index = rng.randrange(len(values))
        nudged = sorted(values[:index] + [rng.choice(_near_misses(values[index], values))] + values[index + 1:])
        if nudged != values:
            return " ".join(str(v) for v in nudged)
    if kind == "swap":
        index = rng.randrange(len(values) - 1)
        swapped = values[:index] + [values[index + 1], values[index]] + values[index + 2:]
        return " ".join(str(v) for v in swapped)
    shuffled = list(values)
    while shuffled == values:
        rng.shuffle(shuffled)
    return " ".join(str(v) for v in shuffled)


def _wrong_extreme(rng: random.Random, question: str, answer: str) -> str:
    """A wrong minimum/maximum: another member of the list, or a near miss outside it, either side.

    Members alone are all larger than the minimum (smaller than the
    maximum), which the reward model would learn instead of the task
    ([Note: no shortcuts]).
    """
    listed = [int(n) for n in re.findall(r"\d+", question)]
    if rng.random() < 0.4:
        return _pick(rng, [str(n) for n in listed], answer)
    return str(rng.choice(_near_misses(int(answer), listed)))


def _wrong_reverse(rng: random.Random, answer: str) -> str:
    letters = list(answer)
    for _ in range(20):
        rng.shuffle(letters)
        if "".join(letters) != answer:
            return "".join(letters)
    return answer[::-1]  # unreachable for our non-palindromic words; keeps the loop bounded


_REVERSE = _phrased(("Reverse the word {x}.", "Spell {x} backwards."), r"[a-z]+")
_UPPER = _phrased(("Write {x} in capital letters.", "Convert {x} to upper case."), r"[a-z]+")
_COUNT = _phrased(("How many letters are in the word {x}?", "Count the letters in {x}."), r"[a-z]+")
_SORT = _phrased(("Sort these numbers: {x}.", ), r"\d+(?: \d+)*")
_MAX = _phrased(("What is the largest number in {x}?", ), r"\d+(?: \d+)*")
_MIN = _phrased(("What is the smallest number in {x}?", ), r"\d+(?: \d+)*")
_LEN = _phrased(("How many numbers are in the list {x}?", ), r"\d+(?: \d+)*")
_CAPITAL = _phrased(("What is the capital of {x}?", "Which city is the capital of {x}?",
                     "Name the capital city of {x}."), r"[A-Za-z ]+")
_FRUIT = _phrased(("What colour is a ripe {x}?", "What is the colour of a ripe {x}?",
                   "Tell me the colour of a ripe {x}."), r"[a-z]+")


def _templated(spec: Tuple[Sequence[str], list], values: Callable[[random.Random], str]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(spec[0]).replace("{x}", values(rng))


def _number_wrong(rng: random.Random, question: str, answer: str) -> str:
    return _wrong_number(rng, answer)


def _build_families() -> Tuple[_Family, ...]:
    capital_of = {k.lower(): v for k, v in _CAPITALS.items()}
    capitals = sorted(set(_CAPITALS.values()))
    colours = sorted(set(_FRUIT_COLOURS.values()))
    words = lambda r: r.choice(_WORDS)
    return (
        _Family("add", lambda r: f"What is {r.randint(0, 50)} + {r.randint(0, 50)}?",
                _binary(r"What is (\d+) \+ (\d+)\?", lambda a, b: a + b), _number_wrong),
        _Family("subtract", _sub_make, _binary(r"What is (\d+) - (\d+)\?", lambda a, b: a - b), _number_wrong),
        _Family("multiply", lambda r: f"What is {r.randint(0, 12)} times {r.randint(0, 12)}?",
                _binary(r"What is (\d+) times (\d+)\?", lambda a, b: a * b), _number_wrong),
        _Family("reverse", _templated(_REVERSE, words), _lookup_solver(_REVERSE[1], lambda w: w[::-1]),
                lambda r, q, a: _wrong_reverse(r, a)),
        _Family("uppercase", _templated(_UPPER, words), _lookup_solver(_UPPER[1], str.upper),
                lambda r, q, a: r.choice([a.lower(), a.capitalize()])),
        _Family("count_letters", _templated(_COUNT, words), _lookup_solver(_COUNT[1], lambda w: str(len(w))),
                _number_wrong),
        _Family("sort", _templated(_SORT, lambda r: _list_text(r, 3, 4)),
                _lookup_solver(_SORT[1], lambda x: " ".join(str(n) for n in sorted(_numbers(x)))),
                _wrong_sort),
        _Family("max", _templated(_MAX, lambda r: _list_text(r, 3, 5)),
                _lookup_solver(_MAX[1], lambda x: str(max(_numbers(x)))), _wrong_extreme),
        _Family("min", _templated(_MIN, lambda r: _list_text(r, 3, 5)),
                _lookup_solver(_MIN[1], lambda x: str(min(_numbers(x)))), _wrong_extreme),
        _Family("list_length", _templated(_LEN, lambda r: _list_text(r, 2, 6)),
                _lookup_solver(_LEN[1], lambda x: str(len(_numbers(x)))), _number_wrong),
        _Family("capital", _templated(_CAPITAL, lambda r: r.choice(sorted(_CAPITALS))),
                _lookup_solver(_CAPITAL[1], lambda c: capital_of.get(c.lower())),
                lambda r, q, a: _pick(r, capitals, a), case_sensitive=False),
        _Family("fruit_colour", _templated(_FRUIT, lambda r: r.choice(sorted(_FRUIT_COLOURS))),
                _lookup_solver(_FRUIT[1], lambda f: _FRUIT_COLOURS.get(f)),
                lambda r, q, a: _pick(r, colours, a), case_sensitive=False),
    )


_FAMILIES = _build_families()
TASK_FAMILIES = tuple(f.name for f in _FAMILIES)


def format_prompt(question: str) -> str:
    """The rm-static prompt template around one question."""
    return f"\n\nHuman: {question}\n\nAssistant:"


def extract_question(prompt: str) -> str:
    """The last Human turn of a prompt (any of DS-Chat's templates), stripped.

    Accepts rm-static (`\\n\\nHuman: q\\n\\nAssistant:`), the `" Human: q
    Assistant:"` template of the other datasets, and a bare question.
    """
    start = prompt.rfind("Human:")
    text = prompt[start + len("Human:"):] if start >= 0 else prompt
    end = text.find("Assistant:")
    return (text[:end] if end >= 0 else text).strip()


def _family_of(question: str) -> Tuple[_Family, str]:
    for family in _FAMILIES:
        answer = family.solve(question)
        if answer is not None:
            return family, answer
    raise ValueError(f"not a question of the synthetic task set: {question!r}")


def expected_answer(prompt: str) -> str:
    """The correct answer to a synthetic prompt; ValueError for other prompts."""
    return _family_of(extract_question(prompt))[1]


def _clean_answer(answer: str) -> str:
    cut = len(answer)
    for marker in _END_MARKERS:
        pos = answer.find(marker)
        if 0 <= pos < cut:
            cut = pos
    return " ".join(answer[:cut].split())


def check_answer(prompt: str, answer: str) -> bool:
    """Whether `answer` correctly answers the synthetic `prompt`.

    The grading rule is [Note: answer grading] in this module's docstring.
    Raises ValueError when `prompt` is not a synthetic task, so a metric over
    the wrong dataset fails loudly instead of reporting zero.
    """
    family, expected = _family_of(extract_question(prompt))
    text = _clean_answer(answer)
    if not family.case_sensitive:
        text, expected = text.lower(), expected.lower()
    if not text.startswith(expected):
        return False
    rest = text[len(expected):]
    return rest == "" or _CLAUSE_BREAK.match(rest) is not None


def _rejected(rng: random.Random, family: _Family, question: str, answer: str) -> Tuple[str, str]:
    kind = rng.choices(REJECTED_KINDS, weights=_REJECTED_WEIGHTS)[0]
    if kind == "wrong":
        return kind, family.wrong(rng, question, answer)
    if kind == "evasive":
        return kind, rng.choice(_EVASIVE)
    if kind == "padded_prefix":
        return kind, f"{rng.choice(_LEAD_INS)} {answer}."
    return kind, f"{answer}. {rng.choice(_FILLERS)}"


def _generate(seed: int, count: int, families: Sequence[str] = TASK_FAMILIES) -> List[Dict[str, str]]:
    """`count` records with distinct prompts, in a seeded random order.

    Families are drawn uniformly; the small ones (look-ups, word tasks) run
    out of distinct questions early and the rest fill in. The final shuffle
    spreads every family over both the train and the eval part.
    """
    rng = random.Random(seed)
    chosen_families = [f for f in _FAMILIES if f.name in families]
    seen: Dict[str, Dict[str, str]] = {}
    attempts = 0
    while len(seen) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct synthetic prompts (got {len(seen)})")
        family = rng.choice(chosen_families)
        question = family.make(rng)
        prompt = format_prompt(question)
        if prompt in seen:
            continue
        answer = family.solve(question)
        assert answer is not None, question
        kind, rejected = _rejected(rng, family, question, answer)
        seen[prompt] = {"prompt": prompt, "chosen": f" {answer}", "rejected": f" {rejected}", "task": family.name,
                        "rejected_kind": kind}
    records = list(seen.values())
    rng.shuffle(records)
    return records


@dataclass(frozen=True)
class SyntheticTasks:
    """A deterministic train/eval split of the synthetic preference set.

    Records are dicts with `prompt`, `chosen`, `rejected` (the rm-static
    fields), plus `task` (the family) and `rejected_kind`. Train and eval
    prompts never coincide. `families` restricts the set to some of
    `TASK_FAMILIES` (the demo uses the ones a tiny model can learn in
    minutes); `check_answer` grades every family whatever the selection.
    """
    seed: int = SYNTHETIC_SEED
    train_size: int = DEFAULT_TRAIN_SIZE
    eval_size: int = DEFAULT_EVAL_SIZE
    families: Tuple[str, ...] = TASK_FAMILIES

    def __post_init__(self) -> None:
        unknown = sorted(set(self.families) - set(TASK_FAMILIES))
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {TASK_FAMILIES}, got {self.families!r}")

    def records(self) -> List[Dict[str, str]]:
        return _generate(self.seed, self.train_size + self.eval_size, self.families)

    def split(self) -> Tuple[List[Dict[str, str]], List[Dict[str, str]]]:
        records = self.records()
        return records[:self.train_size], records[self.train_size:]

    def fingerprint(self) -> str:
        """Identity of the generated content, for cache keys."""
        key = json.dumps([GENERATOR_VERSION, self.seed, self.train_size, self.eval_size, sorted(self.families)])
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def _atomic_write_json(path: Path, payload: object) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, ensure_ascii=False, indent=0)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonfile_dataset(out_dir: str, tasks: Optional[SyntheticTasks] = None) -> Tuple[Path, Path]:
    """Write the set as `train.json`/`eval.json` for the `local/jsonfile` source.

    That source reads `{prompt, chosen, rejected}` records and assembles the
    text as `" " + prompt + " " + answer`, so the leading whitespace of each
    field is dropped here; the sample then reads
    `" Human: <q>\\n\\nAssistant: <answer>"`, which `check_answer` grades too.
    """
    tasks = tasks or SyntheticTasks()
    target = Path(out_dir)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in zip(("train.json", "eval.json"), tasks.split()):
        rows = [{key: rec[key].lstrip() for key in ("prompt", "chosen", "rejected")} for rec in part]
        path = target / name
        _atomic_write_json(path, rows)
        paths.append(path)
    return paths[0], paths[1]
