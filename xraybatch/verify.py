"""Verify a store: every chunk file read and checked, each image against what ingest recorded;
with ``sources``, every source file re-hashed against its recorded size and SHA-256.

One Dask task per images chunk (:func:`xraybatch.schedulers.compute`, every scheduler): the task
reads that chunk of every array chunked with the images, decoded with the arrays' own codecs,
so a format-2 store's checksums (CRC-32C on the pixels, Zstandard's frame checksum elsewhere)
are checked on every file; it recomputes each stored image's histogram and compares it with
the stored ``hist`` row, ``mean`` and ``std``, checks that the rows of files that were not
stored are all zero, and that the chunk was marked done. The chunks of the arrays chunked
otherwise (the scan's columns, arrays added by later stages) are shared out among the same
tasks. Nothing is decoded from the sources unless asked: ``sources`` reads and hashes each
source file in the task of its chunk, and scans the source again for files the store lacks.
Every damaged chunk is reported, never raised.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
from dask.delayed import Delayed

from . import decode, qc, store
from .readers.base import ImageError
from .schedulers import compute, connected, opencv_threads_kept
from .sources import listing, remote, tables
from .store import StoreError, StoreRef

#: Kinds of :class:`Problem`, and what each means (README, "Verify a store").
KINDS = {
    "checksum": "a chunk file could not be decoded: its checksum does not match, or it is "
                "otherwise damaged",
    "missing_chunk": "a chunk file that is always written does not exist",
    "not_done": "a chunk was never marked done (an interrupted run: ingest --resume)",
    "incomplete": "the store is not marked complete",
    "split_pending": "an interrupted 'xraybatch split' left the split half rewritten",
    "hist": "a stored image's histogram differs from its hist row",
    "moments": "a stored image's mean or std differs from the image's own",
    "invalid_not_zero": "the row of a file that was not stored is not all zero",
}
#: Arrays whose chunk files the chunk tasks write: absent from every chunk not done yet.
_WRITTEN_BY_TASKS = ("images", "hist")
#: Source files whose status at ingest meant they could not be read (no hash recorded).
_UNREAD = ("missing", "symlink_loop", "unreadable")


@dataclass(frozen=True)
class Problem:
    """One mismatch found in the store (``None`` where a field does not apply)."""

    kind: str
    array: str | None
    chunk: int | None
    row: int | None
    path: str | None
    message: str

    def line(self) -> str:
        """The problem in one line of text."""
        where = " ".join(x for x in (
            self.array, None if self.chunk is None else f"chunk {self.chunk}",
            None if self.row is None else f"row {self.row}",
            None if self.path is None else f"({self.path})") if x)
        return f"{self.kind:<16} {where}: {self.message}"


@dataclass(frozen=True)
class VerifyTask:
    """What one verify task reads; small and picklable."""

    ref: StoreRef
    index: int  # the images chunk
    rows: int  # images in it
    names: tuple[str, ...]  # arrays read with it (store.chunk_layout)
    others: tuple[tuple[str, tuple[int, ...]], ...]  # chunks of other arrays it also reads
    # (row, path relative to the source, stored bytes, stored sha256, status at ingest)
    sources: tuple[tuple[int, str, int, str, str], ...] = ()
    root: str = ""  # the source folder or URL
    source_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ChunkVerdict:
    """What a verify task returns: counts and what differs, never pixels."""

    index: int
    n: int  # rows of the chunk (progress)
    images: int  # images compared with their recorded histogram
    files: int  # chunk files read
    problems: tuple[Problem, ...]
    changed: tuple[dict, ...] = ()
    missing: tuple[dict, ...] = ()


@dataclass
class SourceCheck:
    """The sources against the store: files changed, missing or new since it was written."""

    source: str
    files_checked: int
    changed: list[dict]  # row, path, stored_bytes, bytes, stored_sha256, sha256, message
    missing: list[dict]  # row, path, message
    new: list[dict]  # path, bytes
    note: str = ""  # why new files could not be looked for

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.new)


@dataclass
class VerifyResult:
    """The outcome of :func:`verify` (``to_dict`` is the ``--json`` document)."""

    store: str
    format_version: int
    checksums: bool
    complete: bool
    chunks_checked: int  # chunk files read and decoded
    image_chunks: int
    n_images: int  # rows of the store
    images_checked: int  # images compared with their records (not those of damaged chunks)
    problems: list[Problem]
    sources: SourceCheck | None
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems and (self.sources is None or self.sources.ok)

    @property
    def images_per_second(self) -> float:
        """Rows of the store verified per second (wall time of the whole command)."""
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the schema of ``xraybatch verify --json`` (README, "Verify a store")."""
        return {"store": self.store, "ok": self.ok, "format_version": self.format_version,
                "checksums": self.checksums, "complete": self.complete,
                "chunks_checked": self.chunks_checked, "image_chunks": self.image_chunks,
                "n_images": self.n_images, "images_checked": self.images_checked,
                "seconds": round(self.seconds, 3),
                "problems": [asdict(p) for p in self.problems],
                "sources": None if self.sources is None else asdict(self.sources)}


