"""Ingest: build one Dask task per output chunk, run it on the chosen scheduler.

Each task reads, decodes and resizes its own images (:mod:`.decode`), writes its own chunk
region of the store (:mod:`.store`) and returns a small report. The client only ever holds
file paths and reports, so its memory does not grow with the dataset, and a chunk written
twice (retry, resume, a worker lost) is written with the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import cv2
import dask
import dask.local
import dask.multiprocessing
import dask.threaded
import numpy as np
import pandas as pd
import zarr
from dask.delayed import Delayed

from . import decode, fingerprint, lock, stats, store
from .options import (
    DEFAULT_CHUNK,
    DEFAULT_INTERPOLATION,
    FITS,
    INTERPOLATION_CHOICES,
    PAD_VALUE,
    WINDOWS,
)
from .progress import Progress, dask_callback
from .scan import Scan, scan
from .sources import listing, remote, tables
from .store import StoreError, StoreRef

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
_LOCAL_GET = {"threads": dask.threaded.get, "processes": dask.multiprocessing.get,
              "sync": dask.local.get_sync}
# Attributes that must match for --resume to continue a run.
_RESUME_KEYS = ("size", "interpolation", "decode", "label_scheme", "source", "max_pixels",
                "window", "fit", "patient_id_regex")
#: Chunk tasks in flight per worker thread on a cluster: enough to keep every thread busy
#: while results come back, few enough that the scheduler and client hold O(threads) tasks.
IN_FLIGHT_PER_THREAD = 4


class SchedulerError(RuntimeError):
    """The distributed scheduler cannot be reached (reported in one line)."""


@dataclass(frozen=True)
class ChunkTask:
    """Everything one chunk task needs; small and picklable."""

    ref: StoreRef
    index: int
    start: int
    paths: tuple[str, ...]
    size: int
    interpolation: str
    decode: str
    max_pixels: int
    window: str = "header"
    fit: str = "stretch"
    source_options: dict = field(default_factory=dict)  # fsspec options for URL paths
    keep: int = 0  # rows at the chunk's start already stored: an append completes the chunk


@dataclass(frozen=True)
class ChunkReport:
    """What a chunk task returns: counts and its failures, never pixels."""

    index: int
    n: int
    failures: tuple[tuple[int, str, str], ...]  # (sample, reason code, message)
    bytes_read: int
    seconds: float


@dataclass
class IngestResult:
    """Summary of an ingest run (also stored in the store's ``summary`` attribute)."""

    out: str
    n_images: int
    n_stored: int
    failures: pd.DataFrame  # path, status, message
    skipped: pd.DataFrame  # path, reason
    seconds: float
    chunks_run: int
    chunks_total: int
    bytes_read: int
    reports: list[ChunkReport] = field(default_factory=list, repr=False)

    @property
    def images_per_second(self) -> float:
        n = sum(r.n for r in self.reports)
        return n / self.seconds if self.seconds > 0 else float("nan")


def process_chunk(task: ChunkTask) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray],
                                             ChunkReport]:
    """Decode the images of one chunk into arrays (pure: no store involved).

    The records hold the per-image facts and the content fingerprints
    (:func:`xraybatch.fingerprint.fingerprints`) of the decoded images.
    """
    t0 = time.perf_counter()
    n = len(task.paths)
    images = np.zeros((n, task.size, task.size), np.uint8)
    hist = np.zeros((n, 256), np.int32)
    records = []
    for i, path in enumerate(task.paths):
        image, record = decode.load(path, task.size, task.interpolation, task.decode,
                                    task.max_pixels, task.window, task.fit)
        records.append(record)
        if image is not None:
            images[i] = image
            hist[i] = decode.histogram(image)
    failures = tuple((task.start + task.keep + i, r.status, r.message)
                     for i, r in enumerate(records) if not r.valid)
    arrays = store.record_arrays(records, hist)
    # Content fingerprints from the pixels just decoded (no second read or decode).
    arrays.update(fingerprint.fingerprints(images, hist, arrays["valid"]))
    report = ChunkReport(task.index, n, failures, sum(r.nbytes for r in records),
                         time.perf_counter() - t0)
    return images, hist, arrays, report


#: Stores being created while the first chunks decode (local threads), by URL: the tasks
#: wait for creation before their first write (:func:`ingest`).
_CREATING: dict[str, Future] = {}


@contextmanager
def prepared(ref: StoreRef, target: Any, prepare: Any) -> Iterator[None]:
    """Run ``prepare()`` (what the chunk tasks' writes need: an append grows the arrays)
    while the first chunks decode when the tasks run in this process, else before them;
    the block runs the tasks, and ``prepare``'s error, if any, is raised after them."""
    if target not in ("threads", "sync"):
        prepare()
        yield
        return
    with ThreadPoolExecutor(1) as pool:
        _CREATING[ref.url] = future = pool.submit(prepare)
        try:
            yield
        finally:
            _CREATING.pop(ref.url, None)
        future.result()


