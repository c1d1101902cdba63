"""Golden outputs: fixed inputs converted through the public API, summarised as a few digests.

The cases and their options come from the issue-10 digest script (``output_digests.py`` in the
project notes); ``tests/golden/outputs.json`` holds the digests recorded *before* the restructure,
so ``test_golden_outputs`` proves that the same inputs still give byte-identical outputs.

Per case: the sha256 of ``README.md``, of ``bids2hf/manifest.jsonl`` and of the ``inspect`` text
(root replaced), plus one combined digest each for ``data/*``, ``bids/*`` and any other file.
Re-record (only when an output change is intended) with::

    .venv/bin/python tests/golden.py --record
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bids2hf
from bids2hf.bids.options import ScanOptions
from bids2hf.plan.config import load_config
from bids2hf.plan.options import PlanOptions
from bids2hf.report.summaries import inspect_text
from bids2hf.testing.spec import SyntheticSpec
from bids2hf.testing.synthetic import generate_bids
from helpers import tree, without_state

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
#: bids-examples and its tools live beside the repository (or where BIDS2HF_SHARED says)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if not SHARED.is_dir():
    SHARED = Path(os.environ.get("BIDS2HF_SHARED", "/nonexistent"))
BIDS_EXAMPLES = SHARED / "bids-examples"
FILL_PLACEHOLDERS = SHARED / "tools" / "fill_placeholders.py"
ARC_TOML = Path(bids2hf.__file__).parent / "examples" / "arc.toml"
#: As tests/test_bids_examples.py: refused on purpose unless this file is excluded.
EXPECTED_REFUSALS = {"ieeg_epilepsy": "derivatives/brainvisa/dataset_description.json"}
#: The libraries whose versions the bytes depend on (pyarrow writes its version into every
#: footer; the card names the BIDS schema version).
ENVIRONMENT_MODULES = (
    "pyarrow",
    "datasets",
    "huggingface_hub",
    "bidsschematools",
    "nibabel",
    "numpy",
)


@dataclass
class Case:
    """One input and how to convert it."""

    name: str
    make_source: Callable[[Path], Path]  # scratch folder → BIDS root
    scan: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] = field(default_factory=dict)
    config: Path | None = None
    retry_check_none: bool = False  # as the round-trip test: --check none if header checks fail
    workers: int = 1


def _synthetic(spec_kwargs: dict[str, Any]) -> Callable[[Path], Path]:
    def make(scratch: Path) -> Path:
        return generate_bids(scratch / "bids", SyntheticSpec(**spec_kwargs)).root

    return make


def synthetic_cases() -> list[Case]:
    everything = {"derivatives": ("all",)}
    small = {"max_shard_bytes": 200_000, "row_group_bytes": 60_000}
    return [
        Case("synthetic/default", _synthetic({})),
        Case("synthetic/derivatives-small-shards", _synthetic({}), scan=everything, plan=small),
        # the same options with spawned writers: byte-identical to one worker
        Case("synthetic/two-workers", _synthetic({}), scan=everything, plan=small, workers=2),
        Case("synthetic/no-sessions", _synthetic({"sessions": ()}), scan=everything),
        Case(
            "synthetic/layout-scan",
            _synthetic({}),
            scan=everything,
            plan={"layout": "scan", "max_shard_bytes": 300_000},
        ),
        Case(
            "synthetic/raw-nii-exclude",
            _synthetic({"compress": False, "n_subjects": 3, "seed": 3}),
            scan={"derivatives": ("lesion_masks",), "exclude": ("*_events.tsv",)},
            plan={"split": "validation"},
        ),
        Case(
            "synthetic/arc-config",
            _synthetic({"n_subjects": 5, "arc_shaped": True}),
            scan={"derivatives": ("lesion_masks",)},
            config=ARC_TOML,
        ),
        Case(
            "synthetic/arc-default",
            # the ARC layout as recorded (before the generator added ARC's repeated runs)
            _synthetic(
                {
                    "n_subjects": 5,
                    "arc_shaped": True,
                    "sessions": ("1", "2", "3"),
                    "seed": 7,
                    "arc_repeated_runs": False,
                }
            ),
            scan=everything,
        ),
    ]


def example_names() -> list[str]:
    if not BIDS_EXAMPLES.is_dir():
        return []
    return sorted(
        p.name for p in BIDS_EXAMPLES.iterdir() if (p / "dataset_description.json").is_file()
    )


def fill_examples(dest: Path) -> Path:
    """bids-examples copied to ``dest`` with every empty NIfTI placeholder made a tiny image.

    Raises:
        RuntimeError: if the fill script fails.
    """
    proc = subprocess.run(
        [sys.executable, str(FILL_PLACEHOLDERS), str(BIDS_EXAMPLES), str(dest), *example_names()],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"fill_placeholders failed: {proc.stderr[-2000:]}")
    return dest


def example_cases(filled: Callable[[], Path]) -> list[Case]:
    """Every bids-examples dataset twice: filled (round-trip options) and raw (CLI options)."""
    cases = []
    for name in example_names():
        culprit = EXPECTED_REFUSALS.get(name)
        exclude = (culprit,) if culprit else ()
        cases.append(
            Case(
                f"examples/{name}",
                lambda _s, name=name: filled() / name,
                scan={
                    "derivatives": ("all",),
                    "include_sourcedata": True,
                    "on_invalid": "keep",
                    "exclude": exclude,
                },
                retry_check_none=True,
            )
        )
        cases.append(
            Case(
                f"examples-raw/{name}",
                lambda _s, name=name: BIDS_EXAMPLES / name,
                scan={
                    "derivatives": ("all",),
                    "on_invalid": "keep",
                    "check": "none",
                    "exclude": exclude,
                },
            )
        )
    return cases


def compact(digests: dict[str, str]) -> dict[str, str]:
    """A case's file digests folded into a few: single files kept, folders combined."""
    if "@error" in digests:
        return {"@error": digests["@error"]}
    keep = ("README.md", "bids2hf/manifest.jsonl", "@inspect")
    groups: dict[str, list[str]] = {"data/*": [], "bids/*": [], "other": []}
    for rel, sha in sorted(digests.items()):
        if rel in keep:
            continue
        group = (
            "data/*"
            if rel.startswith("data/")
            else "bids/*"
            if rel.startswith("bids/")
            else "other"
        )
        groups[group].append(f"{rel} {sha}\n")
    out = {k: digests.get(k, "absent") for k in keep}
    for group, lines in groups.items():
        out[group] = f"{len(lines)}:" + hashlib.sha256("".join(lines).encode()).hexdigest()
    return out


