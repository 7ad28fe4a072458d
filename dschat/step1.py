"""`python -m dschat.step1`: see dschat/cli/step1.py."""
from dschat.cli.step1 import main

if __name__ == "__main__":
    main()
