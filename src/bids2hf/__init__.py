"""bids2hf: BIDS datasets to Hugging Face Parquet datasets with embedded NIfTI files, and back.

The Python API mirrors the command line::

    import bids2hf
    report = bids2hf.convert("ds000001", "out/")          # or "hf://datasets/ORG/NAME"
    bids2hf.export("out/", "ds000001-copy/")
    bids2hf.verify("ds000001", "out/")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .nifti_header import load_nifti

__all__ = ["__version__", "load_nifti"]
