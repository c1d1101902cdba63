"""Ctrl-C on the command line: one line and exit 130, whenever it comes, even if a library
swallowed the KeyboardInterrupt.

Python raises KeyboardInterrupt wherever the main thread is when the signal is handled, and some
places drop it: a weakref callback or ``__del__`` (printed as "Exception ignored"), or a
library's ``except BaseException`` (seen: a Cython module's start-up, while ``convert`` imported
nibabel; the run then went on to the end). The command line's handler also records the request,
and :func:`stop_if_interrupted` raises it again at the next safe point. A Python caller keeps
its own SIGINT handling: nothing here is installed for it.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType
from typing import Any, NoReturn

__all__ = ["caused_by_ctrl_c", "exit_interrupted", "handle_ctrl_c", "stop_if_interrupted"]

_requested = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _quiet_when_dropped(unraisable: Any) -> None:
    """``sys.unraisablehook``: a KeyboardInterrupt dropped in a callback is not printed (it
    will be raised again, see :func:`stop_if_interrupted`); anything else is, as before."""
    if not (_requested and unraisable.exc_type is KeyboardInterrupt):
        _previous_hook(unraisable)


_previous_hook = sys.unraisablehook


def handle_ctrl_c() -> None:
    """Install the command line's SIGINT handler, on the main thread and only in place of
    Python's default one (an ignored SIGINT, as in a background job, stays ignored)."""
    global _previous_hook
    on_main = threading.current_thread() is threading.main_thread()
    if on_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)
        if sys.unraisablehook is not _quiet_when_dropped:
            _previous_hook, sys.unraisablehook = sys.unraisablehook, _quiet_when_dropped


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came and its KeyboardInterrupt was dropped on the way;
    does nothing off the main thread (where Python never raises it) or for a Python caller.

    Raises:
        KeyboardInterrupt: a Ctrl-C was recorded.
    """
    if _requested and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


def caused_by_ctrl_c(exc: BaseException) -> bool:
    """``exc`` wraps a KeyboardInterrupt: Python 3.11 turns one raised while a class is being
    made (Ctrl-C while a command imports its modules) into ``RuntimeError: Error calling
    __set_name__``, with the KeyboardInterrupt as its cause."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def exit_interrupted() -> NoReturn:
    """The one line and exit 130 for Ctrl-C."""
    sys.stderr.write("interrupted: re-run the same command to resume\n")
    sys.stderr.flush()
    # Under ``python -m``, a KeyboardInterrupt that passed through code run by exec() of a
    # string (dataclasses and namedtuple make their methods so: Ctrl-C while modules load) marks
    # the interpreter to end itself by SIGINT at exit, whatever the exit status asked for: the
    # caller then sees -2, not 130. Each exec() of a string clears that mark as it starts.
    exec("None")
    sys.exit(130)
