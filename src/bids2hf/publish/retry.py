"""One retry policy for every Hub call bids2hf makes: backoff with jitter, ``Retry-After`` honoured.

``huggingface_hub`` retries LFS transfers and a few requests itself, but not ``create_commit``,
repository creation, listings or metadata calls; bids2hf sends each of those through
:func:`call_with_retries` (``HubTarget.commit`` adds its idempotence check on top, through the same
function).
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError

__all__ = [
    "RETRY_STATUS", "TRANSIENT_ERRORS", "RetryPolicy", "call_with_retries", "is_transient",
    "parse_retry_after", "retry_after_of", "status_of",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Answers that say "not now": the same request may succeed later.
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: Failures of the connection itself (as ``huggingface_hub``'s own backoff counts them). Not
#: ``httpx2.TransportError`` as a whole: it also covers an unsupported URL scheme or a bad proxy
#: setting, which no retry fixes.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    httpx2.TimeoutException,
    httpx2.NetworkError,
    httpx2.RemoteProtocolError,
    ConnectionError,
    TimeoutError,
)


def _env_base_delay() -> float:
    # Read when a policy is made, not at import: tests and callers may set it late.
    try:
        return max(0.0, float(os.environ.get("BIDS2HF_RETRY_BASE_DELAY", "1.0")))
    except ValueError:
        return 1.0


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures.

    ``base_delay`` defaults to ``$BIDS2HF_RETRY_BASE_DELAY`` (1 s). A server's ``Retry-After`` is a
    floor on the wait; one longer than ``max_retry_after`` ends the retries at once (the run can be
    resumed later) rather than holding the process for hours.
    """

    attempts: int = 8
    base_delay: float = field(default_factory=_env_base_delay)
    max_delay: float = 60.0
    max_retry_after: float = 900.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (0-based).

        With ``retry_after`` (the server's ``Retry-After``): that long plus up to ``base_delay`` of
        jitter, never less. Without: exponential backoff, ``base_delay * 2**attempt`` capped at
        ``max_delay``, drawn from the upper half of that range so that parallel runs spread out.
        """
        if retry_after is not None:
            return max(0.0, retry_after) + random.uniform(0, self.base_delay)
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and its explicit causes (``raise ... from``), outermost first.

    ``huggingface_hub`` wraps some failures, e.g. an LFS upload error in a ``RuntimeError`` whose
    cause is the HTTP error.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of the response an error carries (or its cause carries), if any."""
    for e in _chain(exc):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def retry_after_of(exc: BaseException) -> float | None:
    """The ``Retry-After`` of the response an error (or its cause) carries, in seconds."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        headers = getattr(response, "headers", None)
        if headers is not None:
            seconds = parse_retry_after(headers.get("Retry-After"))
            if seconds is not None:
                return seconds
    return None


def is_transient(exc: BaseException) -> bool:
    """429, 408, 425, 5xx, timeouts and dropped connections are worth another try; the rest are not.

    The first error in the cause chain that carries an HTTP status decides; an HTTP error without
    a response (the connection failed before one came) counts as transient.
    """
    for e in _chain(exc):
        if isinstance(e, HfHubHTTPError):
            status = status_of(e)
            return status is None or status in RETRY_STATUS
        if isinstance(e, TRANSIENT_ERRORS):
            return True
    return False


def call_with_retries(
    what: str,
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    *,
    retry_if: Callable[[BaseException], bool] = is_transient,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn`` until it succeeds, fails for good, or ``policy.attempts`` calls have failed.

    Between attempts it waits :meth:`RetryPolicy.delay`, honouring the failed response's
    ``Retry-After``.

    Raises:
        Exception: the last error of ``fn``, unchanged, when ``retry_if`` says it is not worth
            another try, when the attempts run out, or when the server asks for a wait longer
            than ``policy.max_retry_after``.
    """
    policy = policy or RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not retry_if(exc) or attempt == policy.attempts - 1:
                raise
            retry_after = retry_after_of(exc)
            if retry_after is not None and retry_after > policy.max_retry_after:
                log.warning(
                    "%s failed (%s) and the server asks to wait %.0f s: giving up; re-run later",
                    what,
                    _short(exc),
                    retry_after,
                )
                raise
            wait = policy.delay(attempt, retry_after)
            log.warning(
                "%s failed (%s); retry %d/%d in %.1f s%s",
                what,
                _short(exc),
                attempt + 1,
                policy.attempts - 1,
                wait,
                " (Retry-After)" if retry_after is not None else "",
            )
            sleep(wait)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _short(exc: BaseException) -> str:
    status = status_of(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"HTTP {status}" if status else text[:120]
