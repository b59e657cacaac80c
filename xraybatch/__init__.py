"""xraybatch: turn a folder of X-ray images into an analysis-ready zarr dataset, in parallel.

Examples
--------
>>> import xraybatch
>>> xraybatch.synth_dataset("demo_xray", n=240)                    # doctest: +SKIP
>>> xraybatch.ingest("demo_xray", "demo.zarr", labels="kermany3")  # doctest: +SKIP
>>> ds = xraybatch.open("demo.zarr")                               # doctest: +SKIP
>>> ds.images, ds.labels, ds.manifest, ds.stats()                  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ingest import ingest
    from .report import write_report
    from .scan import Scan, scan
    from .store import XrayStore
    from .synth import synth_dataset
    from .tasks import IngestResult
    from .verify import VerifyResult, verify

# The public names and the submodules, imported on first use (PEP 562): `import xraybatch`
# and the command line's --help stay free of Dask, OpenCV, zarr and pandas.
_LAZY = {"IngestResult": "tasks", "ingest": "ingest", "write_report": "report",
         "Scan": "scan", "scan": "scan", "XrayStore": "store", "synth_dataset": "synth",
         "verify": "verify", "VerifyResult": "verify"}
_SUBMODULES = ("cli", "decode", "dups", "figures", "findings", "fingerprint", "options",
               "phantom", "progress", "qc", "report", "splits", "stats", "store", "synth",
               "torch_dataset", "torch_loader", "zarrio")


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value = _version()
    elif name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # which binds it here
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_SUBMODULES, "__version__"})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xraybatch")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


class _Package(types.ModuleType):
    """Keeps ``xraybatch.ingest`` and ``xraybatch.scan`` the functions.

    Importing the submodule ``xraybatch.ingest`` binds it as an attribute of the package;
    that binding is dropped so that the name still resolves to the function, as it did
    when the package imported everything eagerly.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and _LAZY.get(name) == name):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def open(out: str, storage_options: dict | None = None) -> XrayStore:  # noqa: A001
    """Open a store written by :func:`ingest` (read-only).

    Examples
    --------
    >>> ds = xraybatch.open("demo.zarr")  # doctest: +SKIP
    >>> ds.images.shape, ds.classes       # doctest: +SKIP
    """
    from .store import XrayStore

    return XrayStore(out, storage_options)


__all__ = ["IngestResult", "Scan", "VerifyResult", "XrayStore", "__version__", "ingest",
           "open", "scan", "synth_dataset", "verify", "write_report"]
