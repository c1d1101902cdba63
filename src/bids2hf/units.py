"""Byte sizes for people: ``500MB`` in, ``1.2 GB`` out (decimal units, binary with ``i``)."""

from __future__ import annotations

import re

__all__ = ["human_bytes", "parse_size"]

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "k": 1e3,
    "m": 1e6,
    "g": 1e9,
    "t": 1e12,
    "ki": 2**10,
    "mi": 2**20,
    "gi": 2**30,
    "ti": 2**40,
}


def parse_size(text: str) -> int:
    """``500MB`` → 500_000_000, ``1GiB`` → 2**30, ``1000`` → 1000.

    Raises:
        ValueError: ``text`` is no size.
    """
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower().removesuffix("b") if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size like 500MB or 1GiB")
    return int(float(m.group(1)) * _UNITS[unit])


def human_bytes(n: float) -> str:
    """``1234567`` → ``1.2 MB``; a non-zero size never shows as zero."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
