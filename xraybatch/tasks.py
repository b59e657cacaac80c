"""Chunk tasks: one Dask task per output chunk, shared by ingest and append.

Each task reads, decodes and resizes its own images (:mod:`.decode`), writes its own chunk
region of the store (:mod:`.store`) and returns a small report. The client only ever holds
file paths and reports, so its memory does not grow with the dataset, and a chunk written
twice (retry, resume, a worker lost) is written with the same bytes. :mod:`.build` (a new
store) and :mod:`.append` (new rows) build the tasks here and run them through
:func:`xraybatch.schedulers.compute`.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pandas as pd
import zarr
from dask.delayed import Delayed

from . import decode, fingerprint, stats, store
from .sources import listing, remote
from .store import StoreError, StoreRef


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


#: Stores being prepared (created, or grown by an append) while the first chunks decode in
#: local threads, by URL: the tasks wait for it before their first write (:func:`prepared`).
_CREATING: dict[str, Future] = {}


@contextmanager
def prepared(ref: StoreRef, target: Any, prepare: Callable[[], Any]) -> Iterator[Future]:
    """Run ``prepare()`` (what the chunk tasks' writes need: ingest creates the store, an
    append grows its arrays) while the first chunks decode when the tasks run in this
    process, else before them.

    The block runs the tasks; it is given the future of ``prepare``'s result, whose error,
    if any, is raised after the block.
    """
    if target not in ("threads", "sync"):
        done: Future = Future()
        done.set_result(prepare())
        yield done
        return
    with ThreadPoolExecutor(1) as pool:
        _CREATING[ref.url] = future = pool.submit(prepare)
        try:
            yield future
        finally:
            _CREATING.pop(ref.url, None)
        future.result()  # (with no chunk to run, nothing waited for it)


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
