"""Destinations the publisher writes to: the Hugging Face Hub and any fsspec filesystem, one
module each, chosen by the URL's protocol (registry.py)."""