def run_chunk(task: ChunkTask) -> ChunkReport:
    """The Dask task: decode one chunk and write it into the store."""
    # Dask already runs one task per core; OpenCV's own pool would oversubscribe them.
    cv2.setNumThreads(1)
    creating = _CREATING.get(task.ref.url)
    group = None if creating else _open_for_chunks(task.ref)  # fail before decoding
    with remote.source_options(task.source_options):
        images, hist, records, report = process_chunk(task)
    if group is None:
        creating.result()  # raises what the creation raised
        group = _open_for_chunks(task.ref)
    if task.keep:
        images, hist, records = store.keep_rows(group, task.start, task.keep, images, hist,
                                                records)
    store.write_chunk(group, task.index, task.start, images, hist, records,
                      every_array=bool(task.keep))
    return report


def _open_for_chunks(ref: StoreRef) -> zarr.Group:
    try:
        return store.open_for_chunks(ref)
    except FileNotFoundError:
        raise StoreError(f"{socket.gethostname()} cannot open {ref.url}: on a cluster, "
                         "OUT must be on a file system or object store every worker reaches"
                         ) from None


def build_tasks(ref: StoreRef, root: str, paths: list[str], chunks: list[int], chunk: int,
                weights: list[int] | None = None, stored: int = 0, **params: Any) -> list:
    """One ``dask.delayed`` task per chunk index in ``chunks``, the heaviest run first.

    ``stored``: rows already in the store (an append); a chunk holding some of them keeps
    them (:attr:`ChunkTask.keep`) and reads only the files after them.

    ``weights`` (bytes of each file) set the order: dask starts independent tasks in
    descending order of their key names, so each key starts with its chunk's rank by
    ascending weight. The heaviest chunks (NORMAL files weigh ~5x more and are stored
    together) then start first and the run does not end waiting for one of them.
    """
    def weight(index: int) -> int:
        return sum(weights[index * chunk:(index + 1) * chunk]) if weights else 0

    tasks = []
    prefix = listing.join(root, "")  # scan paths are relative: one concatenation each
    for rank, index in enumerate(sorted(chunks, key=weight)):
        start = index * chunk
        keep = min(max(stored - start, 0), chunk)
        spec = ChunkTask(ref, index, start, tuple(prefix + p for p in
                                                  paths[start + keep:start + chunk]),
                         keep=keep, **params)
        # The key hashes the whole spec (store, files, parameters): two ingests sharing a
        # cluster must never be taken for one another's tasks (same key = same result).
        key = f"xraybatch-chunk-{rank:06d}-{index}-{_token(spec)}"
        # A one-task graph: passed to dask.delayed, the spec's paths would be walked
        # looking for collections (benchmarks/README.md, "Scale": a million-image plan).
        tasks.append(Delayed(key, {key: (run_chunk, spec)}))
    return tasks


def _token(spec: ChunkTask) -> str:
    """A hash of the whole spec (store, options, files, parameters), in one go: dask's
    ``tokenize`` normalises each path and the store reference by pickling (0.3 ms per task,
    seconds for a million images). The spec holds only strings, numbers and flat dicts, so
    its ``repr`` is deterministic."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:32]


@contextmanager
def opencv_threads_kept() -> Iterator[None]:
    """Restore OpenCV's thread count after tasks that set it to one in this process."""
    threads = cv2.getNumThreads()
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def compute(tasks: list, scheduler: Any = "threads", workers: int | None = None,
            progress: bool = False, retries: int = 2, images: int = 0,
            label: str = "ingest") -> list[Any]:
    """Run the tasks on a local scheduler (a name) or a ``distributed.Client``.

    ``images`` (how many the tasks hold) is the total that ``progress`` counts towards,
    from the ``n`` of each task's result; ``label`` names the command on its lines.
    """
    if not tasks:
        return []
    with Progress(label=label).start(images) if progress else nullcontext() as bar:
        if isinstance(scheduler, str):
            keys = {task.key for task in tasks}
            count = dask_callback(bar, _images_done, keys) if bar else nullcontext()
            with count:  # the function, not its name: a name makes dask import distributed
                return list(dask.compute(*tasks, scheduler=_LOCAL_GET[scheduler],
                                         num_workers=workers))
        return _gather(scheduler, tasks, retries, bar)


def _images_done(result: Any) -> int:
    """Images of a finished chunk task (ingest, verify), for the progress display."""
    return int(getattr(result, "n", 0))


