"""The data every layer shares and the on-disk contract: inventory, rows, manifest, state, footer index, hashing.
"""
