"""`python -m dschat.step2`: see dschat/cli/step2.py."""
from dschat.cli.common import run_main
from dschat.cli.step2 import main

if __name__ == "__main__":
    run_main(main)
