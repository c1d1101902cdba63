"""The command line: click options (options.py) and one command per verb (commands.py).

Importing it loads click and the light option types only; each command imports what it needs.
"""

from bids2hf.cli.commands import main

__all__ = ["main"]
