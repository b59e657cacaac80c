"""The zarr v3 store: the one module that knows its array names and layout.

Layout of a store (a zarr v3 group; every array has ``dimension_names``, so
``xarray.open_zarr(OUT)`` and ``dask.array.from_zarr(OUT, component="images")`` work
without xraybatch)::

    images        (sample, y, x)  uint8    resized grayscale images; zero where invalid
    hist          (sample, bin)   int32    256-bin histogram of each stored image
    labels        (sample,)       int16    class index (CF flag_values / flag_meanings)
    split         (sample,)       int8     index into attrs["splits"]: the active assignment
    split_original (sample,)      int8     the scan's assignment, never rewritten (``xraybatch
                                           split`` rewrites ``split``, ``--restore`` copies
                                           this back)
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
    fp_thumb      (sample, fp_y, fp_x) uint8  content fingerprint: equalised 64 x 64 thumbnail
    fp_hash       (sample, fp_code) uint64 content fingerprint: SimHash codes (.fingerprint)
    dup_pairs     (pair, end)     int64    verified near-duplicate pairs (a < b), written by
    dup_score     (pair,)         float32  xraybatch.dups (attrs: rows searched, score floor)
    findings      (sample, finding) int8   multi-label stores only: 1 positive, 0 negative,
                                           -1 uncertain, -2 not stated (labels is then -1)
    finding       (finding,)      str      multi-label stores only: the finding names
    chunk_done    (chunk,)        bool     written last by each chunk task (resume)
    stats_partials/   (subgroup)           integer sums behind ``stats`` for the rows it
                                           covers (:func:`write_partials`)

Group attributes hold the class and split names, size, interpolation, decode mode, source
root, package version, creation time and ``complete``, which is written last: a store
without ``complete: true`` is from an interrupted run. Format 2 (``format_version: 2``) adds
``version`` and ``history`` (one entry per ingest, append and split, :func:`history_attrs`) and
``n_images``, the committed rows: the root ``zarr.json`` (attributes and consolidated
metadata, one atomic write) is the commit point of an append (:func:`commit`), so readers
of the consolidated metadata see the last complete version while ``append_pending``
records an append in progress.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr import AsyncGroup
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync
from zarr.errors import ZarrUserWarning

from . import __version__, fingerprint, qc, zarrio
from .findings import FINDING_FLAGS, joined
from .location import StoreError, StoreRef
from .lock import LOCK_NAME, busy, locked, writer

#: Arrays written once, at creation, from the scan.
_SCAN_ARRAYS = {"labels": "int16", "split": "int8", "split_original": "int8", "path": str,
                "file_bytes": "int64", "patient_id": str}
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
#: Content fingerprints computed by each chunk task from the pixels it decoded
#: (:mod:`xraybatch.fingerprint`): name -> (shape of one row, dtype, fill, dimension names).
FINGERPRINT_ARRAYS: dict[str, tuple[tuple[int, ...], str, Any, tuple[str, ...]]] = {
    "fp_thumb": ((fingerprint.THUMB, fingerprint.THUMB), "uint8", 0, ("fp_y", "fp_x")),
    "fp_hash": ((fingerprint.N_CODES,), "uint64", 0, ("fp_code",)),
}
#: Verified near-duplicate pairs, kept by :mod:`xraybatch.dups` so that stats need not search
#: again: rows (a, b) and their score; the attributes of ``dup_pairs`` say what was searched.
PAIR_ARRAYS = ("dup_pairs", "dup_score")
#: Record arrays computed from the histograms (:func:`record_arrays`).
_MOMENTS = ("mean", "std")
#: Bytes-to-bytes codecs of the ``images`` array: no compression, a CRC-32C checksum that
#: zarr checks on every read (see :func:`create`).
IMAGES_COMPRESSORS: Any = Crc32cCodec()
#: Format of the stores this version writes (group attribute ``format_version``); a store
#: without it is format 1: the same arrays, without checksums.
FORMAT_VERSION = 2
#: Subgroup holding the statistics partials, one child per committed version.
PARTIALS = "stats_partials"


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
        for entry in fs.ls(path, detail=False, refresh=True):  # (s3fs caches listings)
            if entry.rstrip("/").rsplit("/", 1)[-1] not in ("zarr.json", LOCK_NAME):
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
        raise StoreError(f"{ref.url} already exists: pass --overwrite to replace it, "
                         "--append to add the files it does not hold or --resume to finish "
                         "an interrupted run")
    if ref.is_local and "zarr.json" not in os.listdir(ref.local_path):
        raise StoreError(f"{ref.url} exists and is not a zarr store; refusing to overwrite it")


def create(ref: StoreRef, manifest: pd.DataFrame, *, size: int, chunk: int,
           classes: list[str], splits: list[str], attrs: dict[str, Any],
           overwrite: bool = False, compression_level: int = 1,
           findings: pd.DataFrame | None = None, checksums: bool = True) -> zarr.Group:
    """Create the store for ``manifest`` and write what the scan already knows.

    ``checksums=False`` writes a format-1 store (the pixels without CRC-32C, Zstandard
    without its frame checksum, no ``format_version``), as versions before it did: for the
    tests and benchmarks of stores of that format.

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
    # (benchmarks/README.md, "compressor"). Format 2 adds a checksum to every chunk: CRC-32C
    # on the pixels, Zstandard's frame checksum elsewhere (xraybatch verify; zarr checks
    # both on every read).
    common = dict(compressors=ZstdCodec(level=compression_level, checksum=checksums))
    own = common if checksums else {}  # format 1 left these two at zarr's default codec
    arrays = {
        "images": dict(shape=(n, size, size), dtype="uint8", chunks=(chunk, size, size),
                       fill_value=0, dimension_names=("sample", "y", "x"),
                       compressors=IMAGES_COMPRESSORS if checksums else None),
        "hist": dict(shape=(n, 256), dtype="int32", chunks=(chunk, 256), fill_value=0,
                     dimension_names=("sample", "bin"), **common),
        # Arrays written once, at creation, need not follow the task chunks (scan_chunk).
        **{name: dict(shape=(n,), dtype=dtype, fill_value=fill, dimension_names=("sample",),
                      chunks=(scan_chunk(chunk, n) if name in _SCAN_ARRAYS else chunk,), **common)
           for name, (dtype, fill) in {**{k: (v, None) for k, v in _SCAN_ARRAYS.items()},
                                       **RECORD_ARRAYS}.items()},
        "chunk_done": dict(shape=(n_chunks(n, chunk),), dtype="bool", chunks=(1,),
                           fill_value=False, dimension_names=("chunk",), **own),
        **{name: dict(shape=(n, *row), dtype=dtype, chunks=(chunk, *row), fill_value=fill,
                      dimension_names=("sample", *dims), **common)
           for name, (row, dtype, fill, dims) in FINGERPRINT_ARRAYS.items()},
    }
    arrays["fp_hash"]["attributes"] = {"fingerprint_version": fingerprint.VERSION}
    arrays["labels"]["attributes"] = dict(
        flag_values=list(range(len(classes))),
        flag_meanings=" ".join(c.replace(" ", "_") for c in classes))
    arrays["split"]["attributes"] = arrays["split_original"]["attributes"] = _split_flags(splits)
    scanned = scan_values(manifest, manifest.label.to_numpy(np.int16), splits)
    scanned["split_original"] = scanned["split"]
    if findings is not None:
        _findings_arrays(arrays, scanned, findings, chunk, common, own)
    sync(_create_arrays(group._async_group, arrays, scanned))
    # One write of zarr.json (attrs.update would rewrite it once per key).
    group.update_attributes({
        **attrs, **({"label_kind": "multi"} if findings is not None else {}),
        "classes": list(classes), "splits": list(splits), "size": size, "chunk": chunk,
        "n_images": n, "xraybatch_version": __version__, "complete": False,
        "created": _now(),
        **({"format_version": FORMAT_VERSION, "version": 0, "history": []} if checksums
           else {}),
    })
    # Chunk tasks then open every array from the root zarr.json alone (no read per array).
    # Their metadata changes afterwards only through a consolidated commit: an append
    # (grow, commit), a split (write_split) or kept near-duplicate pairs (write_pairs).
    return zarrio.consolidate(group)


