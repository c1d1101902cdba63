"""`python -m bids2hf`: the command line."""

from bids2hf.cli import run

run()
