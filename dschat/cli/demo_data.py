"""The demo's preference data: the embedded synthetic set plus hard negatives.

Why: in the embedded set a wrong answer to "smallest number in 4 17 8" is
always *another member of the list*, so it is always larger than the right
one; likewise wrong maxima are smaller and wrong sorts are shuffles of the
right numbers. A reward model learns "smaller is better" / "ascending is
better", which is perfect on that data, and PPO then exploits it (the actor
learns to answer "0" or any ascending list): the reward rises while the task
success falls. Real preference data does not have such a shortcut, so the
demo adds rejected answers that defeat it: for half of the "wrong" rejected
answers of the min / max / sort tasks, a number *outside* the list that is
smaller than the minimum (larger than the maximum), or an ascending list with
one number changed. Everything else is the embedded set unchanged.

The set is written as `train.json`/`eval.json` (the `local/jsonfile` record
format), which every step reads through `--data_path <folder>`. The folder
name carries the content's fingerprint, so a changed recipe never reuses an
old folder.
"""
import dataclasses
import os
import random
import re
from typing import Dict, List, Optional

from dschat.data.synthetic import SyntheticTasks, expected_answer, write_jsonfile_dataset

__all__ = ["HardNegativeTasks", "write_demo_dataset", "hard_negative", "write_policy_pairs"]

_HARD_SHARE = 0.5
_HARD_VERSION = 1


def _numbers(prompt: str) -> List[int]:
    return [int(x) for x in re.findall(r"\d+", prompt.split("Human:")[-1])]


def hard_negative(rng: random.Random, task: str, prompt: str) -> Optional[str]:
    """A wrong answer to `prompt` that the obvious shortcut of `task` would rank as right, or None."""
    listed = _numbers(prompt)
    if task == "min":
        smaller = [n for n in range(0, min(listed))]
        return str(rng.choice(smaller)) if smaller else None
    if task == "max":
        return str(rng.randint(max(listed) + 1, max(listed) + 10))
    if task == "sort":
        outside = [n for n in range(0, 25) if n not in listed]
        values = sorted(listed)
        values[rng.randrange(len(values))] = rng.choice(outside)
        values.sort()
        wrong = " ".join(str(v) for v in values)
        return None if wrong == expected_answer(prompt) else wrong
    return None


@dataclasses.dataclass(frozen=True)
class HardNegativeTasks(SyntheticTasks):
    """`SyntheticTasks` whose min/max/sort "wrong" rejected answers are half hard negatives."""

    def records(self) -> List[Dict[str, str]]:
        rng = random.Random(self.seed + 7919)
        out = []
        for record in super().records():
            if record["rejected_kind"] == "wrong" and rng.random() < _HARD_SHARE:
                wrong = hard_negative(rng, record["task"], record["prompt"])
                if wrong is not None:
                    record = dict(record, rejected=" " + wrong, rejected_kind="hard_wrong")
            out.append(record)
        return out

    def fingerprint(self) -> str:
        return f"hard{_HARD_VERSION}-{_HARD_SHARE}-" + super().fingerprint()


def write_demo_dataset(root: str, train_size: int, eval_size: int) -> str:
    """Write the demo set under `root` (once per content); returns the folder to pass as `--data_path`."""
    tasks = HardNegativeTasks(train_size=train_size, eval_size=eval_size)
    folder = os.path.join(root, f"demo-data-{tasks.fingerprint()}")
    if not os.path.isfile(os.path.join(folder, "eval.json")):
        write_jsonfile_dataset(folder, tasks)
    return folder


def _sample_answers(actor_path: str, prompts: List[str], samples: int, batch_size: int, max_new_tokens: int,
                    seed: int) -> List[List[str]]:
    import torch
    from transformers import AutoModelForCausalLM

    from dschat.data.tokenizer import load_hf_tokenizer
    from dschat.eval.task_success import left_pad

    tokenizer = load_hf_tokenizer(actor_path)
    model = AutoModelForCausalLM.from_pretrained(actor_path, local_files_only=True).eval()
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    answers: List[List[str]] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = left_pad(tokenizer, prompts[start:start + batch_size], "cpu")
            width = batch["input_ids"].shape[1]
            with torch.no_grad():
                seq = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True,
                                     num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            texts = tokenizer.batch_decode(seq[:, width:], skip_special_tokens=True)
            answers += [texts[i:i + samples] for i in range(0, len(texts), samples)]
    finally:
        torch.set_rng_state(generator_state)
    return answers


def write_policy_pairs(actor_path: str, data_folder: str, samples: int = 2, batch_size: int = 512,
                       max_new_tokens: int = 8, seed: int = 1234) -> str:
    """Preference pairs whose rejected answers are the SFT actor's own mistakes; returns the folder.

    InstructGPT's labelers compared answers *sampled from the SFT model*; here
    the program that grades the tasks plays the labeler. For every row of
    `data_folder` (same order, so each step's `data_split` slice is the same
    rows), the actor samples `samples` answers; the first wrong one becomes
    the rejected answer (the chosen one stays the correct reference answer),
    and rows where every sample was right keep their original pair. A reward
    model trained on these learns to catch the mistakes PPO will actually
    meet, not only the generator's.
    """
    import json

    from dschat.data.synthetic import check_answer
    folder = os.path.join(os.path.dirname(data_folder),
                          f"policy-pairs-{os.path.basename(data_folder)}-{hash_path(actor_path)}")
    if os.path.isfile(os.path.join(folder, "eval.json")):
        return folder
    staging = folder + ".tmp"
    os.makedirs(staging, exist_ok=True)
    for name in ("train.json", "eval.json"):
        with open(os.path.join(data_folder, name), encoding="utf-8") as handle:
            rows = json.load(handle)
        prompts = [" " + row["prompt"] for row in rows]
        sampled = _sample_answers(actor_path, prompts, samples, batch_size, max_new_tokens, seed)
        for row, prompt, answers in zip(rows, prompts, sampled):
            wrong = [a.strip() for a in answers if a.strip() and not check_answer(prompt, a)]
            if wrong:
                row["rejected"] = wrong[0]
        with open(os.path.join(staging, name), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, ensure_ascii=False, indent=0)
    os.replace(staging, folder)
    return folder


def hash_path(path: str) -> int:
    """A stable id of the weights at `path` (size and mtime of its files), for the output folder's name."""
    import zlib
    parts = []
    for name in sorted(os.listdir(path)):
        stat = os.stat(os.path.join(path, name))
        parts.append(f"{name}:{stat.st_size}:{int(stat.st_mtime)}")
    return zlib.crc32("|".join(parts).encode())