# --- the checks (pure functions) -------------------------------------------------------------


def check_rows(chunk: store.StoredChunk) -> tuple[list[Problem], int]:
    """Problems of one images chunk as read, and how many images were compared.

    A stored image's histogram must equal its ``hist`` row, its ``mean``/``std`` those of its
    histogram (:func:`xraybatch.qc.image_moments`, exactly as ingest computed them from the
    same counts: sums of integers, so bit for bit), and the row of a file that was not
    stored must be zero everywhere.

    Examples
    --------
    >>> images = np.zeros((2, 4, 4), np.uint8)
    >>> hist = np.zeros((2, 256), np.int32)
    >>> hist[0, 0] = 15  # row 0 is stored, but its hist row counts 15 of its 16 pixels
    >>> chunk = store.StoredChunk(3, 48, images, hist, np.array([True, False]),
    ...                           None, None, True, 4, [], [])
    >>> [(p.kind, p.row) for p in check_rows(chunk)[0]]
    [('hist', 48)]
    """
    i = chunk.index
    problems = [Problem("checksum", name, i, None, None, message)
                for name, message in chunk.errors]
    problems += [Problem("missing_chunk", name, i, None, None, "chunk file missing")
                 for name in chunk.missing]
    if not chunk.done:
        return problems + [Problem("not_done", None, i, None, None, KINDS["not_done"])], 0
    if chunk.images is None or chunk.hist is None or chunk.valid is None:
        return problems, 0  # a damaged chunk is reported above; nothing to compare
    valid = chunk.valid.astype(bool)
    now = np.stack([decode.histogram(image) for image in chunk.images])
    bins = (now != chunk.hist).sum(axis=1)
    for r in np.flatnonzero(valid & (bins > 0)):
        problems.append(Problem("hist", None, i, chunk.start + int(r), None,
                                f"the image's histogram differs from its hist row in "
                                f"{bins[r]} bins"))
    moments = [m for m in (chunk.mean, chunk.std) if m is not None]
    if len(moments) == 2:
        expected = np.zeros((2, len(valid)))
        expected[:, valid] = qc.image_moments(now[valid])
        wrong = ~((moments[0] == expected[0]) & (moments[1] == expected[1]))
        for r in np.flatnonzero(wrong & valid & (bins == 0)):  # (else reported as hist)
            problems.append(Problem("moments", None, i, chunk.start + int(r), None,
                                    f"mean/std {moments[0][r]:.6g}/{moments[1][r]:.6g}, the "
                                    f"image's {expected[0, r]:.6g}/{expected[1, r]:.6g}"))
    else:
        wrong = np.zeros(len(valid), bool)
    dirty = (chunk.images.reshape(len(valid), -1).any(axis=1) | chunk.hist.any(axis=1) | wrong)
    for r in np.flatnonzero(~valid & dirty):
        problems.append(Problem("invalid_not_zero", None, i, chunk.start + int(r), None,
                                "the row of a file that was not stored holds pixels, a "
                                "histogram or moments"))
    return problems, len(valid)


