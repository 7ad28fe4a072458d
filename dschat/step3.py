"""`python -m dschat.step3`: see dschat/cli/step3.py."""
from dschat.cli.step3 import main

if __name__ == "__main__":
    main()
