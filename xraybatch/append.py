"""Append: store the files of a source that a store does not hold yet, after its rows.

A file is held when the store has its path with the same size (held files are never read
again); a held path whose size changed is reported, never replaced. The append then runs in
steps, each safe to interrupt:

1. ``append_pending`` is recorded in the root ``zarr.json``, whose consolidated metadata
   still describes the committed version: what every reader sees until step 4.
2. Every per-image array is grown in its own metadata, and the scan's columns of the new
   rows are written (a partly filled chunk is rewritten whole, its old rows unchanged; each
   file write is atomic).
3. The chunk tasks of :mod:`.tasks` decode the new files; the task of the store's last,
   partly filled chunk keeps its stored rows (:attr:`~.tasks.ChunkTask.keep`). Full chunks
   are never rewritten.
4. The statistics partials are extended by the new rows, then the new row count, version,
   history and consolidated metadata are committed in one write of the root ``zarr.json``.

``--append --resume`` finishes an interrupted append of the same files; ``--append`` alone
over an interrupted one discards it (the chunks it wrote beyond the committed rows are
deleted) and starts again.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from . import lock, store
from .scan import Scan
from .schedulers import compute, connected, opencv_threads_kept
from .store import StoreError, StoreRef
from .tasks import ChunkReport, IngestResult, build_tasks, prepared, write_partials

#: Ingest options that must equal the store's for an append, with their command-line names.
_OPTION_NAMES = {"size": "--size", "interpolation": "--interpolation", "decode": "--decode",
                 "window": "--window", "fit": "--fit", "max_pixels": "--max-pixels",
                 "patient_id_regex": "--patient-id"}


@dataclass
class AppendResult(IngestResult):
    """An :class:`~.tasks.IngestResult` of an append: ``failures`` are those of the new files.

    ``n_new`` files were appended as rows ``rows`` (``[start, stop)``), making ``version``;
    ``changed`` lists held paths whose size changed (``path``, ``stored_bytes``, ``bytes``),
    which were not stored again. ``discarded``: an interrupted append whose files are no longer
    new was dropped (the store is its last committed version, without ``append_pending``).
    """

    n_new: int = 0
    discarded: bool = False
    #: The store's active split assignment when ``xraybatch split`` wrote it (None for the
    #: scan's): the new rows are in their scan splits, not placed by it.
    resplit: dict | None = None
    rows: tuple[int, int] = (0, 0)
    version: int = 0
    changed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["path", "stored_bytes", "bytes"]))


@dataclass
class Plan:
    """What an append adds: the new files in scan order, with their labels in the store's
    numbering, and the class and split lists extended (never renumbered)."""

    n_old: int
    new: pd.DataFrame  # manifest rows of the new files
    changed: pd.DataFrame  # path, stored_bytes, bytes
    classes: list[str]
    splits: list[str]
    labels: np.ndarray  # int16, one per new file
    findings: np.ndarray | None  # (n_new, C) int8 for a multi-label store

    @property
    def n_new(self) -> int:
        return self.n_old + len(self.new)

    def token(self) -> str:
        """Identifies the append (rows, files, labels, splits): ``--resume`` checks it."""
        h = hashlib.sha256(json.dumps([self.n_old, self.classes, self.splits]).encode())
        for column in ("path", "bytes", "split"):
            h.update("\0".join(map(str, self.new[column])).encode())
        h.update(self.labels.tobytes())
        if self.findings is not None:
            h.update(np.ascontiguousarray(self.findings).tobytes())
        return h.hexdigest()


def plan(found: Scan, attrs: dict[str, Any], held: pd.DataFrame, absent: int = -2) -> Plan:
    """Compare a scan with the store's ``held`` rows (``path``, ``file_bytes``).

    ``absent``: the findings value of a store's finding the new table does not name (0 for
    a labels column, where an unnamed finding is negative; -2 "not stated" otherwise).

    Examples
    --------
    >>> from xraybatch.scan import Scan
    >>> m = pd.DataFrame({"path": ["a", "b", "c"], "split": "none", "class_name": ["X", "Y", "X"],
    ...                   "label": [0, 1, 0], "bytes": [5, 6, 7], "patient_id": ""})
    >>> p = plan(Scan("/", m, ["X", "Y"], ["none"]), {"n_images": 2, "classes": ["X"],
    ...          "splits": ["none"]}, pd.DataFrame({"path": ["a", "c"], "file_bytes": [5, 9]}))
    >>> p.new.path.tolist(), p.classes, p.labels.tolist(), p.changed.path.tolist()
    (['b'], ['X', 'Y'], [1], ['c'])
    """
    manifest = found.manifest
    stored = pd.Series(held.file_bytes.to_numpy(), index=held.path.to_numpy())
    known = manifest.path.map(stored)
    is_new = known.isna().to_numpy()
    changed = ~is_new & (known.fillna(-1).to_numpy() != manifest.bytes.to_numpy())
    new = manifest[is_new].reset_index(drop=True)
    classes, splits = list(attrs["classes"]), list(attrs["splits"])
    splits += [s for s in found.splits if s in set(new.split) and s not in splits]
    findings = None
    if attrs.get("label_kind") == "multi":
        findings = _findings(found, classes, absent)[is_new]
        labels = np.full(len(new), -1, np.int16)
    else:
        classes += [c for c in found.classes if c in set(new.class_name) and c not in classes]
        labels = new.class_name.map({c: i for i, c in enumerate(classes)}).to_numpy(np.int16)
    return Plan(int(attrs["n_images"]), new, pd.DataFrame({
        "path": manifest.path[changed].to_numpy(), "stored_bytes": known[changed].to_numpy(
            np.int64), "bytes": manifest.bytes[changed].to_numpy(np.int64)}),
        classes, splits, labels, findings)


def _findings(found: Scan, names: list[str], absent: int) -> np.ndarray:
    """The scan's findings in the store's finding order; new findings are refused."""
    if found.findings is None:
        raise StoreError("the store is multi-label (a findings matrix) but this input gives "
                         "one class per image")
    extra = [c for c in found.findings.columns if c not in names]
    if extra:
        raise StoreError(f"findings new to the store ({', '.join(map(str, extra[:5]))}): an "
                         "append cannot widen the findings matrix; ingest the union anew with "
                         "--overwrite")
    return found.findings.reindex(columns=names, fill_value=absent).to_numpy(np.int8)


def check(url: str, attrs: dict[str, Any], given: dict[str, Any], table: bool) -> None:
    """Refuse, in one line, a store that cannot take an append with ``given`` options.

    Examples
    --------
    >>> stored = {"xraybatch_version": "x", "classes": [], "complete": True,
    ...           "format_version": 2, "size": 64, "fit": "stretch", "source": "/d"}
    >>> check("o.zarr", stored, {"size": 64, "fit": "pad", "source": "/d"}, False)
    Traceback (most recent call last):
    ...
    xraybatch.location.StoreError: cannot append to o.zarr: --fit pad differs from the store's stretch; give the store's options (or ingest anew with --overwrite)
    """  # noqa: E501
    if not store.is_ours(attrs) or not store.layout_written(attrs):
        raise StoreError(f"cannot append to {url}: it is not an xraybatch store")
    if not attrs.get("complete"):
        raise StoreError(f"cannot append to {url}: its ingest was interrupted; finish it "
                         "with --resume (without --append) first")
    if store.format_version(attrs) < store.FORMAT_VERSION:
        raise StoreError(f"cannot append to {url}: it is a format-"
                         f"{store.format_version(attrs)} store (xraybatch "
                         f"{attrs.get('xraybatch_version')}); ingest it anew once with "
                         "--overwrite")
    differ = [f"{flag} {given[key]} differs from the store's {attrs.get(key)}"
              for key, flag in _OPTION_NAMES.items()
              if key in given and given[key] != attrs.get(key)]
    if differ:
        raise StoreError(f"cannot append to {url}: {', '.join(differ)}; give the store's "
                         "options (or ingest anew with --overwrite)")
    if given["source"] != attrs.get("source"):
        raise StoreError(f"cannot append to {url}: its files are under {attrs.get('source')}, "
                         f"not {given['source']} (paths are relative to the store's source)")
    scheme = str(attrs.get("label_scheme", ""))
    if not table and given.get("label_scheme", scheme) != scheme:
        raise StoreError(f"cannot append to {url}: --labels {given['label_scheme']} differs "
                         f"from the store's {scheme}")


def append(found: Scan, ref: StoreRef, given: dict[str, Any], *, scheduler: Any = "threads",
           workers: int | None = None, progress: bool = False, retries: int = 2,
           resume: bool = False, source_options: dict | None = None, absent: int = -2,
           started: float | None = None) -> AppendResult:
    """Append the files of ``found`` that the store at ``ref`` does not hold yet.

    Called by :func:`xraybatch.ingest` with ``append=True`` (which scans the source);
    ``given`` are the ingest's store attributes (options, source, label scheme), which must
    match the store's. See the module's description for the steps and crash safety.

    Raises
    ------
    StoreError
        One line: no store, not appendable (options, source, format), busy, or a resume of
        an append that is not pending or whose files changed.

    Examples
    --------
    >>> xraybatch.ingest("chest_xray", "xray.zarr", append=True).n_new  # doctest: +SKIP
    148
    """
    t0 = time.perf_counter() if started is None else started
    if not ref.exists():
        raise StoreError(f"nothing to append to: {ref.url} does not exist (ingest it first, "
                         "without --append)")
    lock.refuse_if_busy(ref)
    with connected(scheduler) as target, lock.locked(ref):
        group = ref.open("r+")  # the committed version (consolidated metadata)
        attrs = dict(group.attrs)
        check(ref.url, attrs, given, str(given.get("label_scheme", "")).startswith("table "))
        todo = plan(found, attrs, store.held_files(group, int(attrs["n_images"])), absent)
        pending = attrs.get(store.APPEND_PENDING)
        if resume and not pending:
            raise StoreError(f"nothing to resume: no append is in progress in {ref.url} (run "
                             "--append without --resume)")
        if resume and pending.get("token") != todo.token():
            raise StoreError(f"cannot resume the append to {ref.url}: the files under the "
                             "source changed since it started; run --append without --resume "
                             "to start it again")
        if not len(todo.new):
            if pending:  # abandoned (its files are gone): drop its rows, as a new append would
                _discard(ref, group, attrs)
            return _result(ref, found, todo, attrs, [], t0, int(attrs.get("version", 0)),
                           discarded=bool(pending))
        if not resume:
            store.begin_append(group, {"rows": [todo.n_old, todo.n_new], "token": todo.token(),
                                       "started": store.utc_now()})
        pending_group = store.open_pending(ref)

        def prepare() -> None:
            store.grow(pending_group, group, todo.n_new, todo.classes, todo.splits,
                       discard=not resume)
            store.write_rows(pending_group, todo.n_old, store.scan_values(
                todo.new, todo.labels, todo.splits, todo.findings))

        if resume:  # which chunks are done is read from the grown arrays
            prepare()
        # Otherwise the arrays grow while the first chunks decode (ingest's creation too).
        with prepared(ref, target, (lambda: None) if resume else prepare):
            reports = _run(ref, pending_group, todo, attrs, given, target, workers, progress,
                           retries, resume, source_options or {})
        result = _result(ref, found, todo, attrs, reports, t0, int(attrs["version"]) + 1)
        partials = write_partials(pending_group, todo.classes, todo.splits,
                                  store.read_partials(group))
        store.commit(pending_group, {
            "n_images": todo.n_new, "classes": todo.classes, "splits": todo.splits,
            "summary": _summary(attrs["summary"], result), "n_skipped": len(found.skipped),
            "completed": store.utc_now(),
            "skipped": found.skipped.head(1000).values.tolist(), **partials,
            **store.history_attrs(attrs, {"action": "append", "source": found.source,
                                          "rows": [todo.n_old, todo.n_new]})})
    return result


def _run(ref: StoreRef, group: Any, todo: Plan, attrs: dict[str, Any], given: dict[str, Any],
         target: Any, workers: int | None, progress: bool, retries: int, resume: bool,
         source_options: dict) -> list[ChunkReport]:
    """The chunk tasks of the new rows (on resume: those not done, and the partly filled
    chunk of the old rows, whose ``chunk_done`` predates the append); all checked written."""
    chunk = int(attrs["chunk"])
    first, last = todo.n_old // chunk, store.n_chunks(todo.n_new, chunk)
    done = store.done_chunks(group) if resume else np.zeros(last, bool)
    chunks = [i for i in range(first, last) if not (done[i] and i * chunk >= todo.n_old)]
    # Rows before n_old are kept from the store: their paths are never read.
    paths = [""] * todo.n_old + todo.new.path.tolist()
    weights = [0] * todo.n_old + todo.new.bytes.tolist()
    params = {key: given[key] for key in ("size", "interpolation", "max_pixels", "window", "fit")}
    tasks = build_tasks(ref, attrs["source"], paths, chunks, chunk, weights=weights,
                        stored=todo.n_old, decode=given["decode"], source_options=source_options,
                        **params)
    images = sum(min((i + 1) * chunk, todo.n_new) - max(i * chunk, todo.n_old) for i in chunks)
    with opencv_threads_kept():
        reports = compute(tasks, target, workers, progress, retries, images=images)
    missing = first + np.flatnonzero(~store.done_chunks(group)[first:])
    if len(missing):  # never commit rows that were not written
        raise StoreError(f"{len(missing)} chunks of the append to {ref.url} were not written "
                         f"(the first is chunk {missing[0]}); finish it with --append --resume")
    return reports


def _discard(ref: StoreRef, group: Any, attrs: dict[str, Any]) -> None:
    """Cut every array back to the committed rows (deleting the chunks an interrupted append
    wrote beyond them) and commit the store as it was, without ``append_pending``."""
    pending_group = store.open_pending(ref)
    store.grow(pending_group, group, int(attrs["n_images"]), list(attrs["classes"]),
               list(attrs["splits"]), discard=True)
    store.commit(pending_group, {})


def _result(ref: StoreRef, found: Scan, todo: Plan, attrs: dict[str, Any],
            reports: list[ChunkReport], t0: float, version: int, discarded: bool = False
            ) -> AppendResult:
    rows = sorted(f for r in reports for f in r.failures)
    paths = todo.new.path.to_numpy()
    failures = pd.DataFrame({"path": [paths[i - todo.n_old] for i, _, _ in rows],
                             "status": [code for _, code, _ in rows],
                             "message": [message for _, _, message in rows]},
                            columns=["path", "status", "message"])
    n_failed = int(attrs["summary"]["n_failed"]) + len(failures)
    return AppendResult(
        out=ref.url, n_images=todo.n_new, n_stored=todo.n_new - n_failed, failures=failures,
        skipped=found.skipped, seconds=time.perf_counter() - t0, chunks_run=len(reports),
        chunks_total=store.n_chunks(todo.n_new, int(attrs["chunk"])),
        bytes_read=sum(r.bytes_read for r in reports), reports=reports, n_new=len(todo.new),
        rows=(todo.n_old, todo.n_new), version=version, changed=todo.changed,
        discarded=discarded, resplit=_computed_split(attrs))


def _computed_split(attrs: dict[str, Any]) -> dict | None:
    """The split assignment ``xraybatch split`` wrote, or None for the scan's own."""
    assignment = attrs.get("split_assignment") or {}
    return assignment if assignment.get("method", "scan") != "scan" else None


def _summary(before: dict[str, Any], result: AppendResult) -> dict[str, Any]:
    """The store's ``summary`` attribute after the append (its counts are of every row)."""
    reasons = dict(before.get("reasons", {}))
    for code, n in result.failures.status.value_counts().items():
        reasons[code] = reasons.get(code, 0) + int(n)
    return {**before, "n_images": result.n_images, "n_stored": result.n_stored,
            "n_failed": result.n_images - result.n_stored, "reasons": reasons,
            "n_skipped": len(result.skipped), "seconds_last_run": round(result.seconds, 3),
            "chunks_last_run": result.chunks_run}