def _gather(client: Any, tasks: list, retries: int, bar: Progress | None) -> list[Any]:
    """Run the tasks on a cluster, heaviest first, a bounded number in flight; advance ``bar``.

    Submitting every task at once makes the scheduler and the client hold one future per
    chunk; a window of a few tasks per worker thread keeps both flat for any dataset size.
    """
    from distributed import KilledWorker, as_completed

    window = max(8, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    waiting = reversed(tasks)  # build_tasks puts the heaviest chunks last
    reports: list[ChunkReport] = []
    try:
        running = as_completed(client.compute(list(itertools.islice(waiting, window)),
                                              retries=retries))
        for future in running:
            reports.append(future.result())  # a task's error is raised at once
            future.release()
            if bar:
                bar.advance(_images_done(reports[-1]))
            for task in itertools.islice(waiting, 1):
                running.add(client.compute(task, retries=retries))
        return reports
    except KilledWorker as e:  # the scheduler gave up after allowed-failures worker deaths
        raise SchedulerError(f"workers kept dying while running a chunk task ({e}); "
                             "the store is incomplete: fix the workers and --resume") from None


@contextmanager
def connected(scheduler: Any) -> Iterator[Any]:
    """A local scheduler name or a ``distributed.Client``; a client opened here is closed."""
    if not isinstance(scheduler, str) or scheduler in LOCAL_SCHEDULERS:
        yield scheduler
        return
    client = _connect(scheduler)
    try:
        yield client
    finally:
        client.close()


def _connect(address: str):
    from distributed import Client

    if "://" not in address and ":" not in address:
        raise ValueError(f"unknown scheduler {address!r}: use threads, processes, sync or a "
                         "scheduler address such as tcp://HOST:8786")
    try:
        return Client(address, timeout=dask.config.get("distributed.comm.timeouts.connect"))
    except OSError as e:  # also the TimeoutError of an address nobody listens on
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: {e}") from None


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
    if append:  # its own stage; imported here because it builds on this module's tasks
        from .append import append as append_files

        return append_files(found, ref, {**attrs, "size": size}, scheduler=scheduler,
                            workers=workers, progress=progress, retries=retries, resume=resume,
                            source_options=source_options,
                            absent=0 if spec is not None and spec.labels else -2, started=t0)
    store.check_target(ref, overwrite, resume)  # before the lock file touches OUT
    # Connect before the store is created, so an unreachable cluster leaves OUT untouched.
    with connected(scheduler) as target, lock.locked(ref), ThreadPoolExecutor(1) as pool:
        group = _resume(ref, found, {**attrs, "size": size}) if resume else None
        creating = None
        if group is None:  # a new store, or a resumed one whose creation was interrupted
            create = functools.partial(
                store.create, ref, found.manifest, size=size, chunk=chunk,
                classes=found.classes, splits=found.splits, attrs=attrs,
                overwrite=overwrite or resume, findings=found.findings)
            todo = list(range(store.n_chunks(len(found.manifest), chunk)))
            # Tasks in this process need the store only to write: it is then created while
            # the first chunks decode (serial time of a 1,488-image run: 0.19 -> 0.07 s).
            if target in ("threads", "sync"):
                creating = _CREATING[ref.url] = pool.submit(create)
            else:
                group = create()
        else:
            chunk, size = int(group.attrs["chunk"]), int(group.attrs["size"])
            todo = [int(i) for i in np.flatnonzero(~store.done_chunks(group))]
        params = dict(size=size, interpolation=interpolation, decode=decode_mode,
                      max_pixels=max_pixels, window=window, fit=fit,
                      source_options=source_options)
        tasks = build_tasks(ref, attrs["source"], found.manifest.path.tolist(), todo, chunk,
                            weights=found.manifest.bytes.tolist(), **params)
        try:
            with opencv_threads_kept():
                reports = compute(tasks, target, workers, progress, retries, images=sum(
                    min(chunk, len(found.manifest) - i * chunk) for i in todo))
        finally:
            _CREATING.pop(ref.url, None)
        if creating is not None:
            group = creating.result()  # (with no chunk to run, nothing waited for it)
        result = _summarize(ref, found, reports, time.perf_counter() - t0)
        missing = np.flatnonzero(~store.done_chunks(group))
        if len(missing):  # never mark a store complete that is not
            raise StoreError(f"{len(missing)} chunks of {ref.url} were not written (the first "
                             f"is chunk {missing[0]}); finish it with --resume")
        entry = {"action": "ingest", "source": found.source, "rows": [0, result.n_images]}
        partials = write_partials(group, found.classes, found.splits)
        store.mark_complete(group, _summary_attrs(result), entry, partials)
    return result


def write_partials(group: zarr.Group, classes: list[str], splits: list[str],
                   stored: tuple[dict[str, Any], dict[str, np.ndarray]] | None = None
                   ) -> dict[str, Any]:
    """Compute and store the statistics partials of every row of ``group`` (``stored``: the
    partials committed before, reused for the rows they cover while they still hold); the
    attribute naming them, to commit with the rows they cover.

    The histograms were just written: this reads them once (only the new rows' for an
    append), cheap beside the decoding that made them.
    """
    sums, meta = stats.sums_with(**store.partial_inputs(group), classes=classes, splits=splits,
                                 stored=stored)
    return store.write_partials(group, sums, meta)


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


def _resume(ref: StoreRef, found: Scan, attrs: dict[str, Any]) -> zarr.Group | None:
    """The interrupted store to finish, or None if its creation never finished."""
    if not ref.exists():
        raise StoreError(f"nothing to resume: {ref.url} does not exist")
    try:
        group = ref.open("r+")
        stored = dict(group.attrs)
    except (FileNotFoundError, KeyError, ValueError):
        return None  # killed before the group existed; create() refuses a foreign folder
    if not store.is_ours(stored):
        raise StoreError(f"cannot resume {ref.url}: it is not an xraybatch store")
    if not store.layout_written(stored):
        return None  # killed while creating: no chunk was written yet, so start afresh
    if store.APPEND_PENDING in stored:
        raise StoreError(f"cannot resume {ref.url} as an ingest: an append to it was "
                         "interrupted; finish it with --append --resume")
    if stored.get("complete") and len(stored.get("history", [])) > 1:
        raise StoreError(f"nothing to resume: {ref.url} is complete (version "
                         f"{stored.get('version')}, appended to or split since its ingest); "
                         "add new files with --append")
    unrecorded = [key for key in _RESUME_KEYS if key not in stored]
    if unrecorded:  # written by an older version
        raise StoreError(f"cannot resume {ref.url}: xraybatch "
                         f"{stored.get('xraybatch_version', '(unknown version)')} wrote it "
                         f"without {', '.join(unrecorded)}; start again with --overwrite")
    for key in _RESUME_KEYS:
        if stored.get(key) != attrs[key]:
            raise StoreError(f"cannot resume {ref.url}: {key} was {stored.get(key)!r}, "
                             f"now {attrs[key]!r}")
    before = store.scan_arrays(group)
    now = found.manifest[["path", "label", "bytes"]].set_axis(list(before.columns), axis=1)
    same_files = (len(before) == len(now) and (before.to_numpy() == now.to_numpy()).all()
                  and stored["classes"] == found.classes and stored["splits"] == found.splits
                  and store.same_findings(group, found.findings))
    if not same_files:  # paths, labels, sizes or class names differ: not the same data
        raise StoreError(f"cannot resume {ref.url}: the source files changed since the "
                         "interrupted run; start again with --overwrite")
    group.attrs["complete"] = False
    return group


def _summarize(ref: StoreRef, found: Scan, reports: list[ChunkReport],
               seconds: float) -> IngestResult:
    group = ref.open("r")
    n = int(group.attrs["n_images"])
    chunks_total = store.n_chunks(n, int(group.attrs["chunk"]))
    # A run that wrote every chunk has every failure in its reports; reading them back
    # from the store costs three whole string arrays. A resumed run reads the store.
    failures = (_failures(found, reports) if len(reports) == chunks_total
                else store.failures(group))
    return IngestResult(out=ref.url, n_images=n, n_stored=n - len(failures), failures=failures,
                        skipped=found.skipped, seconds=seconds, chunks_run=len(reports),
                        chunks_total=chunks_total,
                        bytes_read=sum(r.bytes_read for r in reports), reports=reports)


def _failures(found: Scan, reports: list[ChunkReport]) -> pd.DataFrame:
    """What :func:`store.failures` reads back, from the chunk reports of this run."""
    rows = sorted(f for r in reports for f in r.failures)
    paths = found.manifest.path.to_numpy()
    return pd.DataFrame({"path": [paths[i] for i, _, _ in rows],
                         "status": [code for _, code, _ in rows],
                         "message": [message for _, _, message in rows]},
                        columns=["path", "status", "message"])


def _summary_attrs(result: IngestResult) -> dict[str, Any]:
    return {"n_images": result.n_images, "n_stored": result.n_stored,
            "n_failed": len(result.failures),
            "reasons": result.failures.status.value_counts().to_dict(),
            "n_skipped": len(result.skipped), "seconds_last_run": round(result.seconds, 3),
            "chunks_last_run": result.chunks_run}