def scan_values(manifest: pd.DataFrame, labels: np.ndarray, splits: list[str],
                findings: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays written from the scan (not by chunk tasks) for the rows of ``manifest``,
    ``labels`` already numbered in the store's class list, ``split`` in ``splits``;
    ``findings`` ((N, C) int8) for an append to a multi-label store."""
    return {**({} if findings is None else {"findings": np.asarray(findings, np.int8)}),
        "labels": np.asarray(labels, np.int16),
        "split": manifest.split.map({s: i for i, s in enumerate(splits)}).to_numpy(np.int8),
        "path": manifest.path.to_numpy(dtype=object),
        "file_bytes": manifest.bytes.to_numpy(np.int64),
        "patient_id": (manifest["patient_id"].fillna("") if "patient_id" in manifest
                       else pd.Series("", index=manifest.index)).to_numpy(dtype=object),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


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
                     findings: pd.DataFrame, chunk: int, common: dict[str, Any],
                     own: dict[str, Any]) -> None:
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
                             dimension_names=("finding",), **own)
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


def open_for_chunks(ref: StoreRef, mode: str = "r+") -> zarr.Group:
    """The root group for chunk tasks, reused while the store's root metadata is the same.

    Opening parses the consolidated metadata of every array (~4 ms, a fifth of a chunk's
    write), so each process keeps the group it opened last. A local store's root
    ``zarr.json`` is rewritten whenever the store is created or its attributes change,
    which changes the key; remote stores are opened every time. ``mode="r"``: read-only
    (``verify``). During an append the consolidated metadata still describes the last
    committed version, so writers open the arrays from their own metadata, which has the
    grown shapes (:func:`open_pending`).
    """
    if not ref.is_local:
        return _writable(ref, mode)
    meta = os.stat(os.path.join(ref.local_path, "zarr.json"))
    key = (os.path.abspath(ref.local_path), meta.st_ino, meta.st_mtime_ns, meta.st_size, mode)
    group = _OPENED.get(key)
    if group is None:
        group = _writable(ref, mode)
        _OPENED.clear()
        _OPENED[key] = group
    return group


def _writable(ref: StoreRef, mode: str = "r+") -> zarr.Group:
    group = ref.open(mode)
    return open_pending(ref) if mode != "r" and APPEND_PENDING in group.attrs else group


def open_pending(ref: StoreRef) -> zarr.Group:
    """The store opened for an append: every array read from its own metadata (the shapes
    being written), not from the consolidated metadata (the last committed version)."""
    return ref.open("r+", use_consolidated=False)


def write_chunk(group: zarr.Group, index: int, start: int, images: np.ndarray,
                hist: np.ndarray, records: dict[str, np.ndarray], every_array: bool = False
                ) -> None:
    """Write one chunk's region of every per-image array, then mark the chunk done.

    Writing whole chunks only makes the write idempotent: a retried or resumed task
    rewrites the same bytes, and concurrent tasks never share a chunk. All the files of the
    chunk are stored in one trip through zarr's event loop, encoded in the calling thread
    (:func:`xraybatch.zarrio.write_chunks`). Record chunks that hold only their fill value
    are not written at all (:func:`_all_fill`), unless ``every_array``: a chunk completed by
    an append replaces files that an abandoned append may have written.
    """
    # A store created before fingerprints (resumed by a newer version) has none to write.
    prints = [name for name in FINGERPRINT_ARRAYS if name in records and name in group]
    arrays = zarrio.arrays_of(group, ["images", "hist", "chunk_done", *RECORD_ARRAYS, *prints])
    rows, total = zarrio.rows_per_chunk(arrays["images"]), arrays["images"].shape[0]
    fills = {**{n: fill for n, (_, fill) in RECORD_ARRAYS.items()},
             **{n: FINGERPRINT_ARRAYS[n][2] for n in prints}}
    values = {"images": images, "hist": hist,
              **{n: records[n] for n, fill in fills.items()
                 if every_array or not _all_fill(records[n], fill)}}
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


def mark_complete(group: zarr.Group, summary: dict[str, Any],
                  entry: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
                  ) -> None:
    """Written last, with the consolidated metadata, in one write of the root ``zarr.json``:
    from now on the store reads as complete.

    ``entry`` (format 2) is its history entry (:func:`history_attrs`); ``extra`` more
    attributes (:func:`write_partials`' reference to the statistics partials).
    """
    attrs = {"summary": summary, "complete": True, "completed": _now(), **(extra or {})}
    if entry is not None and "history" in group.attrs and not group.attrs.get("version"):
        attrs |= history_attrs(dict(group.attrs), entry)  # (a --resume of a complete store
        # completes it again: still version 1)
    zarrio.consolidate(group, attrs)


# --- versions, history and appends ----------------------------------------------------------

#: Attribute recording an append in progress (the store reads as its last committed version).
APPEND_PENDING = "append_pending"
#: Attribute naming the statistics partials of the committed rows.
PARTIALS_ATTR = "stats_partials"


def history_attrs(attrs: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The ``version`` and ``history`` attributes once ``entry`` is recorded (not written).

    ``entry`` gives ``action`` ("ingest", "append", "split"), ``source`` and ``rows``
    ``[start, stop]``; the time, the next version and the package version are filled in.

    Examples
    --------
    >>> out = history_attrs({"version": 1, "history": [{}]}, {"action": "append",
    ...                     "source": "/data", "rows": [10, 12]})
    >>> out["version"], out["history"][-1]["version"], len(out["history"])
    (2, 2, 2)
    """
    version = int(attrs.get("version", 1)) + 1  # (a store without it is at version 1)
    full = {"action": entry.get("action"), "when": _now(), "source": entry.get("source"),
            "rows": list(entry.get("rows", [])), **entry, "version": version,
            "xraybatch_version": __version__}
    return {"version": version, "history": [*attrs.get("history", []), full]}


def sample_arrays(group: zarr.Group) -> list[str]:
    """Every array with one row per image (first dimension ``sample``): what an append grows.
    """
    with warnings.catch_warnings():  # (a listing also meets the lock file: known)
        warnings.simplefilter("ignore", ZarrUserWarning)
        return [name for name, array in group.arrays()
                if (array.metadata.dimension_names or (None,))[0] == "sample"]


def begin_append(group: zarr.Group, pending: dict[str, Any]) -> None:
    """Record the append in progress; the consolidated metadata (what readers see) is kept."""
    group.update_attributes({APPEND_PENDING: pending})


def grow(group: zarr.Group, committed: zarr.Group, n_new: int, classes: list[str],
         splits: list[str], discard: bool) -> None:
    """Give every per-image array ``n_new`` rows in its own metadata (readers of the
    consolidated metadata still see the ``committed`` group's rows), and the class and split
    lists; every array in one trip through zarr's event loop.

    ``discard``: first cut every array back to its committed shape, which deletes the chunks
    an abandoned append wrote beyond it (zarr's resize removes chunks outside the shape).
    ``group`` is opened with :func:`open_pending`.
    """
    old = {name: committed[name].shape for name in [*sample_arrays(committed), "chunk_done"]}
    shapes = {name: (n_new, *shape[1:]) for name, shape in old.items()}
    shapes["chunk_done"] = (n_chunks(n_new, int(committed.attrs["chunk"])),)
    flags = {"labels": dict(flag_values=list(range(len(classes))),
                            flag_meanings=" ".join(c.replace(" ", "_") for c in classes)),
             **{name: dict(flag_values=list(range(len(splits))), flag_meanings=" ".join(splits))
                for name in ("split", "split_original")}}

    async def resize(name: str) -> None:
        array = await group._async_group.getitem(name)
        if discard and array.shape != old[name]:
            await array.resize(old[name])
            array = await group._async_group.getitem(name)
        if array.shape != shapes[name]:  # (growing deletes nothing)
            await array.resize(shapes[name], delete_outside_chunks=False)
        if name in flags:
            await (await group._async_group.getitem(name)).update_attributes(flags[name])

    async def run() -> None:
        await asyncio.gather(*(resize(name) for name in shapes))

    sync(run())


def write_rows(group: zarr.Group, start: int, values: dict[str, np.ndarray]) -> None:
    """Write rows ``start:`` of the arrays in ``values`` (zarr reads and rewrites a partly
    filled chunk whole; each file write is atomic, and the rows before ``start`` keep their
    values, so a reader of the previous version reads the same rows from either file).

    ``split_original`` (written at creation) follows ``split`` when the store has it.
    """
    if "split_original" in group and "split" in values:
        values = {"split_original": values["split"], **values}

    async def put(name: str, v: np.ndarray) -> None:
        array = zarrio.whole_chunks(await group._async_group.getitem(name))
        await array.setitem(slice(start, start + len(v)), v)

    async def run() -> None:
        await asyncio.gather(*(put(name, v) for name, v in values.items()))

    sync(run())


def held_files(group: zarr.Group, n: int) -> pd.DataFrame:
    """``path`` and ``file_bytes`` of the first ``n`` (committed) rows."""
    return pd.DataFrame({"path": group["path"][:n], "file_bytes": group["file_bytes"][:n]})


def keep_rows(group: zarr.Group, start: int, keep: int, images: np.ndarray, hist: np.ndarray,
              records: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The stored rows ``start:start + keep`` of a chunk followed by the new rows given:
    an append completes the store's last, partly filled chunk with the stored rows as they
    are (their source files are not read again)."""
    new = {"images": images, "hist": hist, **records}
    arrays = zarrio.arrays_of(group, list(new))

    async def read() -> list:  # every array in one trip through zarr's event loop
        return await asyncio.gather(*(arrays[name].getitem(slice(start, start + keep))
                                      for name in new))

    joined = {name: np.concatenate([np.asarray(old).astype(values.dtype), values])
              for (name, values), old in zip(new.items(), sync(read()), strict=True)}
    return joined.pop("images"), joined.pop("hist"), joined


def commit(group: zarr.Group, attrs: dict[str, Any]) -> zarr.Group:
    """Commit an append: the attributes (``n_images``, ``version``, ``history``...) and the
    consolidated metadata of the grown arrays in one atomic write of the root ``zarr.json``;
    ``append_pending`` is dropped. Before it, readers see the previous version, after it the
    new one."""
    return zarrio.consolidate(group, attrs, drop=(APPEND_PENDING,))


def write_partials(group: zarr.Group, sums: dict[str, np.ndarray], meta: dict[str, Any]
                   ) -> dict[str, Any]:
    """Store statistics partials (integer sums over rows ``0:meta["rows"]``) in a new child
    of the ``stats_partials`` subgroup; return the attribute to commit that names them.

    Children not named by the committed attributes (left by an earlier version) are deleted
    first; the committed one stays until the commit replaces it, so a reader of the previous
    version keeps its partials.
    """
    name = f"r{meta['rows']}_{meta['token'][:16]}"
    committed = (group.attrs.get(PARTIALS_ATTR) or {}).get("group", "")
    sync(_write_partials(group._async_group, name, committed, sums))
    return {PARTIALS_ATTR: {**meta, "group": f"{PARTIALS}/{name}"}}


async def _write_partials(group: AsyncGroup, name: str, committed: str,
                          sums: dict[str, np.ndarray]) -> None:
    """:func:`write_partials` in one trip through zarr's event loop."""
    parent = await group.require_group(PARTIALS)
    stale = [c async for c in group.store.list_dir(PARTIALS) if c != "zarr.json"
             and f"{PARTIALS}/{c}" not in (committed, f"{PARTIALS}/{name}")]
    await asyncio.gather(*(group.store.delete_dir(f"{PARTIALS}/{c}") for c in stale))
    child = await parent.create_group(name, overwrite=True)
    compressors = (await group.getitem("hist")).compressors  # the store's own (checksums)

    async def put(key: str, values: np.ndarray) -> None:
        array = await child.create_array(
            key, shape=values.shape, dtype=str if values.dtype == object else values.dtype,
            chunks=tuple(max(1, d) for d in values.shape) or (1,), compressors=compressors)
        if values.size:
            await zarrio.whole_chunks(array).setitem(..., values)

    await asyncio.gather(*(put(key, values) for key, values in sums.items()))


def partial_inputs(group: zarr.Group) -> dict[str, Any]:
    """What :func:`xraybatch.stats.sums_with` reads, for every row of a group being written
    (the histograms and findings as zarr arrays, read later only where needed)."""
    n = int(group["labels"].shape[0])
    return {"hist": group["hist"], "findings": group.get("findings"),
            "labels": group["labels"][:n], "split": group["split"][:n],
            "valid": group["valid"][:n],
            "patient_ids": lambda start: patient_ids_of(group, start, n)}


def patient_ids_of(group: zarr.Group, start: int, stop: int) -> np.ndarray:
    """Patients of rows ``start:stop`` (see :meth:`XrayStore.patient_ids`)."""
    g, n = group, stop - start
    scanned = g["patient_id"][start:stop] if "patient_id" in g else np.full(n, "", object)
    header = (g["dicom_patient_id"][start:stop] if "dicom_patient_id" in g
              else np.full(n, "", object))
    return np.where(header != "", header, scanned).astype(object)


def read_partials(group: zarr.Group) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The committed statistics partials (their metadata and sums), or None."""
    meta = group.attrs.get(PARTIALS_ATTR)
    if not meta:
        return None
    try:
        child = group[meta["group"]]
        arrays = dict(child.arrays())
    except (KeyError, FileNotFoundError):
        return None

    async def read_all() -> list:  # one trip through zarr's event loop for all of them
        return await asyncio.gather(*(a._async_array.getitem(...) for a in arrays.values()))

    return meta, {key: np.asarray(values, dtype=object if values.dtype.kind in "OTU" else None)
                  for key, values in zip(arrays, sync(read_all()), strict=True)}


# --- split assignments and history ------------------------------------------------------


def _split_flags(splits: list[str]) -> dict[str, Any]:
    """CF flag attributes of the ``split`` arrays: the index of each split name."""
    return dict(flag_values=list(range(len(splits))), flag_meanings=" ".join(splits))


def split_token(values: np.ndarray, splits: list[str]) -> str:
    """A digest of a split assignment (values and names), stored as ``attrs["split_token"]``.

    Whatever is computed per split (statistics partials) is valid while the token is the
    same: a rewrite changes it, a restore gives the original's back.

    Examples
    --------
    >>> a = split_token(np.array([0, 1, 1], np.int8), ["train", "test"])
    >>> a == split_token(np.array([0, 1, 0], np.int8), ["train", "test"]), len(a)
    (False, 16)
    """
    digest = hashlib.blake2b(json.dumps(list(splits)).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(values, np.int8).tobytes())
    return digest.hexdigest()


def write_split(ref: StoreRef, values: np.ndarray, splits: list[str],
                assignment: dict[str, Any], entry: dict[str, Any]) -> int:
    """Rewrite the active ``split`` whole with ``values`` (indices into ``splits``, the
    store's split names, possibly extended), record ``assignment`` and a history entry;
    the store's new version. The caller holds the writer lock.

    A store written before ``split_original`` existed gets it first, from its ``split``,
    which nothing rewrote before. ``attrs["split_pending"]`` marks the rewrite until the
    commit (one ``zarr.json`` write), so an interrupted one is known; ``split_token``
    changes, so results keyed on the assignment are recomputed.

    Examples
    --------
    >>> write_split(StoreRef("xray.zarr"), values, ["train", "val", "test"],
    ...             {"method": "random"}, {"action": "split", "source": "..."})  # doctest: +SKIP
    2
    """
    group = ref.open("r+")
    if APPEND_PENDING in group.attrs:  # its grown arrays would be consolidated by ours
        raise StoreError(f"{ref.url} has an interrupted append: finish it first with "
                         "xraybatch ingest SRC OUT --append --resume")
    old = list(group.attrs["splits"])
    if splits[:len(old)] != old or len(splits) > 127:
        raise ValueError(f"split names {splits} do not extend the store's {old}")
    n = int(group.attrs["n_images"])
    if values.shape != (n,) or (n and not 0 <= values.min() <= values.max() < len(splits)):
        raise ValueError(f"a split assignment needs one index into {splits} per row")
    if "split_original" not in group:
        _save_original(group, old)
    group.update_attributes({"split_pending": {"when": _now(), "method": assignment["method"]}})
    array = group["split"]
    sync(zarrio.whole_chunks(array._async_array).setitem(slice(None), values.astype(np.int8)))
    if splits != old:  # new names extend the flags; existing indices never change
        array.update_attributes(_split_flags(splits))
    # The commit: attributes, history and the split's new flags in one root zarr.json write.
    attrs = history_attrs(dict(group.attrs), entry)
    zarrio.consolidate(group, {**attrs, "splits": list(splits), "split_assignment": assignment,
                               "split_token": split_token(values, splits)},
                       drop=("split_pending",))
    return attrs["version"]


def _save_original(group: zarr.Group, splits: list[str]) -> None:
    """Create ``split_original`` from ``split`` (before its first rewrite) and consolidate,
    so that it is in the root metadata before ``split`` changes."""
    current = group["split"]
    array = group.create_array("split_original", shape=current.shape, dtype="int8",
                               chunks=current.chunks, fill_value=0, overwrite=True,
                               dimension_names=("sample",), attributes=_split_flags(splits),
                               compressors=current.compressors)  # as split's own
    sync(zarrio.whole_chunks(array._async_array).setitem(slice(None), current[:]))
    zarrio.consolidate(group)




def is_ours(attrs: dict[str, Any]) -> bool:
    """Whether a group's attributes are those of an xraybatch store (set first by create)."""
    return "xraybatch_version" in attrs


def layout_written(attrs: dict[str, Any]) -> bool:
    """Whether :func:`create` finished (it writes the class names last)."""
    return "classes" in attrs


def write_pairs(ref: StoreRef, pairs: np.ndarray, scores: np.ndarray,
                key: dict[str, Any]) -> bool:
    """Keep verified near-duplicate pairs ((P, 2) int64 rows, (P,) scores) in the store,
    with ``key`` (what was searched) in the attributes of ``dup_pairs``.

    Written under the writer lock; returns False without writing when another process
    writes the store, or an interrupted append waits for ``--append --resume`` (the pairs
    would be stale, and consolidating would publish the append's grown arrays).
    """
    try:
        with locked(ref):
            group = ref.open("r+")
            if APPEND_PENDING in group.attrs:
                return False
            # The codecs of the store's own per-image arrays (format 2: with checksums).
            common = dict(compressors=group["hist"].compressors, overwrite=True)
            rows = max(1, min(len(pairs), 1 << 20))
            a = group.create_array("dup_pairs", shape=pairs.shape, dtype="int64",
                                   chunks=(rows, 2), dimension_names=("pair", "end"),
                                   attributes=key, **common)
            b = group.create_array("dup_score", shape=scores.shape, dtype="float32",
                                   chunks=(rows,), dimension_names=("pair",), **common)
            if len(pairs):
                a[:] = pairs.astype(np.int64)
                b[:] = scores.astype(np.float32)
            zarrio.consolidate(group)  # readers open every array from the root zarr.json
    except (StoreError, PermissionError, OSError):
        return False
    return True


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
    def original_split(self) -> np.ndarray:
        """The scan's assignment (``split`` is the active one, which ``xraybatch split``
        rewrites); a store that has no ``split_original`` was never split."""
        g = self.group
        return g["split_original"][:] if "split_original" in g else self.split

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

    def class_membership(self, valid_only: bool = True) -> np.ndarray:
        """(N, C) bool: (valid) images counted under each class (every positive finding)."""
        valid = self.valid if valid_only else np.ones(len(self), bool)
        if self.multilabel:
            return (self.findings == 1) & valid[:, None]
        return (np.where(valid, self.labels, -1)[:, None]
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
        return joined(self.findings, self.classes)

    @property
    def valid(self) -> np.ndarray:
        return self.group["valid"][:]

    @property
    def chunk(self) -> int:
        """Images per zarr chunk: reading any one image decompresses its whole chunk."""
        return int(self.attrs["chunk"])

    @property
    def has_fingerprints(self) -> bool:
        """Whether chunk tasks stored content fingerprints (stores from 0.2 on)."""
        return all(name in self.group for name in FINGERPRINT_ARRAYS)

    @property
    def fingerprint_version(self) -> int | None:
        if not self.has_fingerprints:
            return None
        return int(self.group["fp_hash"].attrs.get("fingerprint_version", 0))

    def fingerprint_codes(self) -> np.ndarray:
        """(N, codes) uint64 SimHash codes of every row (0 where invalid)."""
        return self.group["fp_hash"][:]

    def fingerprint_thumbs(self, rows: np.ndarray) -> np.ndarray:
        """Equalised thumbnails of ``rows`` (sorted, unique integer indices)."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, *FINGERPRINT_ARRAYS["fp_thumb"][0]), np.uint8)
        return self.group["fp_thumb"].get_orthogonal_selection(
            (rows, slice(None), slice(None)))

    @property
    def sha256(self) -> np.ndarray:
        return self.group["sha256"][:]

    @property
    def paths(self) -> np.ndarray:
        """Each row's source path, relative to ``attrs["source"]``."""
        return self.group["path"][:]

    def stored_pairs(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """Near-duplicate pairs kept by :func:`write_pairs`: (key, (P, 2) rows, (P,) scores)."""
        if not all(name in self.group for name in PAIR_ARRAYS):
            return None
        pairs = self.group["dup_pairs"]
        return dict(pairs.attrs), pairs[:], self.group["dup_score"][:]

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

    def patient_ids(self, start: int = 0) -> np.ndarray:
        """Each image's patient (of rows ``start:``): the DICOM header's PatientID, else the
        scan's id, else "".

        The header is the hospital's own record; a file name is only a naming convention.
        """
        return patient_ids_of(self.group, start, len(self))

    def stats_partials(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The stored statistics partials (see :func:`read_partials`), or None."""
        return read_partials(self.group)

    @property
    def version(self) -> int:
        """The store's version: 1 after its ingest, +1 per append (0 for format 1)."""
        return int(self.attrs.get("version", 0))

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per ingest and append: action, when, source, rows, version."""
        return list(self.attrs.get("history", []))

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


# --- verifying ------------------------------------------------------------------------------


def format_version(attrs: dict[str, Any]) -> int:
    """The store format of a group's attributes: 2 with checksums, 1 (no attribute) without.

    Examples
    --------
    >>> format_version({"format_version": 2}), format_version({})
    (2, 1)
    """
    return int(attrs.get("format_version", 1))


@dataclass
class StoredChunk:
    """One images chunk of a store as :func:`read_chunk` read it: what ``verify`` compares
    (``None`` where the array is absent or its chunk could not be read), and the outcome of
    every chunk file of the arrays chunked with it."""

    index: int
    start: int
    images: np.ndarray | None
    hist: np.ndarray | None
    valid: np.ndarray | None
    mean: np.ndarray | None
    std: np.ndarray | None
    done: bool
    files: int  # chunk files read
    errors: list[tuple[str, str]]  # (array, message): damaged or unreadable chunks
    missing: list[str]  # arrays whose chunk file must exist and does not


#: Arrays whose every chunk file exists once its chunk is done (an absent file is damage,
#: not a fill value): the pixels, the histograms, and what the scan wrote at creation.
_ALWAYS_WRITTEN = frozenset({"images", "hist", *_SCAN_ARRAYS, "findings", "finding"})
_CHUNK_FLAGS = "chunk_done"


def chunk_layout(group: zarr.Group) -> tuple[list[str], list[tuple[str, tuple[int, ...]]]]:
    """Every array of the store, from its committed metadata: the arrays read with each
    images chunk (chunked like it along ``sample``, or one entry per chunk along ``chunk``),
    and every chunk ``(array, coords)`` of the other arrays (written at creation, or added
    later by other stages)."""
    rows = zarrio.rows_per_chunk(group["images"]._async_array)
    with_images, others = [], []
    arrays = [(k, v) for k, v in group.members(max_depth=None) if isinstance(v, zarr.Array)]
    for name, array in sorted(arrays):  # (subgroups too: the statistics partials)
        meta = array.metadata
        dims = meta.dimension_names or ()
        counts = zarrio.chunk_counts(array._async_array)
        along = {"sample": rows, "chunk": 1}.get(dims[0] if dims else None)
        if meta.chunk_grid.chunk_shape[0] == along and all(c == 1 for c in counts[1:]):
            with_images.append(name)
        else:
            others += [(name, coords) for coords in np.ndindex(*counts)]
    return with_images, others


def read_chunk(group: zarr.Group, index: int, names: list[str]) -> StoredChunk:
    """Read chunk ``index`` of each array ``names`` (:func:`chunk_layout`), every file decoded
    with its codecs (checksums checked); never raises for a damaged chunk."""
    arrays = zarrio.arrays_of(group, names)
    rows = zarrio.rows_per_chunk(arrays["images"])
    coords = {name: (index,) + (0,) * (len(a.shape) - 1) for name, a in arrays.items()}
    values = dict(zip(names, zarrio.read_chunks([(arrays[n], coords[n]) for n in names]),
                      strict=True))
    errors = [(n, f"{type(v).__name__}: {v}") for n, v in values.items()
              if isinstance(v, Exception)]
    missing = [n for n, v in values.items() if v is None and n in _ALWAYS_WRITTEN]

    def get(name: str) -> np.ndarray | None:
        v = values.get(name)
        return None if v is None or isinstance(v, Exception) else v

    done = get(_CHUNK_FLAGS)
    return StoredChunk(index, index * rows, get("images"), get("hist"), get("valid"),
                       get("mean"), get("std"), bool(done is not None and done.all()),
                       sum(v is not None for v in values.values()), errors, missing)


def read_other_chunk(group: zarr.Group, name: str, coords: tuple[int, ...]
                     ) -> tuple[bool, str | None]:
    """Read one chunk of an array not chunked with the images: (file present, error)."""
    value = zarrio.read_chunks([(group[name]._async_array, coords)])[0]
    if isinstance(value, Exception):
        return True, f"{type(value).__name__}: {value}"
    if value is None and name in _ALWAYS_WRITTEN:
        return False, "chunk file missing"
    return value is not None, None


def source_facts(group: zarr.Group) -> pd.DataFrame:
    """What ingest recorded about each source file: ``path`` (relative to the ``source``
    attribute), ``file_bytes`` (-1: could not be stat'ed), ``sha256`` ("" if unread) and
    ``status``."""
    return pd.DataFrame({name: group[name][:]
                         for name in ("path", "file_bytes", "sha256", "status")})
