"""The dependency floors declared in pyproject.toml are the ones CI tests.

``.ci/run`` installs bids2hf a second time with ``.ci/min_constraints.py``'s pins (each floor,
exactly) and runs the publishing tests there with ``BIDS2HF_MIN_VERSIONS=1``; the last test here
then checks that the environment really holds the floors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "min_constraints.py"


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["s3"]]
    ]


def floor(req: Requirement) -> Version:
    floors = [Version(s.version) for s in req.specifier if s.operator == ">="]
    assert len(floors) == 1, f"{req}: one >= floor expected"
    return floors[0]


def test_every_dependency_has_a_floor_and_the_constraints_pin_it() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True)
    pins = {}
    for line in proc.stdout.splitlines():
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", line
        pins[canonicalize_name(req.name)] = (Version(spec.version), req.marker)
    expected = {canonicalize_name(r.name): (floor(r), r.marker) for r in declared()}
    assert {k: (v, str(m)) for k, (v, m) in pins.items()} == {
        k: (v, str(m)) for k, (v, m) in expected.items()
    }
    # The client bids2hf talks to directly is declared, not only reached through huggingface_hub.
    assert {"huggingface-hub", "httpx2", "numpy"} <= set(expected)


def test_a_dependency_without_floor_is_refused(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\ndependencies = ["pyarrow>=24", "click"]\n'
        '[project.optional-dependencies]\ns3 = ["s3fs>=2024.6"]\n'
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(pyproject)], capture_output=True, text=True
    )
    assert proc.returncode != 0 and "'click' declares no >= floor" in proc.stderr


@pytest.mark.skipif(
    os.environ.get("BIDS2HF_MIN_VERSIONS") != "1",
    reason="only in the minimum-versions environment CI builds",
)
def test_this_environment_holds_the_floors() -> None:
    wrong = []
    for req in declared():
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = Version(version(req.name))
        except PackageNotFoundError:
            wrong.append(f"{req.name}: not installed")
            continue
        if installed != floor(req):
            wrong.append(f"{req.name}: {installed} installed, floor {floor(req)}")
    assert not wrong, wrong
