"""The `ds-chat` command: one entry point for the DS-Chat programs.

    ds-chat demo                  the three steps on tiny-llama, offline on CPU, with a summary
    ds-chat train [...]           steps 1-3 through the deepspeed launcher (= python -m dschat.e2e)
    ds-chat chat --path MODEL     chat with a trained actor
    ds-chat step1|step2|step3 ... one step in this process (launch with `deepspeed -m dschat.stepN` for ranks)
    ds-chat reward-eval ...       held-out accuracy of a saved reward model
"""
import importlib
import sys
from typing import Optional, Sequence

__all__ = ["main", "COMMANDS"]

COMMANDS = {
    "demo": "dschat.cli.demo",
    "train": "dschat.cli.e2e",
    "chat": "dschat.cli.chat",
    "step1": "dschat.cli.step1",
    "step2": "dschat.cli.step2",
    "step3": "dschat.cli.step3",
    "reward-eval": "dschat.eval.reward_eval",
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
