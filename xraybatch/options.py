"""Choices and defaults of the ingest options, as plain values.

The command line builds its parser from these without importing OpenCV, Dask or zarr, so
``xraybatch --help`` answers at once; :mod:`.decode` and :mod:`.ingest` import them from here,
so each value is defined once.
"""

#: Resize filters, named as OpenCV's ``INTER_*`` flags.
INTERPOLATIONS = ("area", "linear")
#: ``--interpolation`` values. ``auto``: INTER_LINEAR after a DCT-reduced JPEG decode (the
#: decoder has already averaged 2x2 to 8x8 blocks, and what is left to shrink is small), and
#: INTER_AREA otherwise (full decodes, other formats, upscaling).
INTERPOLATION_CHOICES = ("auto", *INTERPOLATIONS)
DEFAULT_INTERPOLATION = "auto"
#: JPEG decode modes: DCT-scaled when the image is big enough, or always full size.
DECODE_MODES = ("fast", "exact")
#: Images per chunk (and per task). See benchmarks/README.md for the measurements behind it.
DEFAULT_CHUNK = 128
#: Default decompression-bomb limit: 8x the largest Kermany image (2900 x 2500).
MAX_PIXELS = 64_000_000
#: ``--window``: how DICOM and images deeper than 8 bits are windowed (xraybatch.render).
WINDOWS = ("header", "minmax", "percentile")
#: ``--fit``: how an image is fitted into the square output (xraybatch.geometry).
FITS = ("stretch", "pad", "crop")
#: Grey value of the border that ``--fit pad`` adds (black: the background of a radiograph).
PAD_VALUE = 0
#: Percentiles that ``--window percentile`` maps to 0 and 255.
PERCENTILES = (1.0, 99.0)
