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

from bids2hf._version import __version__

if TYPE_CHECKING:
    from bids2hf.api import convert, push
    from bids2hf.api import scan_and_plan as inspect
    from bids2hf.bids.nifti_reader import load_nifti
    from bids2hf.readback.export import export
    from bids2hf.readback.verify import verify

# verb → (module, attribute); imported on first use, so that `import bids2hf.write.workers` (every
# spawned shard writer) loads neither datasets nor nibabel
_API = {
    "convert": ("bids2hf.api", "convert"),
    "inspect": ("bids2hf.api", "scan_and_plan"),
    "push": ("bids2hf.api", "push"),
    "export": ("bids2hf.readback.export", "export"),
    "verify": ("bids2hf.readback.verify", "verify"),
    "load_nifti": ("bids2hf.bids.nifti_reader", "load_nifti"),
}

__all__ = ["__version__", "convert", "export", "inspect", "load_nifti", "push", "verify"]


def __getattr__(name: str) -> Any:
    if name in _API:
        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'bids2hf' has no attribute {name!r}")
