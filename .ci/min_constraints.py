"""Print a pip constraints file pinning each dependency of pyproject.toml to its declared floor.

Runtime dependencies and the ``s3`` extra: ``name>=X`` becomes ``name==X`` (markers kept). CI
installs bids2hf with these constraints in a second virtual environment and runs the publishing
tests there, so the floors in pyproject.toml are the versions that were tested. Every such
dependency must have a ``>=`` floor; one without is an error. Standard library only (``tomli``
on Python 3.10).

Usage: python3 .ci/min_constraints.py [pyproject.toml] > constraints-min.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

EXTRAS = ("s3",)
_REQ = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*"
    r"(?P<spec>[^;]*?)\s*(?:;\s*(?P<marker>.+?))?\s*$"
)
_FLOOR = re.compile(r">=\s*(?P<version>[0-9][0-9A-Za-z.+!-]*)")


def constraints(pyproject: Path) -> list[str]:
    """The ``name==floor[; marker]`` lines, in pyproject order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    lines: list[str] = []
    seen: set[str] = set()
    for text in requirements:
        match = _REQ.match(text)
        floor = _FLOOR.search(match.group("spec")) if match else None
        if match is None or floor is None:
            raise SystemExit(f"{pyproject}: {text!r} declares no >= floor")
        name = match.group("name")
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        marker = match.group("marker")
        lines.append(f"{name}=={floor.group('version')}" + (f"; {marker}" if marker else ""))
    return lines


if __name__ == "__main__":
    path = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "pyproject.toml"
    )
    print("\n".join(constraints(path)))
