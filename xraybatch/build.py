"""Build: write a new store from a scan, or finish one whose ingest was interrupted.

Called by :func:`xraybatch.ingest` (which checks the options and scans the source) for a
run without ``append``: the store is created (while the first chunk tasks of :mod:`.tasks`
decode, when they run in this process), the tasks write every chunk (on ``resume``, those
not done), and the store is marked complete once every chunk is written and the
statistics partials are stored.
"""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import pandas as pd
import zarr

from . import lock, store
from .scan import Scan
from .schedulers import compute, connected, opencv_threads_kept
from .store import StoreError, StoreRef
from .tasks import ChunkReport, IngestResult, build_tasks, prepared, write_partials

# Attributes that must match for --resume to continue a run.
_RESUME_KEYS = ("size", "interpolation", "decode", "label_scheme", "source", "max_pixels",
                "window", "fit", "patient_id_regex")


def build(found: Scan, ref: StoreRef, attrs: dict[str, Any], *, size: int, chunk: int,
          params: dict[str, Any], scheduler: Any = "threads", workers: int | None = None,
          progress: bool = False, retries: int = 2, overwrite: bool = False,
          resume: bool = False, started: float | None = None) -> IngestResult:
    """Store every file of ``found`` at ``ref`` (on ``resume``, only the missing chunks).

    Parameters
    ----------
    attrs
        The store's attributes from the ingest's options and scan (without ``size``).
    size, chunk
        Output side and images per chunk (a resumed store keeps its own).
    params
        The chunk tasks' other options (:class:`xraybatch.tasks.ChunkTask`).
    started
        ``time.perf_counter()`` when the ingest began (the scan is part of its time).

    Returns
    -------
    IngestResult
        See :func:`xraybatch.ingest`, whose other parameters these are.
    """
    t0 = time.perf_counter() if started is None else started
    store.check_target(ref, overwrite, resume)  # before the lock file touches OUT
    # Connect before the store is created, so an unreachable cluster leaves OUT untouched.
    with connected(scheduler) as target, lock.locked(ref):
        group = _resume(ref, found, {**attrs, "size": size}) if resume else None
        create = None
        if group is None:  # a new store, or a resumed one whose creation was interrupted
            create = functools.partial(
                store.create, ref, found.manifest, size=size, chunk=chunk,
                classes=found.classes, splits=found.splits, attrs=attrs,
                overwrite=overwrite or resume, findings=found.findings)
            todo = list(range(store.n_chunks(len(found.manifest), chunk)))
        else:
            chunk, size = int(group.attrs["chunk"]), int(group.attrs["size"])
            todo = [int(i) for i in np.flatnonzero(~store.done_chunks(group))]
        # Tasks in this process need the store only to write: it is then created while
        # the first chunks decode (serial time of a 1,488-image run: 0.19 -> 0.07 s).
        with prepared(ref, target, create) if create else nullcontext() as creating:
            tasks = build_tasks(ref, attrs["source"], found.manifest.path.tolist(), todo,
                                chunk, weights=found.manifest.bytes.tolist(), size=size,
                                **params)
            with opencv_threads_kept():
                reports = compute(tasks, target, workers, progress, retries, images=sum(
                    min(chunk, len(found.manifest) - i * chunk) for i in todo))
        if creating is not None:
            group = creating.result()
        result = _summarize(ref, found, reports, time.perf_counter() - t0)
        missing = np.flatnonzero(~store.done_chunks(group))
        if len(missing):  # never mark a store complete that is not
            raise StoreError(f"{len(missing)} chunks of {ref.url} were not written (the first "
                             f"is chunk {missing[0]}); finish it with --resume")
        entry = {"action": "ingest", "source": found.source, "rows": [0, result.n_images]}
        partials = write_partials(group, found.classes, found.splits)
        store.mark_complete(group, _summary_attrs(result), entry, partials)
    return result


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
    _check_resumable(ref, stored, attrs)
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


def _check_resumable(ref: StoreRef, stored: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Refuse a store written with other options than ``attrs`` (or without recording them)."""
    unrecorded = [key for key in _RESUME_KEYS if key not in stored]
    if unrecorded:  # written by an older version
        raise StoreError(f"cannot resume {ref.url}: xraybatch "
                         f"{stored.get('xraybatch_version', '(unknown version)')} wrote it "
                         f"without {', '.join(unrecorded)}; start again with --overwrite")
    for key in _RESUME_KEYS:
        if stored.get(key) != attrs[key]:
            raise StoreError(f"cannot resume {ref.url}: {key} was {stored.get(key)!r}, "
                             f"now {attrs[key]!r}")


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
