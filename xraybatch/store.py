"""The zarr v3 store: the one module that knows its array names and layout.

Layout of a store (a zarr v3 group; every array has ``dimension_names``, so
``xarray.open_zarr(OUT)`` and ``dask.array.from_zarr(OUT, component="images")`` work
without xraybatch)::

    images        (sample, y, x)  uint8    resized grayscale images; zero where invalid
    hist          (sample, bin)   int32    256-bin histogram of each stored image
    labels        (sample,)       int16    class index (CF flag_values / flag_meanings)
    split         (sample,)       int8     index into attrs["splits"]
    valid         (sample,)       bool     false where the file could not be used
    status        (sample,)       str      "ok" or a reason code (xraybatch.decode.REASONS)
    message       (sample,)       str      the decoder's message for failures, else ""
    path          (sample,)       str      source path relative to attrs["source"]
    file_bytes    (sample,)       int64    size of the source file
    sha256        (sample,)       str      content hash of the source file
    orig_height, orig_width, orig_channels, orig_bitdepth (sample,) int32
    orig_format   (sample,)       str      format from the magic bytes (jpeg, png, ...)
    decode_scale  (sample,)       int8     1 full decode, 2/4/8 DCT-reduced decode
    chunk_done    (chunk,)        bool     written last by each chunk task (resume)

Group attributes hold the class and split names, size, interpolation, decode mode, source
root, package version, creation time and ``complete``, which is written last: a store
without ``complete: true`` is from an interrupted run.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import shutil
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import ZstdCodec
from zarr.errors import ZarrUserWarning

from . import __version__, qc

#: Arrays written once, at creation, from the scan.
_SCAN_ARRAYS = {"labels": "int16", "split": "int8", "path": str, "file_bytes": "int64"}
#: Per-image arrays written by each chunk task, with their dtype and fill value.
RECORD_ARRAYS: dict[str, tuple[Any, Any]] = {
    "valid": ("bool", False), "status": (str, ""), "message": (str, ""), "sha256": (str, ""),
    "orig_height": ("int32", 0), "orig_width": ("int32", 0), "orig_channels": ("int32", 0),
    "orig_bitdepth": ("int32", 0), "orig_format": (str, ""), "decode_scale": ("int8", 0),
}
LOCK_NAME = ".xraybatch.lock"


class StoreError(RuntimeError):
    """A store that cannot be created, resumed or read as asked (reported in one line)."""


@dataclass(frozen=True)
class StoreRef:
    """Where a store lives: a local path or an fsspec URL, plus its storage options.

    It is small and picklable, so chunk tasks on any worker can open the store themselves.
    """

    url: str
    storage_options: dict = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return "://" not in self.url or self.url.startswith("file://")

    @property
    def local_path(self) -> str:
        return self.url.removeprefix("file://")

    def open(self, mode: str = "r") -> zarr.Group:
        if self.is_local:
            return zarr.open_group(self.local_path, mode=mode, zarr_format=3)
        return zarr.open_group(self.url, mode=mode, zarr_format=3,
                               storage_options=self.storage_options or None)

    def fs(self):
        """The fsspec filesystem and path of a remote store."""
        import fsspec

        return fsspec.core.url_to_fs(self.url, **self.storage_options)

    def exists(self) -> bool:
        if self.is_local:
            return os.path.exists(self.local_path)
        fs, path = self.fs()
        return fs.exists(f"{path}/zarr.json")


def n_chunks(n: int, chunk: int) -> int:
    return -(-n // chunk)


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk along the sample axis."""
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


# --- creating -------------------------------------------------------------------------------


