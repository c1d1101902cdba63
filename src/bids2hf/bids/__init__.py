"""Reading a BIDS folder: walk it, parse names and sidecars, check NIfTI headers and privacy, into an Inventory.
"""