def run_case(case: Case, scratch: Path) -> dict[str, str]:
    """Convert one case into ``scratch/hf``; its file digests and the inspect text's."""
    source = case.make_source(scratch)
    plan_kwargs = dict(case.plan)
    if case.config is not None:
        plan_kwargs["config"] = load_config(case.config)
    scan_options = ScanOptions(**case.scan)
    plan_options = PlanOptions(**plan_kwargs)
    inventory, plan = bids2hf.inspect(source, scan_options, plan_options)
    if case.retry_check_none and plan.errors:
        # As tests/test_bids_examples.py: a few corpus stand-ins are not images at all.
        scan_options = ScanOptions(**{**case.scan, "check": "none"})
        inventory, plan = bids2hf.inspect(source, scan_options, plan_options)
    text = inspect_text(inventory, plan, True).replace(str(inventory.root), "<ROOT>")
    out = scratch / "hf"
    with quiet():
        bids2hf.convert(
            source,
            out,
            scan_options=scan_options,
            plan_options=plan_options,
            workers=case.workers,
            progress=False,
        )
    digests = without_state(tree(out))
    digests["@inspect"] = hashlib.sha256(text.encode()).hexdigest()
    return digests


def environment() -> dict[str, str]:
    versions = {"python": platform.python_version(), "bids2hf": bids2hf.__version__}
    for mod in ENVIRONMENT_MODULES:
        with contextlib.suppress(ImportError):
            versions[mod] = str(importlib.import_module(mod).__version__)
    return versions


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """bids2hf warns through logging (privacy lint, NIfTI-2): keep the output short."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def from_full(full: dict[str, Any]) -> dict[str, Any]:
    """The compact golden file from a full digest file of the notes' ``output_digests.py``."""
    out: dict[str, Any] = {"_environment": full["_environment"]}
    for name, digests in full.items():
        if not name.startswith("_"):
            out[name] = compact(digests)
    return out


def main() -> None:
    """``--record``: convert every case and write the golden file; ``--from FULL.json``: fold a
    full digest file into it."""
    import tempfile

    if sys.argv[1:2] == ["--from"]:
        result = from_full(json.loads(Path(sys.argv[2]).read_text()))
    else:
        assert sys.argv[1:] == ["--record"], __doc__
        result = {"_environment": environment()}
        with tempfile.TemporaryDirectory() as tmp:
            filled: list[Path] = []

            def get_filled() -> Path:
                if not filled:
                    filled.append(fill_examples(Path(tmp) / "filled"))
                return filled[0]

            for i, case in enumerate(synthetic_cases() + example_cases(get_filled)):
                scratch = Path(tmp) / f"case{i}"
                scratch.mkdir()
                result[case.name] = compact(run_case(case, scratch))
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
