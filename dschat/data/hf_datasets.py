"""The named Hugging Face datasets DS-Chat knows, loaded strictly offline.

A `--data_path` entry selects a class when it *contains* one of the known
names (DS-Chat's substring rule), so `/data/Dahoas/rm-static` also works.
If the entry is an existing directory it is read with
`datasets.load_from_disk`; otherwise `datasets.load_dataset` is called with
the hub forced offline, which serves it from the local cache or fails. We
never download: the error says how to provide the data instead.

Templates: rm-static and full-hh already hold `\\n\\nHuman: ... \\n\\nAssistant:`
text and are used as-is; the others become `" Human: " + q + " Assistant:"`
with answers `" " + a` (see each class for its exceptions).
"""
import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence, Tuple, Type

from .raw_base import PromptRawDataset, cut_train_for_eval

__all__ = ["KNOWN_DATASETS", "load_hf_dataset", "get_hf_raw_dataset"]

_OFFLINE_HELP = ("Provide the data offline instead: a directory holding train.json/eval.json with "
                 "{{prompt, chosen, rejected}} records (pass the directory as --data_path), ./data/train.json with "
                 "--data_path local/jsonfile, a `datasets.save_to_disk` folder, or the embedded set "
                 "--data_path dschat/synthetic.")


@contextlib.contextmanager
def _hub_offline(datasets_module: Any) -> Iterator[None]:
    """Force `datasets`/`huggingface_hub` offline for one call.

    Their offline switches are module attributes read at call time; setting
    them (and restoring them after) is the only way to forbid downloads per
    call without touching the process environment.
    """
    targets = [(getattr(datasets_module, "config", None), "HF_HUB_OFFLINE"),
               (getattr(datasets_module, "config", None), "HF_DATASETS_OFFLINE")]
    try:
        import huggingface_hub.constants as hub_constants
        targets.append((hub_constants, "HF_HUB_OFFLINE"))
    except ImportError:
        pass
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in targets if obj is not None and hasattr(obj, attr)]
    for obj, attr, _ in saved:
        setattr(obj, attr, True)
    try:
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def load_hf_dataset(name: str, config_name: Optional[str] = None) -> Mapping[str, Any]:
    """`load_from_disk(name)` for a directory, else `load_dataset(name, config_name)` offline."""
    try:
        import datasets
    except ImportError as err:
        raise RuntimeError(f"dataset {name!r} needs the optional `datasets` package, which is not installed. "
                           + _OFFLINE_HELP.format()) from err
    try:
        if os.path.isdir(name):
            return datasets.load_from_disk(name)
        with _hub_offline(datasets):
            return datasets.load_dataset(name, config_name)
    except Exception as err:  # datasets raises many types for "not cached"; all mean the same to the user
        raise RuntimeError(f"dataset {name!r} is not available offline ({type(err).__name__}: {err}). "
                           + _OFFLINE_HELP.format()) from err


def _source_fingerprint(name: str, splits: Mapping[str, Any]) -> str:
    """Content identity of a loaded dataset: the stats of a `save_to_disk`
    folder, else `datasets`' own per-split fingerprints (which follow the
    cached files)."""
    digest = hashlib.sha256(name.encode())
    if os.path.isdir(name):
        for path in sorted(Path(name).rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(name)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    else:
        for split in sorted(splits):
            data = splits[split]
            digest.update(f"{split}:{len(data)}:{getattr(data, '_fingerprint', '')}".encode())
    return digest.hexdigest()


def _human(question: Any) -> Optional[str]:
    return None if not question else f" Human: {question} Assistant:"


def _answer(text: Any) -> Optional[str]:
    return None if not text else f" {text}"


class _HFDataset(PromptRawDataset):
    """A hub dataset. `train_split`/`eval_split` name its splits; an
    `eval_split` of None means "cut 9:1 from train"."""
    hub_name = ""
    config_name: Optional[str] = None
    train_split = "train"
    eval_split: Optional[str] = "test"

    def __init__(self, output_path: str, seed: int, local_rank: int, dataset_name: str) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name)
        source = dataset_name if os.path.isdir(dataset_name) else self.hub_name
        self.splits = load_hf_dataset(source, self.config_name)
        train = self.splits[self.train_split]
        if self.eval_split is None:
            self.train_rows, self.eval_rows = cut_train_for_eval(train, seed, 0), cut_train_for_eval(train, seed, 1)
        else:
            self.train_rows, self.eval_rows = train, self.splits[self.eval_split]
        self._fingerprint = _source_fingerprint(source, self.splits)

    def fingerprint(self) -> str:
        return f"hf:{self.hub_name}:{self._fingerprint}"


