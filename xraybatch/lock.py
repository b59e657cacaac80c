"""The writer lock of a local store: one ingest writes a store at a time.

``flock`` on a file inside the store, which the kernel releases when its holder dies, so a
killed run never leaves a stale lock. Object stores have no locks.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from .location import StoreError, StoreRef

#: The lock file's name inside a local store.
LOCK_NAME = ".xraybatch.lock"


@contextmanager
def locked(ref: StoreRef) -> Iterator[None]:
    """Hold the store's writer lock; a second writer is refused at once.

    Local stores use ``flock`` on a file inside the store, which the kernel releases when
    the holder dies, so a killed run never leaves a stale lock behind.
    """
    if not ref.is_local:  # object stores have no locks; concurrent writers are the user's call
        yield
        return
    os.makedirs(ref.local_path, exist_ok=True)
    path = os.path.join(ref.local_path, LOCK_NAME)
    fd = _lock_file(path, ref.url)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        try:
            yield
        finally:  # leave no foreign file in the store (zarr would warn about it)
            os.unlink(path)
    finally:
        os.close(fd)


def writer(ref: StoreRef) -> str | None:
    """Who holds the writer lock of a local store ("pid N on HOST"), or None."""
    if not ref.is_local:
        return None
    try:
        fd = os.open(os.path.join(ref.local_path, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def busy(url: str, holder: str) -> StoreError:
    """The one-line error naming the running writer."""
    return StoreError(f"{url} is being written by {holder}; wait for that ingest to finish")


def _lock_file(path: str, url: str) -> int:
    """Open and flock the lock file; the descriptor of the locked file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise busy(url, holder) from None
        try:  # the holder we waited on may have unlinked the file: then lock the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
