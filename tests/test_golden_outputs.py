"""Same inputs, same bytes: every golden case converts to the digests recorded before the
restructure of issue 10 (tests/golden.py says what is recorded and how to re-record)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import golden

EXPECTED = json.loads(golden.GOLDEN.read_text())
CASES = {c.name: c for c in golden.synthetic_cases() + golden.example_cases(lambda: Path())}


def _environment_differs() -> str | None:
    recorded, now = EXPECTED["_environment"], golden.environment()
    changed = [m for m in golden.ENVIRONMENT_MODULES if recorded.get(m) != now.get(m)]
    if changed:
        return (
            f"golden outputs were recorded with other versions of {', '.join(changed)}; "
            "re-record with `.venv/bin/python tests/golden.py --record` on the commit before "
            "your change"
        )
    return None


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if not n.startswith("_")))
def test_same_bytes_as_recorded(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    reason = _environment_differs()
    if reason:
        pytest.skip(reason)
    case = CASES.get(name)
    if case is None:
        pytest.skip(f"{name}: input not available here ({golden.BIDS_EXAMPLES})")
    if name.startswith("examples/"):
        filled: Path = request.getfixturevalue("filled_examples")
        case = golden.Case(**{**case.__dict__, "make_source": lambda _s: filled / name.split("/", 1)[1]})
    got = golden.compact(golden.run_case(case, tmp_path))
    assert got == EXPECTED[name]


def test_every_case_is_recorded() -> None:
    """A case added to golden.py without recording it would otherwise never be checked."""
    assert set(CASES) <= set(EXPECTED)