class _RmStatic(_HFDataset):
    """Fields `prompt`, `chosen`, `rejected`, already templated."""
    hub_name = "Dahoas/rm-static"

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["prompt"]

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["chosen"]

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["rejected"]


class _FullHH(_RmStatic):
    hub_name = "Dahoas/full-hh-rlhf"


class _SyntheticGptj(_HFDataset):
    hub_name = "Dahoas/synthetic-instruct-gptj-pairwise"
    eval_split = None

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _human(sample["prompt"])

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(sample["chosen"])

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(sample["rejected"])


class _Yitingxie(_HFDataset):
    """`prompt` ends in a Human turn; answers are full `Assistant: ...` turns."""
    hub_name = "yitingxie/rlhf-reward-datasets"

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["prompt"] + "Assistant:"

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["chosen"].split("Assistant:")[-1]

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return sample["rejected"].split("Assistant:")[-1]


_CITATION_SPACED = re.compile(r" [\(\[].*?[\)\]]")
_CITATION = re.compile(r"[\(\[].*?[\)\]]")


def _strip_citations(text: str) -> str:
    return _CITATION.sub("", _CITATION_SPACED.sub("", text))


class _WebGPT(_HFDataset):
    """The higher-scored answer is chosen; `[1]`-style citations are removed."""
    hub_name = "openai/webgpt_comparisons"
    eval_split = None

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _human(sample["question"]["full_text"])

    def _ranked(self, sample: Mapping[str, Any]) -> Tuple[str, str]:
        if float(sample["score_0"]) >= float(sample["score_1"]):
            return sample["answer_0"], sample["answer_1"]
        return sample["answer_1"], sample["answer_0"]

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(_strip_citations(self._ranked(sample)[0]))

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(_strip_citations(self._ranked(sample)[1]))


class _SHP(_HFDataset):
    """`labels == 1` means reference A is preferred."""
    hub_name = "stanfordnlp/SHP"
    eval_split = "validation"

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _human(sample["history"])

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(sample["human_ref_A"] if int(sample["labels"]) == 1 else sample["human_ref_B"])

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(sample["human_ref_B"] if int(sample["labels"]) == 1 else sample["human_ref_A"])


class _ShareGPT(_HFDataset):
    """SFT only: USER/ASSISTANT turns renamed to Human/Assistant."""
    hub_name = "pvduy/sharegpt_alpaca_oa_vicuna_format"

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        prompt = sample.get("prompt")
        return prompt.replace("USER", "Human").replace("ASSISTANT", "Assistant") if prompt else None

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(sample.get("label"))


class _QuestionAnswer(_HFDataset):
    """SFT-only sources with a question field and an answer field."""
    question_key = ""
    answer_key = ""

    def _question(self, sample: Mapping[str, Any]) -> Any:
        return sample.get(self.question_key)

    def _answer_text(self, sample: Mapping[str, Any]) -> Any:
        return sample.get(self.answer_key)

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _human(self._question(sample))

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _answer(self._answer_text(sample))


class _Zhihu(_QuestionAnswer):
    hub_name, eval_split, question_key, answer_key = "wangrui6/Zhihu-KOL", None, "INSTRUCTION", "RESPONSE"


