"""`python -m dschat.e2e`: see dschat/cli/e2e.py."""
from dschat.cli.e2e import main

if __name__ == "__main__":
    main()
