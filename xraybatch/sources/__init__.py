"""Input sources: where the files of a dataset are found and how their bytes are read.

One small module per kind of input, all behind the same two questions:

- :mod:`.listing`: which files are below a root (a local folder or an fsspec URL prefix),
  streamed as ``(relative path, bytes)`` pairs (the folder scan and the table check use it);
- :mod:`.tables`: which files a table (CSV or Parquet) names, with their labels, split and
  patient (column mappings and the ``nih`` / ``chexpert`` presets);
- :mod:`.remote`: the bytes of one file given by URL, read by the worker itself.

:func:`xraybatch.scan.scan` is the entry point that picks the source; nothing here imports
the scan, the decoder or the store, so imports flow one way.
"""

#: Names of the table column presets (:data:`xraybatch.sources.tables.PRESETS`), here so that
#: the command line builds its parser without importing pandas.
TABLE_PRESETS = ("nih", "chexpert")
