"""The ``deepspeed`` launcher: ``runner`` (the CLI), ``launch`` (per-node rank starter), ``multinode_runner``.

Nothing is imported here, so ``python -m deepspeed.launcher.launch`` stays
light and importing the package has no side effects.
"""
