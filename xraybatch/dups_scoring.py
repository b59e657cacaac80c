"""Scoring of candidate pairs as Dask tasks: a cheap prefilter, then the alignment.

The second and third steps of the near-duplicate search (:mod:`.dups`), after
:mod:`.dups_candidates`:

- **Prefilter** (:func:`prefilter`): each candidate row's spectrum descriptor
  (:func:`xraybatch.fingerprint.spectrum_descriptors`, one Dask task per block of
  contiguous rows, which reads whole chunks of thumbnails), then one cheap score per pair,
  thousands of pairs at once: the pairs below ``fingerprint.PREFILTER`` (nearly all pairs
  of different films, no planted copy of the benchmark) are not aligned.
- **Verification** (:func:`verify`): each remaining pair's thumbnails are aligned and
  scored (:func:`xraybatch.fingerprint.align_scores`), one Dask task per block of pairs, on
  the same schedulers as ingest (:func:`xraybatch.schedulers.compute`); the thumbnails are
  read first by tasks over blocks of sorted rows (a cluster's workers read them from the
  store). The scores are align_score's own: the prefilter only decides which pairs are
  scored.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import fingerprint
from .dups_candidates import sorted_unique
from .store import StoreRef, XrayStore

#: Candidate pairs per verification task.
BLOCK = 2048
#: Rows per prefilter-descriptor task, and pairs per prefilter step.
DESCRIBE_ROWS = 16384
SCORE_PAIRS = 65536


@dataclass(frozen=True)
class Sources:
    """The stores whose rows are numbered one after another (offsets: first global row)."""

    refs: tuple[StoreRef, ...]
    offsets: tuple[int, ...]


def _thumbs(sources: Sources, rows: np.ndarray) -> np.ndarray:
    """Thumbnails of global ``rows`` (sorted, unique), read from their stores (opened by each
    task: a few ms against seconds of verification, and never a stale store)."""
    out = np.zeros((len(rows), fingerprint.THUMB, fingerprint.THUMB), np.uint8)
    which = np.searchsorted(np.asarray(sources.offsets), rows, side="right") - 1
    for s in np.unique(which):
        ref = sources.refs[s]
        ds = XrayStore(ref.url, ref.storage_options)
        here = which == s
        out[here] = ds.fingerprint_thumbs(rows[here] - sources.offsets[s])
    return out


def _score_block(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The Dask task: align_score of each pair of rows of ``thumbs``."""
    import cv2

    cv2.setNumThreads(1)  # Dask runs one task per core
    return fingerprint.align_scores(thumbs[pairs[:, 0]], thumbs[pairs[:, 1]])


def _by_rows(sources: Sources, rows: np.ndarray, task: Any, name: str, scheduler: Any,
             workers: int | None) -> np.ndarray:
    """``task(sources, part)`` for each block of ``DESCRIBE_ROWS`` of the sorted ``rows``,
    concatenated: each task reads its rows' chunks of ``fp_thumb`` once (a block of pairs
    would read a chunk for nearly every pair's second row)."""
    from dask.delayed import Delayed

    from .schedulers import compute

    token = hashlib.sha256(repr(sources).encode() + rows.tobytes()).hexdigest()[:24]
    tasks = []
    for i, start in enumerate(range(0, len(rows), DESCRIBE_ROWS)):
        key = f"xraybatch-{name}-{i:06d}-{token}"
        tasks.append(Delayed(key, {key: (task, sources, rows[start:start + DESCRIBE_ROWS])}))
    return np.concatenate(compute(tasks, scheduler, workers))


def _describe_block(sources: Sources, rows: np.ndarray) -> np.ndarray:
    """The Dask task: read the thumbnails of ``rows`` (sorted, mostly contiguous), return
    their spectrum descriptors."""
    import cv2

    cv2.setNumThreads(1)  # Dask runs one task per core
    return fingerprint.spectrum_descriptors(_thumbs(sources, rows))


def prefilter(sources: Sources, pairs: np.ndarray, scheduler: Any = "threads",
              workers: int | None = None) -> np.ndarray:
    """Which pairs are worth aligning: bool per pair, ``spectrum_scores >= PREFILTER``.

    The descriptors of the pairs' rows are Dask tasks over blocks of ``DESCRIBE_ROWS``
    sorted rows (whole chunks of ``fp_thumb`` read once, whichever scheduler); the scores,
    a few dot products per pair, are computed here, ``SCORE_PAIRS`` pairs at a time
    (float32 descriptors: 1.2 KB per row, 1.2 GB for a million rows).
    """
    if not len(pairs):
        return np.zeros(0, bool)
    rows = sorted_unique(pairs.ravel())
    described = _by_rows(sources, rows, _describe_block, "describe", scheduler, workers)
    return prefilter_keep(described, np.searchsorted(rows, pairs), workers)


def prefilter_keep(described: np.ndarray, pairs: np.ndarray, workers: int | None = None
                   ) -> np.ndarray:
    """bool per pair of rows of ``described`` (:func:`xraybatch.fingerprint.
    spectrum_descriptors`): ``spectrum_scores >= PREFILTER``, ``SCORE_PAIRS`` pairs at a time
    on ``workers`` threads (numpy releases the GIL).

    Examples
    --------
    >>> d = fingerprint.spectrum_descriptors(np.random.default_rng(0).integers(
    ...     0, 256, (3, 64, 64), np.uint8))
    >>> prefilter_keep(d, np.array([[0, 0], [0, 1]])).tolist()
    [True, False]
    """
    from concurrent.futures import ThreadPoolExecutor

    def keep(start: int) -> np.ndarray:
        block = pairs[start:start + SCORE_PAIRS]
        return fingerprint.spectrum_scores(described[block[:, 0]], described[block[:, 1]]
                                           ) >= fingerprint.PREFILTER

    if not len(pairs):
        return np.zeros(0, bool)
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(keep, range(0, len(pairs), SCORE_PAIRS))))


def verify(sources: Sources, pairs: np.ndarray, scheduler: Any = "threads",
           workers: int | None = None) -> np.ndarray:
    """align_score of every pair, on a local scheduler or a client: the pairs' thumbnails
    are read by tasks over blocks of sorted rows (:func:`_by_rows`), then aligned by one task
    per ``BLOCK`` pairs, each given the thumbnails of its own rows (4 KB each)."""
    from dask.delayed import Delayed

    from .schedulers import compute

    if not len(pairs):
        return np.zeros(0)
    rows = sorted_unique(pairs.ravel())
    thumbs = _by_rows(sources, rows, _thumbs, "thumbs", scheduler, workers)
    index = np.searchsorted(rows, pairs)
    token = hashlib.sha256(repr(sources).encode() + pairs.tobytes()).hexdigest()[:24]
    tasks = []
    for i, start in enumerate(range(0, len(pairs), BLOCK)):
        block = index[start:start + BLOCK]
        mine = sorted_unique(block.ravel())
        key = f"xraybatch-dups-{i:06d}-{token}"
        local = np.searchsorted(mine, block)
        tasks.append(Delayed(key, {key: (_score_block, thumbs[mine], local)}))
    return np.concatenate(compute(tasks, scheduler, workers))
