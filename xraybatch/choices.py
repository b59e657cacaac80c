"""Option values shared by the command line and the pipeline.

A light module (no OpenCV, Dask or zarr import), so that building the command-line parser
stays fast.
"""

#: Resize filters. ``auto``: INTER_LINEAR after a DCT-reduced JPEG decode (the decoder has
#: already averaged 2x2 to 8x8 blocks), INTER_AREA otherwise (see
#: ``xraybatch.decode.interpolation_for``).
INTERPOLATION_CHOICES = ("auto", "area", "linear")
DEFAULT_INTERPOLATION = "auto"
