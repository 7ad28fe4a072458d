"""`python -m dschat.chat`: see dschat/cli/chat.py."""
from dschat.cli.chat import main

if __name__ == "__main__":
    main()
