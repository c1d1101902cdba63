"""Writing the output folder: shards (serially or in spawned workers), dataset files, manifest, state journal.
"""
