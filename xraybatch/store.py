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
    message       (sample,)       str      the decoder's message for failures or warnings
    path          (sample,)       str      source path relative to attrs["source"]
    file_bytes    (sample,)       int64    size of the source file
    sha256        (sample,)       str      content hash of the source file
    orig_height, orig_width, orig_channels, orig_bitdepth (sample,) int32
    orig_format   (sample,)       str      format from the magic bytes (jpeg, png, ...)
    decode_scale  (sample,)       int8     1 full decode, 2/4/8 DCT-reduced decode
    patient_id    (sample,)       str      patient from the scan (file name, --patient-id, table)
    damaged       (sample,)       bool     stored, but its JPEG entropy data is damaged
    dicom_patient_id, study_uid, view_position, sex, age, photometric (sample,) str
    bits_stored   (sample,)       int32    DICOM header facts ("" / 0 / NaN for other sources)
    rescale_slope, rescale_intercept, window_center, window_width (sample,) float64
    window_used, voi_function (sample,) str; voi_center, voi_width (sample,) float64
                                           the window actually applied (xraybatch.render)
    mean, std     (sample,)       float64  per-image pixel mean and std (0 where invalid)
    findings      (sample, finding) int8   multi-label stores only: 1 positive, 0 negative,
                                           -1 uncertain, -2 not stated (labels is then -1)
    finding       (finding,)      str      multi-label stores only: the finding names
    chunk_done    (chunk,)        bool     written last by each chunk task (resume)

Group attributes hold the class and split names, size, interpolation, decode mode, source
root, package version, creation time and ``complete``, which is written last: a store
without ``complete: true`` is from an interrupted run.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import os
import shutil
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr import AsyncGroup
from zarr.codecs import ZstdCodec
from zarr.core.sync import sync

from . import __version__, qc, zarrio
from .location import StoreError, StoreRef
from .lock import LOCK_NAME, busy, writer

#: Arrays written once, at creation, from the scan.
_SCAN_ARRAYS = {"labels": "int16", "split": "int8", "path": str, "file_bytes": "int64",
                "patient_id": str}
#: Per-image arrays written by each chunk task, with their dtype and fill value.
RECORD_ARRAYS: dict[str, tuple[Any, Any]] = {
    "valid": ("bool", False), "status": (str, ""), "message": (str, ""), "sha256": (str, ""),
    "orig_height": ("int32", 0), "orig_width": ("int32", 0), "orig_channels": ("int32", 0),
    "orig_bitdepth": ("int32", 0), "orig_format": (str, ""), "decode_scale": ("int8", 0),
    # Damaged-but-decodable JPEG data, DICOM header facts and the window actually applied.
    "damaged": ("bool", False), "dicom_patient_id": (str, ""), "study_uid": (str, ""),
    "view_position": (str, ""), "sex": (str, ""), "age": (str, ""), "photometric": (str, ""),
    "bits_stored": ("int32", 0), "rescale_slope": ("float64", np.nan),
    "rescale_intercept": ("float64", np.nan), "window_center": ("float64", np.nan),
    "window_width": ("float64", np.nan), "window_used": (str, ""),
    "voi_center": ("float64", np.nan), "voi_width": ("float64", np.nan),
    "voi_function": (str, ""),
    "mean": ("float64", 0.0), "std": ("float64", 0.0),
}
#: Record arrays computed from the histograms (:func:`record_arrays`).
_MOMENTS = ("mean", "std")
#: Findings matrix values (multi-label stores), as CF flags; see xraybatch.sources.tables.
FINDING_FLAGS = {-2: "not_stated", -1: "uncertain", 0: "negative", 1: "positive"}
#: Compressors of the ``images`` array: none (see :func:`create`).
IMAGES_COMPRESSORS = None


