"""Choices and defaults of the ingest options, as plain values.

The command line builds its parser from these without importing OpenCV, Dask or zarr, so
``xraybatch --help`` answers at once; :mod:`.decode` and :mod:`.ingest` import them from here,
so each value is defined once.
"""

#: Resize filters, named as OpenCV's ``INTER_*`` flags (the default first).
INTERPOLATIONS = ("area", "linear")
#: JPEG decode modes: DCT-scaled when the image is big enough, or always full size.
DECODE_MODES = ("fast", "exact")
#: Images per chunk (and per task). See benchmarks/README.md for the measurements behind it.
DEFAULT_CHUNK = 64
#: Default decompression-bomb limit: 8x the largest Kermany image (2900 x 2500).
MAX_PIXELS = 64_000_000
