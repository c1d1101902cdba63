"""Exceptions that the CLI turns into one-line messages and exit code 2."""

from __future__ import annotations

import unicodedata

__all__ = [
    "RERUN_HINT", "Bids2HfError", "ClusterError", "DestinationError", "InputError",
    "SourceChangedError", "VerificationError", "one_line",
]

#: Characters that would break a message across lines (or garble a terminal) if printed as is.
_BREAKING = frozenset({"Cc", "Zl", "Zp"})


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``, ``\\x1b``, ...).

    Messages name files, and a file name may hold any character but ``/`` and NUL; escaping keeps
    such a name recognisable while the message stays on one line.
    """
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if ch != "\t" and unicodedata.category(ch) in _BREAKING
        else ch
        for ch in text
    )


class Bids2HfError(Exception):
    """Base class of the errors a user can fix: bad input, bad options, a refused destination.

    ``str(error)`` is one line that names the file concerned and says what to do; line breaks
    in the message (from a file name or a library's error text) are escaped.
    """

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class InputError(Bids2HfError):
    """The BIDS folder (or a file in it) cannot be converted as it is."""


class SourceChangedError(InputError):
    """A source file changed between planning and reading."""


class DestinationError(Bids2HfError):
    """The output location refuses the run (not empty, not resumable, no space, ...)."""


class ClusterError(Bids2HfError):
    """[issue 14] The Dask cluster cannot run the job as asked: no scheduler at that address,
    workers that do not see the files or run other versions, or a shard whose workers kept dying."""


class VerificationError(Bids2HfError):
    """Published data differ from what was written or from the source."""

    exit_code = 1


#: What to do after a source file changed mid-run: the unfinished output is updated to the new
#: plan by the same command, keeping the shards that are still up to date.
RERUN_HINT = "re-run the same command to convert the folder as it is now (complete shards are kept)"
