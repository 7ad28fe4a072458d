"""`ds-chat chat --path <model>` (= `python -m dschat.chat`): talk to a trained actor.

An interactive loop in DS-Chat's format: the conversation so far is kept as
` Human: <input>\n Assistant: <answer>` turns, the model continues it, and
its answer is cut at the next `Human:` (the model would otherwise keep
writing both sides). Commands: `quit` ends, `clear` forgets the history.
Input is read line by line from stdin, so the REPL can be scripted:

    printf 'What is 2 + 3?\nquit\n' | ds-chat chat --path output/demo/step3-models/tiny-llama/actor

`--template rm-static` uses the `\n\nHuman: ...\n\nAssistant:` form the
embedded data set (and Dahoas/rm-static) is written in instead.
"""
import argparse
import sys
from typing import List, Optional, Sequence, TextIO

import torch

__all__ = ["main", "format_turn", "cut_answer", "TEMPLATES"]

TEMPLATES = {
    "dschat": (" Human: {text}\n Assistant:", "\n"),
    "rm-static": ("\n\nHuman: {text}\n\nAssistant:", ""),
}
PROMPT = "Enter input (type 'quit' to exit, 'clear' to clean memory): "


def format_turn(text: str, template: str = "dschat") -> str:
    """One Human turn, ending where the Assistant's answer starts."""
    return TEMPLATES[template][0].format(text=text)


def cut_answer(generated: str) -> str:
    """The answer up to the next `Human:` turn (or end marker), stripped."""
    for marker in ("Human:", "<|endoftext|>", "</s>"):
        pos = generated.find(marker)
        if pos >= 0:
            generated = generated[:pos]
    return generated.strip()


def _load(path: str):
    from transformers import AutoModelForCausalLM

    from dschat.data.tokenizer import load_hf_tokenizer
    tokenizer = load_hf_tokenizer(path, fast_tokenizer=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    return tokenizer, model


def _respond(model, tokenizer, history: str, max_new_tokens: int) -> str:
    ids = tokenizer(history, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return cut_answer(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))


def run_repl(model, tokenizer, max_new_tokens: int, template: str, stdin: TextIO, stdout: TextIO) -> List[str]:
    """The chat loop over `stdin`; returns the answers given (for tests)."""
    history, answers, rounds = "", [], 0
    while True:
        stdout.write(PROMPT)
        stdout.flush()
        line = stdin.readline()
        if not line:  # end of input acts like quit
            break
        text = line.strip()
        if text == "quit":
            break
        if text == "clear":
            history, rounds = "", 0
            stdout.write("\n(history cleared)\n")
            continue
        history += format_turn(text, template)
        answer = _respond(model, tokenizer, history, max_new_tokens)
        history += " " + answer + TEMPLATES[template][1]
        rounds += 1
        answers.append(answer)
        stdout.write(f"\n{'-' * 30} Round {rounds} {'-' * 30}\n{history.strip()}\n\n")
        stdout.flush()
    return answers


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
    parser = argparse.ArgumentParser(prog="ds-chat chat", description="Chat with a trained actor.")
    parser.add_argument("--path", required=True, help="an HF-format actor folder (e.g. step3-models/<name>/actor)")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="answer length budget")
    parser.add_argument("--template", default="dschat", choices=sorted(TEMPLATES), help="conversation format")
    args = parser.parse_args(argv)
    tokenizer, model = _load(args.path)
    return run_repl(model, tokenizer, args.max_new_tokens, args.template, sys.stdin, sys.stdout)


if __name__ == "__main__":
    main()