def check_source(url: str, stored_bytes: int, stored_sha: str, status: str
                 ) -> tuple[str, dict[str, Any]] | None:
    """``("changed" | "missing", facts)`` for one source file against what ingest recorded,
    or None when it is the same file (same size and SHA-256, or still unreadable).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp(), "a.jpeg")
    >>> _ = path.write_bytes(b"abc")
    >>> check_source(str(path), 3, hashlib.sha256(b"abc").hexdigest(), "ok") is None
    True
    >>> check_source(str(path), 3, "0" * 64, "ok")[1]["message"]
    'same size, different content (SHA-256)'
    >>> check_source(str(path) + ".gone", 3, "0" * 64, "ok")[0]
    'missing'
    """
    try:
        data = decode.read_bytes(url)
    except ImageError as e:
        if status in _UNREAD and not stored_sha:
            return None  # unreadable at ingest too
        if e.code == "missing":
            return "missing", {"message": str(e)}
        return "changed", {"stored_bytes": stored_bytes, "bytes": None,
                           "stored_sha256": stored_sha, "sha256": None, "message": str(e)}
    sha = hashlib.sha256(data).hexdigest()
    if sha == stored_sha and len(data) == stored_bytes:
        return None
    if not stored_sha:
        message = f"was {status} at ingest, readable now"
    elif len(data) != stored_bytes:
        message = f"size {stored_bytes} -> {len(data)} bytes"
    else:
        message = "same size, different content (SHA-256)"
    return "changed", {"stored_bytes": stored_bytes, "bytes": len(data),
                       "stored_sha256": stored_sha, "sha256": sha, "message": message}


def store_problems(ds: store.XrayStore) -> list[Problem]:
    """The problems of the whole store, from its attributes: not marked complete (an ingest
    that stopped), a split half rewritten (``split_pending``).

    Examples
    --------
    >>> [p.kind for p in store_problems(xraybatch.open("x.zarr"))]  # doctest: +SKIP
    ['split_pending']
    """
    found = []
    if not ds.complete:
        found.append(Problem("incomplete", None, None, None, None,
                             "the store is not marked complete: finish it with "
                             "xraybatch ingest SRC OUT --resume"))
    if ds.attrs.get("split_pending"):
        found.append(Problem("split_pending", "split", None, None, None,
                             f"{KINDS['split_pending']}: run it again, or 'xraybatch split "
                             f"{ds.ref.url} --restore'"))
    return found


def unfinished(problems: list[Problem]) -> tuple[list[int], list[Problem]]:
    """What an ingest that stopped leaves, set apart: the chunks never marked done, and the
    other problems (without ``incomplete``, ``not_done`` and those chunks' pixels and
    histograms, which were never written).

    Examples
    --------
    >>> found = [Problem("incomplete", None, None, None, None, "not marked complete"),
    ...          Problem("missing_chunk", "images", 3, None, None, "chunk file missing"),
    ...          Problem("not_done", None, 3, None, None, "never marked done"),
    ...          Problem("missing_chunk", "labels", 3, None, None, "chunk file missing")]
    >>> chunks, rest = unfinished(found)
    >>> chunks, [(p.kind, p.array) for p in rest]
    ([3], [('missing_chunk', 'labels')])
    """
    chunks = sorted({p.chunk for p in problems if p.kind == "not_done"})
    left = set(chunks)
    rest = [p for p in problems if p.kind not in ("incomplete", "not_done") and not (
        p.kind == "missing_chunk" and p.array in _WRITTEN_BY_TASKS and p.chunk in left)]
    return chunks, rest


# --- the Dask task ---------------------------------------------------------------------------


