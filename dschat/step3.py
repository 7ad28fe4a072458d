"""`python -m dschat.step3`: see dschat/cli/step3.py."""
from dschat.cli.common import run_main
from dschat.cli.step3 import main

if __name__ == "__main__":
    run_main(main)