def _clear(ref: StoreRef) -> None:
    """Remove an existing store (only a zarr store: never an arbitrary folder)."""
    if ref.is_local:
        root = ref.local_path
        names = [n for n in os.listdir(root) if n != LOCK_NAME]
        if names and "zarr.json" not in names:
            raise StoreError(f"{root} exists and is not a zarr store; refusing to overwrite it")
        for name in names:
            target = os.path.join(root, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
    else:
        fs, path = ref.fs()
        if fs.exists(path):
            fs.rm(path, recursive=True)


def create(ref: StoreRef, manifest: pd.DataFrame, *, size: int, chunk: int,
           classes: list[str], splits: list[str], attrs: dict[str, Any],
           overwrite: bool = False, compression_level: int = 3) -> zarr.Group:
    """Create the store for ``manifest`` and write what the scan already knows.

    Raises :class:`StoreError` if the store exists and ``overwrite`` is false.
    """
    if ref.exists() and not _is_empty(ref):
        if not overwrite:
            raise StoreError(f"{ref.url} already exists: pass --overwrite to replace it "
                             "or --resume to finish an interrupted run")
        _clear(ref)
    n = len(manifest)
    group = ref.open("a")  # not "w", which would delete the lock file too; OUT is empty here
    common = dict(compressors=ZstdCodec(level=compression_level))
    group.create_array("images", shape=(n, size, size), dtype="uint8", chunks=(chunk, size, size),
                       fill_value=0, dimension_names=("sample", "y", "x"), **common)
    group.create_array("hist", shape=(n, 256), dtype="int32", chunks=(chunk, 256), fill_value=0,
                       dimension_names=("sample", "bin"), **common)
    for name, (dtype, fill) in {**{k: (v, None) for k, v in _SCAN_ARRAYS.items()},
                                **RECORD_ARRAYS}.items():
        group.create_array(name, shape=(n,), dtype=dtype, chunks=(chunk,), fill_value=fill,
                           dimension_names=("sample",), **common)
    group.create_array("chunk_done", shape=(n_chunks(n, chunk),), dtype="bool", chunks=(1,),
                       fill_value=False, dimension_names=("chunk",))
    group["labels"][:] = manifest.label.to_numpy(np.int16)
    group["labels"].attrs.update(flag_values=list(range(len(classes))),
                                 flag_meanings=" ".join(c.replace(" ", "_") for c in classes))
    group["split"][:] = manifest.split.map({s: i for i, s in enumerate(splits)}).to_numpy(np.int8)
    group["split"].attrs.update(flag_values=list(range(len(splits))),
                                flag_meanings=" ".join(splits))
    group["path"][:] = manifest.path.to_numpy(dtype=object)
    group["file_bytes"][:] = manifest.bytes.to_numpy(np.int64)
    group.attrs.update({
        **attrs, "classes": list(classes), "splits": list(splits), "size": size, "chunk": chunk,
        "n_images": n, "xraybatch_version": __version__, "complete": False,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    return group


def _is_empty(ref: StoreRef) -> bool:
    if ref.is_local:
        return not [n for n in os.listdir(ref.local_path) if n != LOCK_NAME]
    return False


def write_chunk(group: zarr.Group, index: int, start: int, images: np.ndarray,
                hist: np.ndarray, records: dict[str, np.ndarray]) -> None:
    """Write one chunk's region of every per-image array, then mark the chunk done.

    Writing whole chunks only makes the write idempotent: a retried or resumed task
    rewrites the same bytes, and concurrent tasks never share a chunk.
    """
    stop = start + len(images)
    group["images"][start:stop] = images
    group["hist"][start:stop] = hist
    for name in RECORD_ARRAYS:
        group[name][start:stop] = records[name]
    group["chunk_done"][index] = True


def mark_complete(group: zarr.Group, summary: dict[str, Any]) -> None:
    """Written last: from now on the store reads as complete."""
    group.attrs.update({"summary": summary, "complete": True,
                        "completed": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    # Consolidated metadata lets xarray open the store with one read and without a warning.
    # zarr-python warns that it is not in the v3 spec yet (and about the lock file): known.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZarrUserWarning)
        zarr.consolidate_metadata(group.store, path=group.path, zarr_format=3)


def done_chunks(group: zarr.Group) -> np.ndarray:
    return group["chunk_done"][:]


def scan_arrays(group: zarr.Group) -> pd.DataFrame:
    """What the scan wrote at creation, to check that a resumed run sees the same files."""
    return pd.DataFrame({"path": group["path"][:], "label": group["labels"][:]})


# --- locking --------------------------------------------------------------------------------


@contextmanager
def locked(ref: StoreRef) -> Iterator[None]:
    """Hold the store's writer lock; a second writer is refused at once.

    Local stores use ``flock`` on a file inside the store, which the kernel releases when
    the holder dies, so a killed run never leaves a stale lock behind.
    """
    if not ref.is_local:  # object stores have no locks; concurrent writers are the user's call
        yield
        return
    os.makedirs(ref.local_path, exist_ok=True)
    path = os.path.join(ref.local_path, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StoreError(f"{ref.url} is being written by {holder}; "
                             "wait for that ingest to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:  # leave no foreign file in the store (zarr would warn about it)
            os.unlink(path)
    finally:
        os.close(fd)


# --- reading --------------------------------------------------------------------------------


class XrayStore:
    """A stored dataset, opened read-only (see :func:`xraybatch.open`).

    Examples
    --------
    >>> ds = xraybatch.open("out.zarr")  # doctest: +SKIP
    >>> ds.images            # dask array (N, size, size) uint8  # doctest: +SKIP
    >>> ds.labels, ds.classes, ds.manifest, ds.stats()  # doctest: +SKIP
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.ref = StoreRef(str(url), storage_options or {})
        if not self.ref.exists():
            raise StoreError(f"no store at {url}")
        try:
            self.group = self.ref.open("r")
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise StoreError(f"{url} is not a zarr v3 store: {e}") from None
        if "classes" not in self.group.attrs or "chunk_done" not in self.group:
            raise StoreError(f"{url} is not an xraybatch store (or its creation was interrupted)")
        self.attrs: dict[str, Any] = dict(self.group.attrs)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"<XrayStore {self.ref.url}: {self.attrs['n_images']} images "
                f"{self.size}x{self.size}, classes {self.classes}, {state}>")

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def progress(self) -> tuple[int, int]:
        """(chunks written, chunks in all)."""
        done = done_chunks(self.group)
        return int(done.sum()), len(done)

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.attrs["splits"])

    @property
    def size(self) -> int:
        return int(self.attrs["size"])

    def __len__(self) -> int:
        return int(self.attrs["n_images"])

    @property
    def images(self):
        """All images as a dask array (N, size, size) uint8, one dask chunk per zarr chunk."""
        import dask.array as da

        return da.from_zarr(self.group["images"])

    @property
    def hist(self):
        """Per-image histograms as a dask array (N, 256)."""
        import dask.array as da

        return da.from_zarr(self.group["hist"])

    @property
    def labels(self) -> np.ndarray:
        return self.group["labels"][:]

    @property
    def split(self) -> np.ndarray:
        return self.group["split"][:]

    @property
    def valid(self) -> np.ndarray:
        return self.group["valid"][:]

    def array(self, name: str) -> zarr.Array:
        """One zarr array of the store by name (for readers that page through it)."""
        return self.group[name]

    @property
    def manifest(self) -> pd.DataFrame:
        """One row per sample: source, label, outcome and quality-control flags."""
        g = self.group
        frame = pd.DataFrame({
            "path": g["path"][:],
            "split": np.asarray(self.splits, dtype=object)[g["split"][:]],
            "class_name": np.asarray(self.classes, dtype=object)[g["labels"][:]],
            "label": g["labels"][:],
            "file_bytes": g["file_bytes"][:],
            **{name: g[name][:] for name in RECORD_ARRAYS},
        })
        hist = g["hist"][:]
        return qc.add_flags(frame, hist, self.size)

    def stats(self) -> dict[str, Any]:
        """Exact global, per-class and per split x class statistics (see :mod:`.stats`)."""
        from . import stats

        return stats.compute(self)

    def to_xarray(self):
        """The store as an ``xarray.Dataset`` with class and split names as coordinates."""
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("to_xarray needs xarray: pip install 'xraybatch[xarray]'") from None
        kwargs = {"storage_options": self.ref.storage_options} if not self.ref.is_local else {}
        ds = xr.open_zarr(self.ref.local_path if self.ref.is_local else self.ref.url,
                          consolidated=False, zarr_format=3, **kwargs)
        ds = ds.drop_vars("chunk_done")
        return ds.assign_coords(
            class_name=("sample", np.asarray(self.classes)[self.labels]),
            split_name=("sample", np.asarray(self.splits)[self.split]),
        )