def run_verify_chunk(task: VerifyTask) -> ChunkVerdict:
    """The Dask task: read and check one images chunk (and its share of the other chunks)."""
    cv2.setNumThreads(1)  # as in ingest: Dask already runs one task per core
    group = store.open_for_chunks(task.ref, mode="r")
    chunk = store.read_chunk(group, task.index, list(task.names))
    problems, images = check_rows(chunk)
    files = chunk.files
    for name, coords in task.others:
        present, error = store.read_other_chunk(group, name, coords)
        files += present
        if error:  # (a chunk of a 2-D array is named by its first coordinate, the rest here)
            kind = "missing_chunk" if not present else "checksum"
            where = f"chunk {coords}: " if any(coords[1:]) else ""
            problems.append(Problem(kind, name, int(coords[0]), None, None, where + error))
    changed, missing = [], []
    with remote.source_options(task.source_options):
        for row, rel, stored_bytes, stored_sha, status in task.sources:
            found = check_source(listing.join(task.root, rel), stored_bytes, stored_sha, status)
            if found:
                (changed if found[0] == "changed" else missing).append(
                    {"row": row, "path": rel, **found[1]})
    return ChunkVerdict(task.index, task.rows, images, files, tuple(problems), tuple(changed),
                        tuple(missing))


def _tasks(ref: StoreRef, group: Any, facts: Any, root: str, source_options: dict) -> list:
    """One task per images chunk; the other arrays' chunks dealt out among them."""
    names, others = store.chunk_layout(group)
    n, chunk = int(group.attrs["n_images"]), int(group.attrs["chunk"])
    n_tasks = store.n_chunks(n, chunk)
    tasks = []
    for index in range(n_tasks):
        sources = ()
        if facts is not None:
            part = facts.iloc[index * chunk:(index + 1) * chunk]
            sources = tuple((int(r), p, int(b), s, st) for r, p, b, s, st in zip(
                part.index, part.path, part.file_bytes, part.sha256, part.status, strict=True))
        spec = VerifyTask(ref, index, min(chunk, n - index * chunk), tuple(names),
                          tuple(others[index::n_tasks]), sources, root, source_options)
        key = f"xraybatch-verify-{index}-{_token(spec)}"
        tasks.append(Delayed(key, {key: (run_verify_chunk, spec)}))
    return tasks


def _token(spec: VerifyTask) -> str:
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:32]


def _paths(group: Any, facts: Any, rows: list[int]) -> dict[int, str]:
    """The source path of each of ``rows``: from the facts read for ``sources``, else from
    the chunks of ``path`` that hold them (no other array). A damaged ``path`` chunk,
    reported as such, leaves the rows unnamed."""
    if facts is not None or not rows:
        return {r: str(facts.path[r]) for r in rows}
    try:
        found = group["path"].get_orthogonal_selection(np.asarray(rows))
    except (ValueError, RuntimeError):
        return {}
    return dict(zip(rows, map(str, found), strict=True))


# --- new files, from a scan of the source ----------------------------------------------------


def _rescan(attrs: dict[str, Any], source_options: dict):
    """Scan the store's source again as ingest did (folder or table); raises ScanError."""
    from .scan import scan

    regex = attrs.get("patient_id_regex") or None
    table = attrs.get("table") or _table_from_scheme(str(attrs.get("label_scheme", "")))
    if table is None:
        return scan(attrs["source"], str(attrs.get("label_scheme", "folder")), regex,
                    storage_options=source_options)
    columns = {k: tuple(v) if isinstance(v, list) else v
               for k, v in (table.get("columns") or {}).items()}
    spec = tables.columns_for(table.get("preset"), **columns)
    return scan(attrs["source"], patient_id=regex, files=table["files"], columns=spec,
                storage_options=source_options)


def _table_from_scheme(scheme: str) -> dict[str, Any] | None:
    """The table input of a store written before the ``table`` attribute, from its
    ``label_scheme`` (``table PATH [preset P] [columns k='v' ...]``).

    Examples
    --------
    >>> _table_from_scheme("table /d/t.csv preset nih columns path='f' findings=('A', 'B')")
    {'files': '/d/t.csv', 'preset': 'nih', 'columns': {'path': 'f', 'findings': ('A', 'B')}}
    >>> _table_from_scheme("kermany3") is None
    True
    """
    found = re.fullmatch(r"table (.+?)(?: preset (\S+))?(?: columns (.*))?", scheme)
    if not found:
        return None
    parts = re.split(r"(?:^| )(\w+)=", found[3] or "")[1:]
    columns = {k: ast.literal_eval(v) for k, v in zip(parts[::2], parts[1::2], strict=True)}
    return {"files": found[1], "preset": found[2], "columns": columns}


