"""bids2hf: BIDS datasets to Hugging Face Parquet datasets with embedded NIfTI files, and back.

The Python API mirrors the command line::

    import bids2hf
    bids2hf.inspect("ds000001")                           # (inventory, plan): what convert would do
    report = bids2hf.convert("ds000001", "out/")          # or "hf://datasets/ORG/NAME", "s3://..."
    bids2hf.push("out/", "hf://datasets/ORG/NAME")
    bids2hf.export("hf://datasets/ORG/NAME", "ds000001-copy/")
    bids2hf.verify("ds000001", "hf://datasets/ORG/NAME").ok
    img = bids2hf.load_nifti(value)                       # NIfTI-1 or NIfTI-2 value of a column

The verbs are imported on first use, so that ``import bids2hf`` stays light (shard-writing worker
processes never import ``datasets``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .nifti_header import load_nifti

if TYPE_CHECKING:
    from .conversion import convert
    from .conversion import scan_and_plan as inspect
    from .export_bids import export
    from .publish import push
    from .verification import verify

# verb → (module, attribute)
_API = {
    "convert": ("conversion", "convert"),
    "inspect": ("conversion", "scan_and_plan"),
    "push": ("publish", "push"),
    "export": ("export_bids", "export"),
    "verify": ("verification", "verify"),
}

__all__ = ["__version__", "convert", "export", "inspect", "load_nifti", "push", "verify"]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(f".{module}", __name__), attribute)
    raise AttributeError(f"module 'bids2hf' has no attribute {name!r}")
