"""`python -m dschat.step2`: see dschat/cli/step2.py."""
from dschat.cli.step2 import main

if __name__ == "__main__":
    main()