def _new_files(attrs: dict[str, Any], stored: set[str], source_options: dict
               ) -> tuple[list[dict], str]:
    from .scan import ScanError

    try:
        found = _rescan(attrs, source_options)
    except (ScanError, tables.TableError, OSError, ValueError, SyntaxError) as e:
        return [], f"new files not looked for: {e}"
    manifest = found.manifest
    new = manifest[~manifest.path.isin(stored)]
    return [{"path": p, "bytes": int(b)} for p, b in zip(new.path, new.bytes, strict=True)], ""


# --- the command -----------------------------------------------------------------------------


def verify(out: str | os.PathLike, *, sources: bool = False, scheduler: Any = "threads",
           workers: int | None = None, progress: bool = False, retries: int = 2,
           storage_options: dict | None = None, source_options: dict | None = None
           ) -> VerifyResult:
    """Check every chunk of the store ``out``; with ``sources``, its source files too.

    Parameters
    ----------
    out
        Store path or fsspec URL.
    sources
        Re-hash every source file (size and SHA-256 against ``file_bytes`` and ``sha256``)
        and scan the source for files the store does not hold.
    scheduler, workers, retries
        As for :func:`xraybatch.ingest`: ``"threads"``, ``"processes"``, ``"sync"``, a
        scheduler address or a ``distributed.Client``.
    progress
        Show a progress bar on stderr.
    storage_options, source_options
        fsspec options for a URL store and for the sources (default: ``storage_options``).

    Returns
    -------
    VerifyResult
        ``ok``, the ``problems`` found (kind, array, chunk, row, path, message), counts, and
        with ``sources`` the files ``changed``, ``missing`` and ``new``.

    Raises
    ------
    StoreError
        ``out`` is not an xraybatch store (reported in one line by the command).

    Examples
    --------
    >>> result = xraybatch.verify("xray.zarr", sources=True)  # doctest: +SKIP
    >>> result.ok, [p.line() for p in result.problems]  # doctest: +SKIP
    """
    t0 = time.perf_counter()
    ds = store.XrayStore(str(out), storage_options)  # raises StoreError in one line
    ref, attrs = ds.ref, ds.attrs
    options = dict(storage_options or {} if source_options is None else source_options)
    group = store.open_for_chunks(ref, mode="r")
    facts = store.source_facts(group) if sources else None
    root = listing.join(str(attrs.get("source", "")), "") if sources else ""
    with connected(scheduler) as target, opencv_threads_kept():
        tasks = _tasks(ref, group, facts, root, options)
        verdicts = compute(tasks, target, workers, progress, retries, images=len(ds),
                           label="verify")
    verdicts.sort(key=lambda v: v.index)
    problems = store_problems(ds) + [p for v in verdicts for p in v.problems]
    paths = _paths(group, facts, sorted({p.row for p in problems if p.row is not None}))
    problems = [p if p.row not in paths else Problem(p.kind, p.array, p.chunk, p.row,
                                                     paths[p.row], p.message)
                for p in problems]
    check = None
    if sources:
        new, note = _new_files(attrs, set(facts.path), options)
        check = SourceCheck(str(attrs.get("source", "")), len(facts),
                            [c for v in verdicts for c in v.changed],
                            [m for v in verdicts for m in v.missing], new, note)
    version = store.format_version(attrs)
    return VerifyResult(ref.url, version, version >= 2, ds.complete,
                        sum(v.files for v in verdicts), len(verdicts), len(ds),
                        sum(v.images for v in verdicts), problems, check,
                        time.perf_counter() - t0)


__all__ = ["KINDS", "Problem", "SourceCheck", "StoreError", "VerifyResult", "verify"]
