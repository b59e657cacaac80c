"""Ingest: the entry point that turns a source of images into a store.

:func:`ingest` checks the options, scans the source (:mod:`.scan`: files, labels, splits,
patients) and derives the store's attributes, then hands over: :func:`.build.build` writes
a new store (or finishes an interrupted one), :func:`.append.append` adds the files the
store does not hold yet. Both run the chunk tasks of :mod:`.tasks` on :mod:`.schedulers`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from . import decode
from .append import append as append_files
from .build import build
from .options import (
    DEFAULT_CHUNK,
    DEFAULT_INTERPOLATION,
    FITS,
    INTERPOLATION_CHOICES,
    PAD_VALUE,
    WINDOWS,
)
from .scan import scan

# Imported from here by verify.py (before schedulers.py existed): the same objects.
from .sources import listing, tables
from .store import StoreRef
from .tasks import IngestResult


def ingest(src: str | os.PathLike, out: str | os.PathLike, *, size: int = 256,
           labels: str = "folder", interpolation: str = DEFAULT_INTERPOLATION,
           decode_mode: str = "fast",
           chunk: int = DEFAULT_CHUNK, scheduler: Any = "threads", workers: int | None = None,
           overwrite: bool = False, resume: bool = False, progress: bool = False,
           max_pixels: int = decode.MAX_PIXELS, storage_options: dict | None = None,
           retries: int = 2, window: str = "header", fit: str = "stretch",
           patient_id: str | None = None, files: str | os.PathLike | None = None,
           table_preset: str | None = None, columns: dict[str, Any] | None = None,
           source_options: dict | None = None, append: bool = False) -> IngestResult:
    """Read every image under ``src`` into the zarr store ``out``.

    Parameters
    ----------
    src
        Folder of images or its fsspec URL (``s3://bucket/chest_xray/``), a table file, or
        with ``files`` the folder the table's paths are relative to (see
        :func:`xraybatch.scan`).
    out
        Store path or fsspec URL (``s3://bucket/x.zarr`` needs ``xraybatch[s3]``).
    size, interpolation, decode_mode
        Output side; resize filter ``"auto"`` (bilinear after a DCT-reduced decode, area
        otherwise: :func:`xraybatch.decode.interpolation_for`), ``"area"`` or ``"linear"``;
        ``"fast"`` (DCT-scaled JPEG decode) or ``"exact"`` (full decode).
    labels
        ``"folder"``, ``"kermany3"`` or the path of a CSV file (see :func:`xraybatch.scan`).
    chunk
        Images per zarr chunk and per Dask task (a resumed run keeps the store's own).
    scheduler
        ``"threads"``, ``"processes"``, ``"sync"``, a scheduler address
        (``"tcp://host:8786"``) or a ``distributed.Client``.
    workers
        Local threads or processes (default: one per core); a cluster has its own.
    overwrite, resume
        Replace an existing store, or finish an interrupted run (only missing chunks).
    append
        Add the files of ``src`` that the store does not hold yet after its rows (same path
        and size = held; see :func:`xraybatch.append.append`); with ``resume``, finish an
        interrupted append.
    progress
        Show a progress bar.
    max_pixels
        Refuse images that declare more pixels (reason ``too_large``).
    storage_options
        fsspec options for a URL ``out`` (e.g. ``{"endpoint_url": ...}``).
    retries
        Re-runs of a chunk task that raised, on a cluster.
    window
        How DICOM and images deeper than 8 bits are windowed to 8 bits: ``"header"`` (the
        header's VOI, else min-max), ``"minmax"`` or ``"percentile"`` (see
        :mod:`xraybatch.render`).
    fit
        ``"stretch"`` (default), ``"pad"`` or ``"crop"`` (see :mod:`xraybatch.geometry`).
    patient_id
        Regex giving each file's patient from its relative path (default: Kermany names).
    files, table_preset, columns
        A table (CSV or Parquet) naming the images, a preset of its columns (``"nih"``,
        ``"chexpert"``) and column mappings (keys of
        :class:`xraybatch.sources.tables.Columns`: ``path``, ``label``, ``labels``, ``sep``,
        ``findings``, ``split``, ``patient``), which replace the preset's.
    source_options
        fsspec options for a URL ``src`` or table (default: ``storage_options``); the
        workers read the files themselves, so a cluster needs no shared disk.

    Returns
    -------
    IngestResult
        Counts, failures (path, status, message), skipped files, time and throughput.

    Examples
    --------
    >>> result = xraybatch.ingest("chest_xray", "xray.zarr", labels="kermany3")  # doctest: +SKIP
    >>> result.n_stored, result.images_per_second  # doctest: +SKIP
    """
    _check_options(size, chunk, interpolation, decode_mode, window, fit, overwrite, resume,
                   append)
    t0 = time.perf_counter()
    source_options = dict(storage_options or {} if source_options is None else source_options)
    table = files if files is not None else (src if tables.is_table(src) else None)
    spec = tables.columns_for(table_preset, **(columns or {})) if table is not None else None
    found = scan(None if table == src else src, labels, patient_id, files=table,
                 columns=spec, storage_options=source_options, progress=progress)
    ref = StoreRef(str(out), storage_options or {})
    scheme = str(labels) if table is None else _table_scheme(table, table_preset, columns)
    attrs = {"source": found.source, "label_scheme": scheme,
             "interpolation": interpolation, "decode": decode_mode, "max_pixels": max_pixels,
             "window": window, "fit": fit, "pad_value": PAD_VALUE,
             "patient_id_regex": patient_id or "",
             # A table input, machine-readable (verify --sources scans it again).
             **({"table": _table_attr(table, table_preset, columns)} if table is not None
                else {}),
             "n_skipped": len(found.skipped),
             "skipped": found.skipped.head(1000).values.tolist()}
    if append:
        return append_files(found, ref, {**attrs, "size": size}, scheduler=scheduler,
                            workers=workers, progress=progress, retries=retries, resume=resume,
                            source_options=source_options,
                            absent=0 if spec is not None and spec.labels else -2, started=t0)
    params = dict(interpolation=interpolation, decode=decode_mode, max_pixels=max_pixels,
                  window=window, fit=fit, source_options=source_options)
    return build(found, ref, attrs, size=size, chunk=chunk, params=params,
                 scheduler=scheduler, workers=workers, progress=progress, retries=retries,
                 overwrite=overwrite, resume=resume, started=t0)


def _check_options(size: int, chunk: int, interpolation: str, decode_mode: str, window: str,
                   fit: str, overwrite: bool, resume: bool, append: bool) -> None:
    """Refuse, before any scan, options that no run accepts (one line each)."""
    if size < 8 or size > 4096:
        raise ValueError(f"size must be between 8 and 4096, got {size}")
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if interpolation not in INTERPOLATION_CHOICES:
        raise ValueError(f"unknown interpolation {interpolation!r}: use "
                         f"{', '.join(INTERPOLATION_CHOICES)}")
    if decode_mode not in decode.DECODE_MODES:
        raise ValueError(f"unknown decode mode {decode_mode!r}: use fast or exact")
    if overwrite and (resume or append):
        raise ValueError(f"--overwrite and --{'resume' if resume else 'append'} exclude "
                         "each other")
    if window not in WINDOWS or fit not in FITS:
        raise ValueError(f"unknown window {window!r} or fit {fit!r}: use one of "
                         f"{', '.join(WINDOWS)} and one of {', '.join(FITS)}")


def _table_scheme(table: str | os.PathLike, preset: str | None,
                  columns: dict[str, Any] | None) -> str:
    """The ``label_scheme`` attribute of a table input: the table, preset and given columns."""
    given = " ".join(f"{k}={v!r}" for k, v in (columns or {}).items())
    return " ".join(x for x in (f"table {os.fspath(table)}", preset and f"preset {preset}",
                                given and f"columns {given}") if x)


def _table_attr(table: str | os.PathLike, preset: str | None,
                columns: dict[str, Any] | None) -> dict[str, Any]:
    """The ``table`` attribute: what scans the table again as this run did (JSON)."""
    path = os.fspath(table)
    return {"files": path if listing.is_url(path) else os.path.abspath(path),
            "preset": preset, "columns": {k: list(v) if isinstance(v, tuple) else v
                                          for k, v in (columns or {}).items()}}
