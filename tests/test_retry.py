"""The retry policy every Hub call goes through, unit by unit and against the Hub emulator.

The emulator tests run bids2hf's ``HubTarget`` in a subprocess (``huggingface_hub`` reads
``HF_ENDPOINT`` at import time) and measure, on the emulator's side, how long the client waited
between a refused request and its retry.
"""

from __future__ import annotations

import itertools
import textwrap
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from bids2hf.publish.retry import (
    RetryPolicy,
    call_with_retries,
    is_transient,
    parse_retry_after,
    retry_after_of,
)
from helpers import run_json_script
from hub_emulator import HubEmulator


def http_error(status: int, retry_after: str | None = None) -> HfHubHTTPError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    request = httpx2.Request("POST", "http://127.0.0.1/api/datasets/org/ds/commit/main")
    response = httpx2.Response(status, headers=headers, request=request)
    return HfHubHTTPError(f"{status} error", response=response)


# -- the policy ----------------------------------------------------------------------------------
def test_backoff_grows_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    for attempt in range(8):
        ceiling = min(10.0, 2.0**attempt)
        waits = [policy.delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempt, min(waits), max(waits))
        assert max(waits) - min(waits) > ceiling / 10, "jitter spreads parallel runs"


def test_retry_after_is_a_floor_on_the_wait() -> None:
    policy = RetryPolicy(base_delay=0.05, max_delay=1.0)
    for attempt in (0, 5):
        waits = [policy.delay(attempt, retry_after=7.0) for _ in range(200)]
        # Longer than max_delay and than the backoff: the server's word wins.
        assert all(7.0 <= w <= 7.05 for w in waits)
    assert 0.0 <= policy.delay(0, retry_after=0.0) <= 0.05


def test_base_delay_comes_from_the_environment_when_the_policy_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BIDS2HF_RETRY_BASE_DELAY", "0.25")
    assert RetryPolicy().base_delay == 0.25
    monkeypatch.setenv("BIDS2HF_RETRY_BASE_DELAY", "nonsense")
    assert RetryPolicy().base_delay == 1.0


def test_parse_retry_after() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=42), usegmt=True), now) == 42.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=42), usegmt=True), now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("", now) is None
    assert parse_retry_after(None, now) is None
    assert retry_after_of(http_error(429, "2")) == 2.0
    assert retry_after_of(http_error(429)) is None
    # Found through a wrapper, as huggingface_hub wraps LFS upload errors.
    wrapped = RuntimeError("Error while uploading 'x' to the Hub.")
    wrapped.__cause__ = http_error(503, "5")
    assert retry_after_of(wrapped) == 5.0


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (http_error(429), True),
        (http_error(408), True),
        (http_error(500), True),
        (http_error(502), True),
        (http_error(503), True),
        (http_error(504), True),
        (http_error(400), False),
        (http_error(401), False),
        (http_error(403), False),
        (http_error(404), False),
        (http_error(409), False),
        (http_error(412), False),
        (httpx2.ConnectError("refused"), True),
        (httpx2.ReadTimeout("slow"), True),
        (httpx2.WriteError("broken pipe"), True),
        (httpx2.RemoteProtocolError("server closed the connection"), True),
        (httpx2.UnsupportedProtocol("ftp://"), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError("bad input"), False),
        (KeyboardInterrupt(), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_which_errors_are_transient(exc: BaseException, transient: bool) -> None:
    assert is_transient(exc) is transient


def test_a_wrapped_error_is_judged_by_its_cause() -> None:
    for cause, transient in ((http_error(503), True), (http_error(404), False)):
        wrapper = RuntimeError("Error while uploading 'data/x.parquet' to the Hub.")
        wrapper.__cause__ = cause
        assert is_transient(wrapper) is transient


class Flaky:
    """Fails with the given errors in turn, then returns "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retries_until_success_honouring_retry_after() -> None:
    waits: list[float] = []
    fn = Flaky(http_error(503), http_error(429, "3"), httpx2.ReadTimeout("slow"))
    policy = RetryPolicy(attempts=5, base_delay=0.1)
    assert call_with_retries("x", fn, policy, sleep=waits.append) == "ok"
    assert fn.calls == 4
    assert 0.05 <= waits[0] <= 0.1  # backoff, attempt 0
    assert 3.0 <= waits[1] <= 3.1  # Retry-After: 3
    assert 0.2 <= waits[2] <= 0.4  # backoff, attempt 2


def test_gives_up_after_the_attempts_with_the_last_error() -> None:
    waits: list[float] = []
    errors = [http_error(503) for _ in range(3)]
    fn = Flaky(*errors, http_error(502))
    with pytest.raises(HfHubHTTPError) as info:
        call_with_retries("x", fn, RetryPolicy(attempts=3, base_delay=0.01), sleep=waits.append)
    assert info.value is errors[2]
    assert fn.calls == 3 and len(waits) == 2


def test_does_not_retry_what_no_retry_fixes() -> None:
    waits: list[float] = []
    fn = Flaky(http_error(404))
    with pytest.raises(HfHubHTTPError):
        call_with_retries("x", fn, RetryPolicy(attempts=5), sleep=waits.append)
    assert fn.calls == 1 and waits == []
    # A caller may widen the rule (HubTarget.commit also retries conflicts).
    fn = Flaky(http_error(409))
    assert (
        call_with_retries(
            "x",
            fn,
            RetryPolicy(attempts=5, base_delay=0.01),
            retry_if=lambda e: True,
            sleep=waits.append,
        )
        == "ok"
    )


def test_a_retry_after_beyond_the_limit_ends_the_retries_at_once() -> None:
    waits: list[float] = []
    fn = Flaky(http_error(429, "3600"))
    with pytest.raises(HfHubHTTPError):
        call_with_retries("x", fn, RetryPolicy(attempts=5, max_retry_after=900), sleep=waits.append)
    assert fn.calls == 1 and waits == []


# -- against the Hub emulator --------------------------------------------------------------------
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from bids2hf.publish.targets.base import StagedFile
    from bids2hf.publish.targets.hub import HubTarget
    from bids2hf.model.format import sha256_file

    work = Path(sys.argv[1])
    target = HubTarget("hf://datasets/org/ds")
    target.ensure()
    target.files()
    items = []
    for name, data in (("data/train-0.parquet", b"PAR1\\0" * 5000), ("notes.txt", b"hello\\n")):
        path = work / name.replace("/", "_")
        path.write_bytes(data)
        items.append(StagedFile(name, path, path.stat().st_size, sha256_file(path)))
    applied = target.commit(items, [], "bids2hf: test commit")
    print(json.dumps({"applied": applied}))
    """
)


