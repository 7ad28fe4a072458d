"""`python -m dschat.step1`: see dschat/cli/step1.py."""
from dschat.cli.common import run_main
from dschat.cli.step1 import main

if __name__ == "__main__":
    run_main(main)
