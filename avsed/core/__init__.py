"""The vocabulary every stage shares, at the bottom of the line of stages: the 10 DESED classes (classes.py),
labels, events and clip timing (labels.py), the expected errors (errors.py: `AvsedError`, shown as one line),
the manifest's clip records and DESED's partitions (manifest.py), the feature store's schema, reader and writer
(store.py), its one-writer lock (store_lock.py) and its standardisation statistics (stats.py), and the typed
configuration's base (config.py).

It imports no stage. Above it the stages form a line, each importing only what is below it:
core <- features <- pipeline; core <- training <- evaluation <- grid, detection <- flows <- the CLI and demo
(avsed/cli.py, avsed/demo.py). The synthetic kit (avsed/synthetic/) sits beside the CLI and is imported by no
stage. tests/test_import_graph.py holds the line.
"""
