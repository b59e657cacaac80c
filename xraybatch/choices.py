"""Option choices that the command line needs without importing OpenCV, Dask or zarr."""

#: How to window images deeper than 8 bits and DICOM (``--window``), see xraybatch.render.
WINDOWS = ("header", "minmax", "percentile")
#: How to fit an image into the square output (``--fit``), see xraybatch.geometry.
FITS = ("stretch", "pad", "crop")
#: Grey value of the border that ``--fit pad`` adds (black: the background of a radiograph).
PAD_VALUE = 0
#: Percentiles that ``--window percentile`` maps to 0 and 255.
PERCENTILES = (1.0, 99.0)
