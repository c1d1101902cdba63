"""`python -m bids2hf.cli`: the command line."""

from bids2hf.cli import run

run()
