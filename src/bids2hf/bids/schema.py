"""The official BIDS schema (via ``bidsschematools``): what a valid BIDS path looks like.

Everything this package knows about entities, datatypes and suffixes comes from here, so a new
BIDS release is picked up by upgrading ``bidsschematools`` rather than by editing lists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any

import bidsschematools.schema as bids_schema_module
from bidsschematools import rules as bids_rules

from bids2hf.model.inventory import ParsedName

__all__ = [
    "Entity", "datatypes", "entities", "entity_by_key", "entity_by_name", "entity_order_key",
    "parse_generic_name", "parse_raw_path", "schema_version", "split_extension",
]


@dataclass(frozen=True)
class Entity:
    """One BIDS entity as the schema defines it."""

    name: str  # long name, e.g. "acquisition"
    key: str  # short key used in file names, e.g. "acq"
    is_index: bool  # "index" entities (run, echo, ...) are non-negative integers


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """bidsschematools 1.0 says at INFO, through a handler of its own, that it loads its bundled
    schema: two lines on every command's stderr, for the schema we want. Quiet while loading."""
    logger = logging.getLogger("bidsschematools")
    level = logger.level
    if not logging.getLogger().isEnabledFor(logging.DEBUG):  # --debug shows everything
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@cache
def _schema() -> Any:
    with _quiet_loading():
        return bids_schema_module.load_schema()


@cache
def _path_regexes() -> tuple[re.Pattern[str], ...]:
    with _quiet_loading():  # it loads the schema itself
        regexes, _ = bids_rules.regexify_all()
    return tuple(re.compile(rule["regex"]) for rule in regexes)


@cache
def entities() -> tuple[Entity, ...]:
    """All entities in the schema's canonical filename order."""
    schema = _schema()
    order = list(schema.rules.entities)
    objs = schema.objects.entities
    return tuple(
        Entity(name=name, key=objs[name].name, is_index=objs[name].format == "index")
        for name in order
    )


@cache
def entity_by_key() -> dict[str, Entity]:
    """Entities indexed by their short filename key (``acq`` → acquisition)."""
    return {e.key: e for e in entities()}


@cache
def entity_by_name() -> dict[str, Entity]:
    """Entities indexed by their long name."""
    return {e.name: e for e in entities()}


@cache
def datatypes() -> frozenset[str]:
    """Datatype folder names (anat, func, dwi, ...)."""
    return frozenset(_schema().objects.datatypes.keys())


def schema_version() -> str:
    """BIDS version of the bundled schema."""
    return str(_schema().bids_version)


def entity_order_key(name: str) -> int:
    """Position of an entity in canonical filename order (unknown entities go last)."""
    order = {e.name: i for i, e in enumerate(entities())}
    return order.get(name, len(order))


def split_extension(basename: str) -> tuple[str, str]:
    """Split ``sub-01_T1w.nii.gz`` into ``("sub-01_T1w", ".nii.gz")``."""
    stem, dot, rest = basename.partition(".")
    return stem, (dot + rest if dot else "")


def parse_raw_path(relpath: str) -> ParsedName | None:
    """Parse a path relative to a raw BIDS root with the schema's path rules.

    Returns ``None`` when no rule of the schema matches (an invalid BIDS name).
    """
    for pattern in _path_regexes():
        match = pattern.match(relpath)
        if match is None:
            continue
        groups = {k: v for k, v in match.groupdict().items() if v is not None}
        datatype = groups.pop("datatype", None)
        suffix = groups.pop("suffix", None)
        extension = groups.pop("extension", "")
        groups.pop("path", None)
        groups.pop("stem", None)
        if extension == "" and "." in relpath.rsplit("/", 1)[-1]:
            extension = split_extension(relpath.rsplit("/", 1)[-1])[1]
        return ParsedName(entities=groups, datatype=datatype, suffix=suffix, extension=extension)
    return None


_GENERIC_PART = re.compile(r"^([a-zA-Z]+)-([0-9a-zA-Z+]+)$")


def parse_generic_name(relpath: str, lenient: bool = False) -> ParsedName | None:
    """Parse ``key-value_..._suffix.ext`` names the way BIDS derivatives use them.

    Derivative datasets may use entities and suffixes that the raw rules do not list (``desc-``
    and pipeline-specific suffixes), so only the name grammar is checked here. ``lenient`` skips
    inner tokens that are not ``key-value`` (masks named after their source image, such as
    ``..._T2w_desc-lesion_mask``, are common in practice).
    """
    parts = relpath.split("/")
    stem, extension = split_extension(parts[-1])
    tokens = stem.split("_")
    if len(tokens) < 2:
        return None
    by_key = entity_by_key()
    found: dict[str, str] = {}
    for token in tokens[:-1]:
        m = _GENERIC_PART.match(token)
        if m is None:
            if lenient and re.fullmatch(r"[a-zA-Z0-9]+", token):
                continue
            return None
        key, value = m.groups()
        found[by_key[key].name if key in by_key else key] = value
    suffix = tokens[-1]
    if not re.fullmatch(r"[a-zA-Z0-9]+", suffix):
        return None
    datatype = parts[-2] if len(parts) >= 2 and parts[-2] in datatypes() else None
    return ParsedName(entities=found, datatype=datatype, suffix=suffix, extension=extension)
