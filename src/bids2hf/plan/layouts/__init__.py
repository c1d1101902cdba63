"""The two row layouts: one row per subject/session (session.py), one row per image (scan.py)."""
