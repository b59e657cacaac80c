"""List the files below a root, a local folder or an fsspec URL prefix, as a stream.

:func:`walk` yields ``(relative posix path, size in bytes)`` one file at a time, so a scan of a
slow or huge file system holds no per-file objects beyond what it keeps and can report its
progress while it lists.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

#: Folders that archive tools add and that never hold data (macOS zip resource forks, etc.).
JUNK_DIRS = frozenset({"__MACOSX", ".git", ".ipynb_checkpoints", "@eaDir"})
#: Seconds between two progress lines of a long listing.
PROGRESS_EVERY = 5.0


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``) rather than a local path.

    Examples
    --------
    >>> is_url("s3://bucket/prefix/"), is_url("/data/xray"), is_url("file:///data")
    (True, False, False)
    """
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def join(root: str, rel: str) -> str:
    """``root`` and a relative posix path, for local folders and URLs alike.

    Examples
    --------
    >>> join("s3://bucket/nih/", "images/a.png"), join("/data", "a.png")
    ('s3://bucket/nih/images/a.png', '/data/a.png')
    """
    return f"{root.rstrip('/')}/{rel}" if is_url(root) else os.path.join(root, rel)


def remote_fs(url: str, storage_options: dict | None = None):
    """The fsspec filesystem and bare path of a URL, naming the extra to install if needed."""
    from ..location import StoreRef  # its backend check names the missing extra

    return StoreRef(url, dict(storage_options or {})).fs()


def is_dir(root: str, storage_options: dict | None = None) -> bool:
    """Whether ``root`` is a folder (for URLs: a prefix with at least one object below it)."""
    if not is_url(root):
        return os.path.isdir(root)
    fs, path = remote_fs(root, storage_options)
    return fs.isdir(path)


def walk(root: str, storage_options: dict | None = None, *, skip: frozenset[str] = frozenset(),
         progress: bool = False) -> Iterator[tuple[str, int]]:
    """Every file below ``root`` as ``(relative posix path, bytes)``; -1 bytes if unstatable.

    Local folders are read with ``os.scandir`` (directory symlinks are followed once, loops
    are cut; FIFOs and dangling symlinks are listed so that the decoder names them), URLs with
    the fsspec filesystem's ``walk``. Files named in ``skip`` and :data:`JUNK_DIRS` are left out.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "a").mkdir(); _ = (root / "a" / "x.png").write_bytes(b"12345")
    >>> list(walk(str(root)))
    [('a/x.png', 5)]
    """
    files = _walk_url(root, storage_options) if is_url(root) else _walk_local(root)
    count, last, reported = 0, time.monotonic(), False
    for rel, size in files:
        if rel.rsplit("/", 1)[-1] in skip:
            continue
        yield rel, size
        count += 1
        if progress and count % 1000 == 0 and time.monotonic() - last > PROGRESS_EVERY:
            last, reported = time.monotonic(), True  # only a slow listing says anything
            print(f"scanning {root}: {count:,} files so far", file=sys.stderr, flush=True)
    if reported:
        print(f"scanning {root}: {count:,} files", file=sys.stderr, flush=True)


def _walk_local(root: str) -> Iterator[tuple[str, int]]:
    seen: set[str] = set()
    stack = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:  # a directory symlink loop, or a second link to the same folder
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:  # as os.walk: an unreadable folder is left out
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows symlinks; a loop raises ELOOP
            except OSError:
                is_dir = False
            if is_dir:
                if entry.name not in JUNK_DIRS:
                    subdirs.append((f"{prefix}{entry.name}/", entry.path))
                continue
            yield f"{prefix}{entry.name}", _size(entry)
        stack.extend(reversed(subdirs))


def _size(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_size
    except OSError:
        return -1


def _walk_url(root: str, storage_options: dict | None) -> Iterator[tuple[str, int]]:
    fs, base = remote_fs(root, storage_options)
    base = base.rstrip("/")
    for folder, dirs, files in fs.walk(base, detail=True):
        for name in [d for d in dirs if d in JUNK_DIRS]:
            dirs.pop(name)  # fsspec's walk descends into what is left in ``dirs``
        rel = folder.rstrip("/")[len(base):].strip("/")
        for name in sorted(files):
            size = files[name].get("size")
            yield (f"{rel}/{name}" if rel else name), (-1 if size is None else int(size))
