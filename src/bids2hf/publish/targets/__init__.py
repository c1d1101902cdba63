"""Destinations the publisher writes to: the Hugging Face Hub and any fsspec filesystem."""