def n_chunks(n: int, chunk: int) -> int:
    return -(-n // chunk)


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk along the sample axis."""
    return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


# --- creating -------------------------------------------------------------------------------


def _clear(ref: StoreRef) -> None:
    """Remove an existing store (only a zarr store: never an arbitrary folder).

    Its ``zarr.json`` is first replaced by that of an empty, incomplete xraybatch group, so
    an interrupted clear never leaves a store that reads as complete, and ``--overwrite`` or
    ``--resume`` still accept what it leaves.
    """
    stub = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {
        "xraybatch_version": __version__, "complete": False}}).encode()
    if ref.is_local:
        root = ref.local_path
        partial = ".zarr.json.partial"  # a clear killed before its rename may leave one
        names = [n for n in os.listdir(root) if n not in (LOCK_NAME, partial)]
        if names and "zarr.json" not in names:
            raise StoreError(f"{root} exists and is not a zarr store; refusing to overwrite it")
        tmp = os.path.join(root, partial)
        with open(tmp, "wb") as f:
            f.write(stub)
        os.replace(tmp, os.path.join(root, "zarr.json"))  # atomic
        for name in set(names) - {"zarr.json"}:
            target = os.path.join(root, name)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.remove(target)
    else:
        fs, path = ref.fs()
        fs.pipe_file(f"{path}/zarr.json", stub)  # one PUT: atomic on object stores
        for entry in fs.ls(path, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] != "zarr.json":
                fs.rm(entry, recursive=True)


def check_target(ref: StoreRef, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an output that must not be written, before anything (even the lock) touches it.

    Raises :class:`StoreError` if there is nothing to resume, if OUT exists without
    ``overwrite``, or if ``overwrite`` would replace something that is not a zarr store.
    """
    if ref.is_local and os.path.exists(ref.local_path) and not os.path.isdir(ref.local_path):
        raise StoreError(f"{ref.url} exists and is not a folder")
    if resume:
        if not ref.exists():
            raise StoreError(f"nothing to resume: {ref.url} does not exist")
        return
    holder = writer(ref)
    if holder:  # name the running ingest rather than say "already exists"
        raise busy(ref.url, holder)
    _check_replaceable(ref, overwrite)


def _check_replaceable(ref: StoreRef, overwrite: bool) -> None:
    if not ref.exists() or _is_empty(ref):
        return
    if not overwrite:
        raise StoreError(f"{ref.url} already exists: pass --overwrite to replace it "
                         "or --resume to finish an interrupted run")
    if ref.is_local and "zarr.json" not in os.listdir(ref.local_path):
        raise StoreError(f"{ref.url} exists and is not a zarr store; refusing to overwrite it")


def create(ref: StoreRef, manifest: pd.DataFrame, *, size: int, chunk: int,
           classes: list[str], splits: list[str], attrs: dict[str, Any],
           overwrite: bool = False, compression_level: int = 1,
           findings: pd.DataFrame | None = None) -> zarr.Group:
    """Create the store for ``manifest`` and write what the scan already knows.

    ``findings`` (multi-label input: (N, C) int8, one column per finding, ``classes`` are
    its column names) is stored as the 2-D array ``findings`` with a ``finding`` coordinate.

    Raises :class:`StoreError` if the store exists and ``overwrite`` is false. The caller
    holds the lock (:func:`xraybatch.lock.locked`) and has called :func:`check_target`
    before taking it.
    """
    _check_replaceable(ref, overwrite)
    if ref.exists() and not _is_empty(ref):
        _clear(ref)
    n = len(manifest)
    # Not "w", which would delete the lock file too; OUT is empty here. The group is born
    # marked as an incomplete xraybatch store (one write): --resume may then redo a creation
    # that was interrupted, and never mistakes another tool's store for one.
    group = ref.open("a", attributes={"xraybatch_version": __version__, "complete": False})
    # Zstd level 1 for everything but the pixels: X-ray pixels with film grain shrink only
    # ~1.10x for ~0.25 ms of CPU per image, 7% of a DCT-scaled decode; the
    # per-image arrays (hist, strings, flags) shrink several-fold for next to nothing
    # (benchmarks/README.md, "compressor").
    common = dict(compressors=ZstdCodec(level=compression_level))
    arrays = {
        "images": dict(shape=(n, size, size), dtype="uint8", chunks=(chunk, size, size),
                       fill_value=0, dimension_names=("sample", "y", "x"),
                       compressors=IMAGES_COMPRESSORS),
        "hist": dict(shape=(n, 256), dtype="int32", chunks=(chunk, 256), fill_value=0,
                     dimension_names=("sample", "bin"), **common),
        # Arrays written once, at creation, need not follow the task chunks (scan_chunk).
        **{name: dict(shape=(n,), dtype=dtype, fill_value=fill, dimension_names=("sample",),
                      chunks=(scan_chunk(chunk, n) if name in _SCAN_ARRAYS else chunk,), **common)
           for name, (dtype, fill) in {**{k: (v, None) for k, v in _SCAN_ARRAYS.items()},
                                       **RECORD_ARRAYS}.items()},
        "chunk_done": dict(shape=(n_chunks(n, chunk),), dtype="bool", chunks=(1,),
                           fill_value=False, dimension_names=("chunk",)),
    }
    arrays["labels"]["attributes"] = dict(
        flag_values=list(range(len(classes))),
        flag_meanings=" ".join(c.replace(" ", "_") for c in classes))
    arrays["split"]["attributes"] = dict(flag_values=list(range(len(splits))),
                                         flag_meanings=" ".join(splits))
    scanned = {
        "labels": manifest.label.to_numpy(np.int16),
        "split": manifest.split.map({s: i for i, s in enumerate(splits)}).to_numpy(np.int8),
        "path": manifest.path.to_numpy(dtype=object),
        "file_bytes": manifest.bytes.to_numpy(np.int64),
        "patient_id": (manifest["patient_id"].fillna("") if "patient_id" in manifest
                       else pd.Series("", index=manifest.index)).to_numpy(dtype=object),
    }
    if findings is not None:
        _findings_arrays(arrays, scanned, findings, chunk, common)
    sync(_create_arrays(group._async_group, arrays, scanned))
    # One write of zarr.json (attrs.update would rewrite it once per key).
    group.update_attributes({
        **attrs, **({"label_kind": "multi"} if findings is not None else {}),
        "classes": list(classes), "splits": list(splits), "size": size, "chunk": chunk,
        "n_images": n, "xraybatch_version": __version__, "complete": False,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    })
    # Chunk tasks then open every array from the root zarr.json alone (no read per array).
    # The arrays' metadata never changes after this.
    return zarrio.consolidate(group)


def scan_chunk(chunk: int, n: int) -> int:
    """Rows per chunk of the arrays written once at creation: a multiple of ``chunk``, ~64k,
    or fewer when ``n`` images need fewer.

    Chunk tasks never write them, so they need not follow the task chunks; one file per
    64 images would make a million-image store's creation write 100,000 tiny files, and a
    64k-row chunk for a small store would encode and pad 64k strings per column.

    Examples
    --------
    >>> scan_chunk(64, 10**6), scan_chunk(100_000, 10**6), scan_chunk(64, 1488)
    (65536, 100000, 1536)
    """
    return chunk * max(1, min(65536 // chunk, n_chunks(n, chunk)))


def _findings_arrays(arrays: dict[str, dict[str, Any]], data: dict[str, np.ndarray],
                     findings: pd.DataFrame, chunk: int, common: dict[str, Any]) -> None:
    """Add the multi-label arrays (``findings`` and its ``finding`` coordinate) to create."""
    names = [str(c) for c in findings.columns]
    arrays["findings"] = dict(
        shape=findings.shape, dtype="int8",
        chunks=(scan_chunk(chunk, len(findings)), len(names)),
        fill_value=-2, dimension_names=("sample", "finding"), **common,
        attributes=dict(flag_values=list(FINDING_FLAGS),
                        flag_meanings=" ".join(FINDING_FLAGS.values()), findings=names))
    # A 1-D array named like the dimension: xarray reads it as the finding coordinate.
    arrays["finding"] = dict(shape=(len(names),), dtype=str, chunks=(len(names),),
                             dimension_names=("finding",))
    data["findings"] = findings.to_numpy(np.int8)
    data["finding"] = np.array(names, dtype=object)


async def _create_arrays(group: AsyncGroup, arrays: dict[str, dict[str, Any]],
                         data: dict[str, np.ndarray]) -> None:
    """Create the arrays, then write the scan's columns, all concurrently (one loop trip)."""
    created = dict(zip(arrays, await asyncio.gather(
        *(group.create_array(name, **kw) for name, kw in arrays.items())), strict=True))
    await asyncio.gather(*(zarrio.whole_chunks(created[name]).setitem(slice(None), values)
                           for name, values in data.items()))


def _is_empty(ref: StoreRef) -> bool:
    if ref.is_local:
        return not [n for n in os.listdir(ref.local_path) if n != LOCK_NAME]
    return False


def record_arrays(records: list, hist: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image :class:`xraybatch.decode.Record` objects and histograms -> the store's
    per-image arrays.

    ``mean`` and ``std`` come from the histograms (0 where invalid), so that QC reads no
    histograms. Their sums are of integers below 2**53, hence exact in any order: the same
    values for a chunk as image by image.
    """
    arrays = {name: np.array([getattr(r, name) for r in records],
                             dtype=object if dtype is str else dtype)
              for name, (dtype, _) in RECORD_ARRAYS.items() if name not in _MOMENTS}
    valid = arrays["valid"]
    mean, std = np.zeros(len(records)), np.zeros(len(records))
    mean[valid], std[valid] = qc.image_moments(hist[valid])
    return {**arrays, "mean": mean, "std": std}


_OPENED: dict[tuple, zarr.Group] = {}


def open_for_chunks(ref: StoreRef) -> zarr.Group:
    """The root group for chunk tasks, reused while the store's root metadata is the same.

    Opening parses the consolidated metadata of every array (~4 ms, a fifth of a chunk's
    write), so each process keeps the group it opened last. A local store's root
    ``zarr.json`` is rewritten whenever the store is created or its attributes change,
    which changes the key; remote stores are opened every time.
    """
    if not ref.is_local:
        return ref.open("r+")
    meta = os.stat(os.path.join(ref.local_path, "zarr.json"))
    key = (os.path.abspath(ref.local_path), meta.st_ino, meta.st_mtime_ns, meta.st_size)
    group = _OPENED.get(key)
    if group is None:
        group = ref.open("r+")
        _OPENED.clear()
        _OPENED[key] = group
    return group


def write_chunk(group: zarr.Group, index: int, start: int, images: np.ndarray,
                hist: np.ndarray, records: dict[str, np.ndarray]) -> None:
    """Write one chunk's region of every per-image array, then mark the chunk done.

    Writing whole chunks only makes the write idempotent: a retried or resumed task
    rewrites the same bytes, and concurrent tasks never share a chunk. All the files of the
    chunk are stored in one trip through zarr's event loop, encoded in the calling thread
    (:func:`xraybatch.zarrio.write_chunks`). Record chunks that hold only their fill value
    are not written at all (:func:`_all_fill`).
    """
    arrays = zarrio.arrays_of(group, ["images", "hist", "chunk_done", *RECORD_ARRAYS])
    rows, total = zarrio.rows_per_chunk(arrays["images"]), arrays["images"].shape[0]
    values = {"images": images, "hist": hist,
              **{n: records[n] for n, (_, fill) in RECORD_ARRAYS.items()
                 if not _all_fill(records[n], fill)}}
    if start != index * rows or any(len(v) != min(rows, total - start) for v in values.values()):
        raise ValueError(f"{len(images)} rows from {start} are not chunk {index} of {rows} "
                         f"rows, or the record arrays differ in length")
    # chunk_done last: only once every array of the chunk is written.
    zarrio.write_chunks(arrays, index, values, last=("chunk_done", np.ones(1, bool)))


def _all_fill(values: np.ndarray, fill: Any) -> bool:
    """Whether a record chunk holds only its array's fill value, so need not be written.

    Most per-image facts are empty for most sources (the DICOM header columns of a JPEG
    set, ``damaged``): an unwritten chunk reads back as the fill value, and each array
    written costs a file per chunk. A retried or resumed chunk computes the same values, so
    it skips the same arrays.

    Examples
    --------
    >>> _all_fill(np.array(["", ""], dtype=object), ""), _all_fill(np.array([0.0, np.nan]), np.nan)
    (True, False)
    """
    if isinstance(fill, float) and np.isnan(fill):
        return bool(np.isnan(values).all())
    return bool((values == fill).all())


def mark_complete(group: zarr.Group, summary: dict[str, Any]) -> None:
    """Written last: from now on the store reads as complete."""
    group.update_attributes({"summary": summary, "complete": True, "completed":
                             _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")})
    if group.metadata.consolidated_metadata is None:  # the group was opened without it
        zarrio.consolidate(group)  # (create() consolidates; the arrays never change afterwards)


def is_ours(attrs: dict[str, Any]) -> bool:
    """Whether a group's attributes are those of an xraybatch store (set first by create)."""
    return "xraybatch_version" in attrs


def layout_written(attrs: dict[str, Any]) -> bool:
    """Whether :func:`create` finished (it writes the class names last)."""
    return "classes" in attrs


def done_chunks(group: zarr.Group) -> np.ndarray:
    return group["chunk_done"][:]


def scan_arrays(group: zarr.Group) -> pd.DataFrame:
    """What the scan wrote at creation, to check that a resumed run sees the same files."""
    return pd.DataFrame({"path": group["path"][:], "label": group["labels"][:],
                         "file_bytes": group["file_bytes"][:]})


def same_findings(group: zarr.Group, findings: pd.DataFrame | None) -> bool:
    """Whether the store holds exactly ``findings`` (both None/absent for single-label)."""
    if findings is None or "findings" not in group:
        return findings is None and "findings" not in group
    return (group["findings"].shape == findings.shape
            and bool((group["findings"][:] == findings.to_numpy(np.int8)).all()))


def failures(group: zarr.Group) -> pd.DataFrame:
    """Path, status and message of every file that was not stored."""
    status = group["status"][:]
    bad = np.flatnonzero(status != "ok")
    return pd.DataFrame({"path": group["path"][:][bad], "status": status[bad],
                         "message": group["message"][:][bad]})


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
        if not layout_written(self.group.attrs) or "chunk_done" not in self.group:
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
    def multilabel(self) -> bool:
        """Whether the store holds a findings matrix (then ``classes`` are its findings)."""
        return self.attrs.get("label_kind") == "multi"

    @property
    def findings(self) -> np.ndarray | None:
        """(N, C) int8: 1 positive, 0 negative, -1 uncertain, -2 not stated; None if single-label.

        Examples
        --------
        >>> ds.findings[:2], ds.classes  # doctest: +SKIP
        """
        return self.group["findings"][:] if self.multilabel else None

    def class_membership(self) -> np.ndarray:
        """(N, C) bool: valid images counted under each class (every positive finding)."""
        if self.multilabel:
            return (self.findings == 1) & self.valid[:, None]
        return (np.where(self.valid, self.labels, -1)[:, None]
                == np.arange(len(self.classes)))

    def multi_hot(self, uncertain: float = 0.0) -> np.ndarray:
        """(N, C) float32 targets: 1 positive, ``uncertain`` for -1, 0 otherwise.

        ``uncertain=1.0`` is CheXpert's U-Ones policy, ``0.0`` U-Zeros. A single-label store
        gives its one-hot labels.
        """
        if not self.multilabel:
            return (self.labels[:, None] == np.arange(len(self.classes))).astype(np.float32)
        values = self.findings
        return np.where(values == 1, 1.0, np.where(values == -1, uncertain, 0.0)
                        ).astype(np.float32)

    def class_names(self) -> np.ndarray:
        """Class of each sample; for multi-label stores its positive findings as ``A|B``."""
        if not self.multilabel:
            return np.asarray(self.classes, dtype=object)[self.labels]
        from .sources.tables import _joined

        return _joined(self.findings, self.classes)

    @property
    def valid(self) -> np.ndarray:
        return self.group["valid"][:]

    @property
    def chunk(self) -> int:
        """Images per zarr chunk: reading any one image decompresses its whole chunk."""
        return int(self.attrs["chunk"])

    def array(self, name: str) -> zarr.Array:
        """One zarr array of the store by name (for readers that page through it)."""
        return self.group[name]

    def read_images(self, rows: slice | np.ndarray) -> np.ndarray:
        """Images of ``rows`` (a slice or integer indices, any order) as a numpy array.

        Only the chunks holding those rows are read and decompressed.

        Examples
        --------
        >>> ds.read_images(slice(0, 32)).shape   # doctest: +SKIP
        (32, 256, 256)
        >>> ds.read_images(np.array([7, 3])).shape  # doctest: +SKIP
        (2, 256, 256)
        """
        images = self.group["images"]
        if isinstance(rows, slice):
            return images[rows]
        return images.get_orthogonal_selection((np.asarray(rows), slice(None), slice(None)))

    def read_chunk(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """The images of chunk ``index`` (rows ``index * chunk`` on), decoded into ``out``.

        ``out`` (uint8, at least ``chunk`` rows of ``size`` x ``size``) is a buffer to reuse:
        a fresh 8 MB array costs page faults on every read. Goes through zarr, so the
        images array's codecs (and checksums) apply.

        Examples
        --------
        >>> ds.read_chunk(1).shape   # doctest: +SKIP
        (128, 256, 256)
        """
        start = index * self.chunk
        stop = min(start + self.chunk, len(self))
        images = self.__dict__.get("_images")
        if images is None:  # opening an array is a trip through zarr's event loop: once
            images = self.__dict__["_images"] = self.group["images"]
        if out is None:
            return images[start:stop]
        from zarr.core.buffer import default_buffer_prototype

        view = out[:stop - start]
        images.get_basic_selection(
            slice(start, stop), out=default_buffer_prototype().nd_buffer.from_numpy_array(view))
        return view

    def view_positions(self) -> np.ndarray:
        """Each image's DICOM ViewPosition (``PA``, ``AP``, ``LL``...; "" when unknown)."""
        g = self.group
        return g["view_position"][:] if "view_position" in g else np.full(len(self), "", object)

    @property
    def manifest(self) -> pd.DataFrame:
        """One row per sample: source, label, outcome and quality-control flags."""
        g = self.group
        frame = pd.DataFrame({
            "path": g["path"][:],
            "split": np.asarray(self.splits, dtype=object)[g["split"][:]],
            "class_name": self.class_names(),
            "label": g["labels"][:],
            "file_bytes": g["file_bytes"][:],
            **{name: g[name][:] for name in RECORD_ARRAYS if name in g},
            "patient_id": self.patient_ids(),
        })
        return qc.add_flags(frame, None, self.size, moments=self._moments())

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-image mean and std: stored, or (stores written before 0.2) from the
        histograms one chunk at a time, so that the manifest never holds them all."""
        g = self.group
        if "mean" in g and "std" in g:
            return g["mean"][:], g["std"][:]
        parts = [qc.image_moments(g["hist"][a:b]) for a, b in chunk_bounds(len(self), self.chunk)]
        return (np.concatenate([m for m, _ in parts]) if parts else np.zeros(0),
                np.concatenate([s for _, s in parts]) if parts else np.zeros(0))

    def patient_ids(self) -> np.ndarray:
        """Each image's patient: the DICOM header's PatientID, else the scan's id, else "".

        The header is the hospital's own record; a file name is only a naming convention.
        """
        g = self.group
        n = len(self)
        scanned = g["patient_id"][:] if "patient_id" in g else np.full(n, "", object)
        header = g["dicom_patient_id"][:] if "dicom_patient_id" in g else np.full(n, "", object)
        return np.where(header != "", header, scanned).astype(object)

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
                          consolidated=self.complete, zarr_format=3, **kwargs)
        ds = ds.drop_vars("chunk_done")
        # numpy's StringDType (how zarr v3 strings arrive) breaks xarray operations that
        # promote dtypes, such as ds.where(..., drop=True): object is xarray's string type.
        ds = ds.assign({name: var.astype(object) for name, var in ds.data_vars.items()
                        if var.dtype.kind == "T"})
        return ds.assign_coords(
            class_name=("sample", self.class_names().astype(str)),
            split_name=("sample", np.asarray(self.splits)[self.split]),
        )
