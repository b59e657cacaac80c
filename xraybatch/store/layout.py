"""Layout of the store: the array tables, creating a store and writing its chunks
(see :mod:`xraybatch.store`)."""

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
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from .. import __version__, fingerprint, qc, zarrio
from ..findings import FINDING_FLAGS
from ..location import StoreError, StoreRef
from ..lock import LOCK_NAME, refuse_if_busy

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
#: Bytes-to-bytes codecs of each image (an inner chunk of the sharded ``images`` array): no
#: compression, a CRC-32C checksum that zarr checks on every read (see :func:`create`).
IMAGES_COMPRESSORS: Any = Crc32cCodec()
#: Format of the stores this version writes (group attribute ``format_version``); a store
#: without it is format 1: the same arrays, without checksums.
FORMAT_VERSION = 2
#: Subgroup holding the statistics partials, one child per committed version.
PARTIALS = "stats_partials"
#: Attribute recording an append in progress (the store reads as its last committed version).
APPEND_PENDING = "append_pending"


def _split_flags(splits: list[str]) -> dict[str, Any]:
    """CF flag attributes of the ``split`` arrays: the index of each split name."""
    return dict(flag_values=list(range(len(splits))), flag_meanings=" ".join(splits))


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
    refuse_if_busy(ref)  # name the running ingest rather than say "already exists"
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
        "images": dict(shape=(n, size, size), dtype="uint8", fill_value=0,
                       dimension_names=("sample", "y", "x"), **_images_layout(size, chunk,
                                                                              checksums)),
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
        "created": utc_now(),
        **({"format_version": FORMAT_VERSION, "version": 0, "history": []} if checksums
           else {}),
    })
    # Chunk tasks then open every array from the root zarr.json alone (no read per array).
    # Their metadata changes afterwards only through a consolidated commit: an append
    # (grow, commit), a split (write_split) or kept near-duplicate pairs (write_pairs).
    return zarrio.consolidate(group)


def _images_layout(size: int, chunk: int, checksums: bool) -> dict[str, Any]:
    """Chunking and codecs of ``images``: one shard (file) per chunk task, one inner chunk
    per image, each with its CRC-32C (format 1: plain chunks, no checksum).

    A reader of a few images (a shuffled batch, one sample, ``verify`` naming a damaged
    image) reads those images and the shard's index, not the whole 8 MB chunk; a reader of
    whole chunks reads one file as before (benchmarks/README.md, "sharded images").
    """
    if not checksums:
        return dict(chunks=(chunk, size, size), compressors=None)
    return dict(shards=(chunk, size, size), chunks=(1, size, size),
                compressors=IMAGES_COMPRESSORS)


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


def utc_now() -> str:
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

