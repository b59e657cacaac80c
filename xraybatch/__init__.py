"""xraybatch: turn a folder of X-ray images into an analysis-ready zarr dataset, in parallel.

Examples
--------
>>> import xraybatch
>>> xraybatch.synth_dataset("demo_xray", n=240)                    # doctest: +SKIP
>>> xraybatch.ingest("demo_xray", "demo.zarr", labels="kermany3")  # doctest: +SKIP
>>> ds = xraybatch.open("demo.zarr")                               # doctest: +SKIP
>>> ds.images, ds.labels, ds.manifest, ds.stats()                  # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xraybatch")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

from .ingest import IngestResult, ingest  # noqa: E402
from .report import write_report  # noqa: E402  (matplotlib is imported only when called)
from .scan import Scan, scan  # noqa: E402
from .store import XrayStore  # noqa: E402
from .synth import synth_dataset  # noqa: E402


def open(out: str, storage_options: dict | None = None) -> XrayStore:  # noqa: A001
    """Open a store written by :func:`ingest` (read-only).

    Examples
    --------
    >>> ds = xraybatch.open("demo.zarr")  # doctest: +SKIP
    >>> ds.images.shape, ds.classes       # doctest: +SKIP
    """
    return XrayStore(out, storage_options)


__all__ = ["IngestResult", "Scan", "XrayStore", "__version__", "ingest", "open", "scan",
           "synth_dataset", "write_report"]
