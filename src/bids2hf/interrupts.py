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
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, NoReturn

__all__ = ["caused_by_ctrl_c", "exit_interrupted", "handling_ctrl_c", "stop_if_interrupted"]

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


@contextmanager
def handling_ctrl_c() -> Iterator[None]:
    """The command line's SIGINT handler while the context lasts (one command), on the main
    thread and only in place of Python's default one (an ignored SIGINT, as in a background
    job, stays ignored); the process's handlers as they were afterwards (a command run from
    Python, as tests and notebooks do, leaves nothing behind)."""
    global _requested, _previous_hook
    on_main = threading.current_thread() is threading.main_thread()
    if not (on_main and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        yield
        return
    _requested = False
    _previous_hook = sys.unraisablehook
    try:
        sys.unraisablehook = _quiet_when_dropped
        signal.signal(signal.SIGINT, _on_sigint)  # (a Ctrl-C pending raises here, put back)
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = _previous_hook
        _requested = False


def stop_if_interrupted() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C came and its KeyboardInterrupt was dropped on the way;
    does nothing off the main thread (where Python never raises it) or for a Python caller.

    Raises:
        KeyboardInterrupt: a Ctrl-C was recorded.
    """
    if _requested and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt


def caused_by_ctrl_c(exc: BaseException) -> bool:
    """``exc`` comes of a KeyboardInterrupt: raised while one was being handled (a clean-up
    that failed), or wrapping one (Python 3.11 turns one raised inside ``__set_name__``, as a
    class is made while a command imports its modules, into ``RuntimeError: Error calling
    __set_name__``, with the KeyboardInterrupt as its cause)."""
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
    # caller then sees -2, not 130. Each exec() of a string clears that mark as it starts
    # (CPython's run_eval_code_obj resets _Py_UnhandledKeyboardInterrupt).
    exec("None")
    sys.exit(130)
