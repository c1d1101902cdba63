"""Synthetic BIDS datasets for tests, benchmarks and `bids2hf demo`."""
