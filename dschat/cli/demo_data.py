"""The demo's preference data: the embedded synthetic set, restricted to the list tasks.

Why restricted: the demo trains a 4-layer model from scratch for about a
minute per step. In that time it learns the list operations (largest,
smallest, sort, list length) but not two-digit arithmetic, word
transforms or the look-up tables (task success ~0 there), and a reward
model built on it ranks its own answers to those prompts at chance. Those
prompts add only noise to PPO and to the task-success metric, so the demo
uses the four list families (`DEMO_FAMILIES`); `ds-chat train` on other
data and the `dschat/synthetic` source keep every family.

The generator's rejected answers have no surface shortcut ([Note: no
shortcuts] in dschat/data/synthetic.py); the demo once patched them here
with hard negatives, which is now unnecessary.

The set is written as `train.json`/`eval.json` (the `local/jsonfile` record
format), which every step reads through `--data_path <folder>`. The folder
name carries the content's fingerprint, so a changed recipe never reuses an
old folder.
"""
import os
from typing import List, Sequence

from dschat.data.synthetic import SyntheticTasks, write_jsonfile_dataset

__all__ = ["DEMO_FAMILIES", "demo_tasks", "write_demo_dataset", "write_policy_pairs"]

DEMO_FAMILIES = ("max", "min", "sort", "list_length")


def demo_tasks(train_size: int, eval_size: int, families: Sequence[str] = DEMO_FAMILIES) -> SyntheticTasks:
    """The generator settings of the demo set."""
    return SyntheticTasks(train_size=train_size, eval_size=eval_size, families=tuple(families))


def write_demo_dataset(root: str, train_size: int, eval_size: int, families: Sequence[str] = DEMO_FAMILIES) -> str:
    """Write the demo set under `root` (once per content); returns the folder to pass as `--data_path`."""
    tasks = demo_tasks(train_size, eval_size, families)
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


def write_policy_pairs(actor_path: str, data_folder: str, samples: int = 4, batch_size: int = 512,
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
