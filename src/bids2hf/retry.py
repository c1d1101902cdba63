"""Retries with exponential backoff and jitter, honouring ``Retry-After``.

``huggingface_hub`` retries uploads and listings itself, but not ``create_commit``, repo creation
or metadata calls; those go through :func:`call_with_retries`.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry transient failures."""

    attempts: int = 8
    base_delay: float = float(os.environ.get("BIDS2HF_RETRY_BASE_DELAY", "1.0"))
    max_delay: float = 60.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(self.max_delay, retry_after) + random.uniform(0, self.base_delay)
        ceiling = min(self.max_delay, self.base_delay * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)  # jitter: spread retries of parallel runs


def status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def retry_after_of(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = getattr(response, "headers", {}).get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def is_transient(exc: BaseException) -> bool:
    """429, 5xx, timeouts and dropped connections are worth another try; the rest are not."""
    if isinstance(exc, HfHubHTTPError):
        status = status_of(exc)
        return status is None or status in RETRY_STATUS
    return isinstance(exc, (httpx2.TransportError, ConnectionError, TimeoutError))


def call_with_retries(
    what: str,
    fn: Callable[[], T],
    policy: RetryPolicy | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Call ``fn`` until it succeeds, a non-transient error occurs, or attempts run out."""
    policy = policy or RetryPolicy()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts - 1:
                raise
            wait = policy.delay(attempt, retry_after_of(exc))
            log.warning(
                "%s failed (%s); retry %d/%d in %.1f s",
                what,
                _short(exc),
                attempt + 1,
                policy.attempts - 1,
                wait,
            )
            if on_retry is not None:
                on_retry(exc)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _short(exc: BaseException) -> str:
    status = status_of(exc)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"HTTP {status}" if status else text[:120]
