"""The command line: click options (options.py) and one command per verb (commands.py).

``run`` is the ``bids2hf`` program; ``main``, the click group, is imported on first use, so that
a Ctrl-C while the program loads it ends in one line too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bids2hf.cli.commands import main

__all__ = ["main", "run"]


def run() -> None:
    """The ``bids2hf`` program (its exit status is the process's)."""
    from bids2hf.interrupts import caused_by_ctrl_c, exit_interrupted

    try:
        from bids2hf.cli.commands import main
    except (KeyboardInterrupt, Exception) as exc:
        if caused_by_ctrl_c(exc):  # (3.11 wraps one raised inside __set_name__)
            exit_interrupted()
        raise
    main()


def __getattr__(name: str) -> Any:
    if name == "main":
        from bids2hf.cli.commands import main

        return main
    raise AttributeError(f"module 'bids2hf.cli' has no attribute {name!r}")