def run_target(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    result, stderr = run_json_script(SCRIPT, env, tmp_path)
    result["stderr"] = stderr
    return result


def gaps(emu: HubEmulator, route: str) -> list[float]:
    """Seconds between successive requests to one route, as the emulator received them."""
    times = [t for t, r in emu.request_log if r == route]
    return [b - a for a, b in itertools.pairwise(times)]


#: Calls that huggingface_hub does not retry itself (it does retry the tree listing and LFS
#: transfers, with its own backoff): only bids2hf's policy stands between them and a failure.
ROUTES = {
    "create_repo": ("/api/repos/create", "POST", "POST create_repo"),
    "dataset_info": ("/api/datasets/org/ds/revision/", "GET", "GET repo_info"),
    "commit": ("/commit/", "POST", "POST commit"),
}


def test_every_hub_call_honours_retry_after(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """429 with Retry-After: 1 on repo creation, branch head and commit; the base delay is 0.05 s."""
    for regex, method, _ in ROUTES.values():
        emu.inject(regex, method, status=429, retry_after=1)
    result = run_target(hub_env, tmp_path)
    assert result["applied"] is True
    for name, (_, _, route) in ROUTES.items():
        waited = gaps(emu, route)
        # The retry that follows the refusal (the head is asked again later by the commit's
        # idempotence check). One second of Retry-After plus at most 0.05 s of jitter, and
        # slack for a loaded machine.
        assert waited and 1.0 <= waited[0] < 2.5, (name, waited)
    assert "Retry-After" in result["stderr"], "the wait is logged with its reason"
    assert len(emu.commits("org/ds")) == 2  # the repository's first commit and ours


def test_without_retry_after_the_backoff_is_short(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """The same faults without Retry-After: the waits above did come from the header."""
    for regex, method, _ in ROUTES.values():
        emu.inject(regex, method, status=503)
    result = run_target(hub_env, tmp_path)
    assert result["applied"] is True
    for name, (_, _, route) in ROUTES.items():
        waited = gaps(emu, route)
        assert waited and waited[0] < 0.8, (name, waited)


def test_a_lost_commit_response_after_a_429_commits_once(
    emu: HubEmulator, hub_env: dict[str, str], tmp_path: Path
) -> None:
    """429 (Retry-After: 1), then the commit is applied but its answer is lost: no second commit."""
    emu.inject("/commit/", "POST", status=429, retry_after=1)
    emu.inject("/commit/", "POST", lose_response=True)
    result = run_target(hub_env, tmp_path)
    assert result["applied"] is True
    waited = gaps(emu, "POST commit")
    assert len(waited) == 1 and waited[0] >= 1.0, waited
    titles = [c["title"] for c in emu.commits("org/ds")]
    assert titles.count("bids2hf: test commit") == 1, titles
    assert set(emu.files("org/ds")) == {".gitattributes", "data/train-0.parquet", "notes.txt"}
