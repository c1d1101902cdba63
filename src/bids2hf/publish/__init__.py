"""Publishing an output folder: classify, stage, upload, commit, verify (Hub or fsspec), with one retry policy.
"""
