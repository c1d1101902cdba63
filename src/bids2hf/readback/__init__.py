"""The way back: open a published dataset, export it to an identical BIDS folder, verify it, read byte ranges.
"""