class _HC3Chinese(_QuestionAnswer):
    hub_name, config_name, eval_split, question_key = "Hello-SimpleAI/HC3-Chinese", "all", None, "question"

    def _answer_text(self, sample: Mapping[str, Any]) -> Any:
        answers = sample.get("human_answers") or []
        return answers[0] if answers else None


class _Mkqa(_QuestionAnswer):
    """One language of the multilingual mkqa set."""
    hub_name, eval_split, language = "mkqa", None, ""

    def _question(self, sample: Mapping[str, Any]) -> Any:
        return (sample.get("queries") or {}).get(self.language)

    def _answer_text(self, sample: Mapping[str, Any]) -> Any:
        answers = (sample.get("answers") or {}).get(self.language) or []
        return answers[0].get("text") if answers else None


class _MkqaChinese(_Mkqa):
    language = "zh_cn"


class _MkqaJapanese(_Mkqa):
    language = "ja"


class _Miracl(_HFDataset):
    """A query with a relevant (chosen) and an irrelevant (rejected) passage."""
    eval_split = "dev"

    def get_prompt(self, sample: Mapping[str, Any]) -> Optional[str]:
        return _human(sample.get("query"))

    def _passage(self, sample: Mapping[str, Any], key: str) -> Optional[str]:
        passages = sample.get(key) or []
        return _answer(passages[0].get("text")) if passages else None

    def get_chosen(self, sample: Mapping[str, Any]) -> Optional[str]:
        return self._passage(sample, "positive_passages")

    def get_rejected(self, sample: Mapping[str, Any]) -> Optional[str]:
        return self._passage(sample, "negative_passages")


class _MiraclZh(_Miracl):
    hub_name = "Cohere/miracl-zh-queries-22-12"


class _MiraclJa(_Miracl):
    hub_name = "Cohere/miracl-ja-queries-22-12"


class _QgJaquad(_QuestionAnswer):
    hub_name, eval_split, question_key, answer_key = "lmqg/qg_jaquad", "validation", "question", "sentence"


class _QagJaquad(_QuestionAnswer):
    hub_name, eval_split, answer_key = "lmqg/qag_jaquad", "validation", "paragraph"

    def _question(self, sample: Mapping[str, Any]) -> Any:
        questions = sample.get("questions") or []
        return questions[0] if questions else None


# Matched by substring, in this order (longer names first where one contains another).
KNOWN_DATASETS: Dict[str, Type[_HFDataset]] = {
    "Dahoas/rm-static": _RmStatic,
    "Dahoas/full-hh-rlhf": _FullHH,
    "Dahoas/synthetic-instruct-gptj-pairwise": _SyntheticGptj,
    "yitingxie/rlhf-reward-datasets": _Yitingxie,
    "openai/webgpt_comparisons": _WebGPT,
    "stanfordnlp/SHP": _SHP,
    "pvduy/sharegpt_alpaca_oa_vicuna_format": _ShareGPT,
    "wangrui6/Zhihu-KOL": _Zhihu,
    "Cohere/miracl-zh-queries-22-12": _MiraclZh,
    "Hello-SimpleAI/HC3-Chinese": _HC3Chinese,
    "mkqa-Chinese": _MkqaChinese,
    "mkqa-Japanese": _MkqaJapanese,
    "Cohere/miracl-ja-queries-22-12": _MiraclJa,
    "lmqg/qg_jaquad": _QgJaquad,
    "lmqg/qag_jaquad": _QagJaquad,
}


def get_hf_raw_dataset(dataset_name: str, output_path: str, seed: int, local_rank: int) -> PromptRawDataset:
    """The known dataset whose name `dataset_name` contains; RuntimeError otherwise."""
    for known, cls in KNOWN_DATASETS.items():
        if known in dataset_name:
            return cls(output_path, seed, local_rank, dataset_name)
    names: Sequence[str] = ["dschat/synthetic", "local/jsonfile", "<dir with train.json>", *KNOWN_DATASETS]
    raise RuntimeError(f"unknown dataset {dataset_name!r}; expected one of: {', '.join(names)}")
