"""DS-Chat command-line programs: the three steps, the e2e runner, the chat REPL and the demo."""
