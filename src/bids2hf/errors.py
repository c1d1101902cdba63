"""Exceptions that the CLI turns into one-line messages and exit code 2."""

from __future__ import annotations


class Bids2HfError(Exception):
    """Base class of the errors a user can fix: bad input, bad options, a refused destination.

    ``str(error)`` is one line that names the file concerned and says what to do.
    """

    exit_code = 2


class InputError(Bids2HfError):
    """The BIDS folder (or a file in it) cannot be converted as it is."""


class DestinationError(Bids2HfError):
    """The output location refuses the run (not empty, not resumable, no space, ...)."""


class VerificationError(Bids2HfError):
    """Published data differ from what was written or from the source."""

    exit_code = 1
