"""The writer lock of a store: one writer (ingest, ``--resume``, ``--overwrite``) at a time.

- A local store: ``flock`` on ``OUT/.xraybatch.lock``, which the kernel releases when its
  holder dies, so a killed run never leaves a stale lock.
- A store behind an fsspec URL (``s3://``, ``gs://``, ``memory://``...): a *lease object*
  ``OUT/.xraybatch.lock``, created only if absent (S3's conditional ``PUT`` with
  ``If-None-Match: *``, fsspec's ``open(..., "xb")``). It holds the writer's host, pid, a
  random token and the time its lease runs out; a thread renews it while the writer runs
  and the writer deletes it at the end. A writer killed without a chance to delete it
  leaves a lock that expires by itself after the lease (:data:`LEASE_SECONDS`), and the
  next writer takes it over.

Where a file system has no exclusive create, one line on stderr says so and the store is
written without a lock, as before this lock existed. The lock file sits inside the store
(the consolidated metadata does not list it, ``xraybatch.store`` leaves it alone when it
clears a store); zarr's only remark about it, a warning when consolidating, is silenced
there.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from .location import StoreError, StoreRef

#: The lock file's (or lock object's) name inside a store.
LOCK_NAME = ".xraybatch.lock"
#: Seconds an object-store lock lives without being renewed (renewed every quarter of it).
#: A killed writer blocks the store that long; a writer cut off from the store (or whose
#: machine sleeps) for that long loses its lock. ``XRAYBATCH_LOCK_LEASE`` overrides it.
LEASE_SECONDS = 60.0


@contextmanager
def locked(ref: StoreRef, lease: float | None = None) -> Iterator[None]:
    """Hold the store's writer lock; a second writer is refused at once.

    Local stores use ``flock`` on a file inside the store, which the kernel releases when
    the holder dies, so a killed run never leaves a stale lock behind. Other stores use a
    lease object (see the module's text); ``lease`` is its length in seconds (default:
    :func:`lease_seconds`).

    Raises :class:`StoreError` (the one-line :func:`busy` message) if another writer holds
    the lock, and, on leaving, if this writer lost an object-store lock while it ran.

    Examples
    --------
    >>> ref = StoreRef("memory://doc/locked.zarr")
    >>> with locked(ref):
    ...     writer(ref) == f"pid {os.getpid()} on {socket.gethostname()}"
    True
    >>> writer(ref) is None
    True
    """
    if ref.is_local:
        with _flocked(ref):
            yield
        return
    with _leased(ref, lease_seconds() if lease is None else lease):
        yield


def writer(ref: StoreRef) -> str | None:
    """Who holds the store's writer lock ("pid N on HOST"), or None (also for an expired one)."""
    if not ref.is_local:
        found = _Lease.of(ref).read()
        holder = found and _Holder.decode(found[0])
        return holder.describe() if holder and not holder.expired() else None
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


def busy(url: str, holder: str) -> StoreError:
    """The one-line error naming the running writer."""
    return StoreError(f"{url} is being written by {holder}; wait for that ingest to finish")


def refuse_if_busy(ref: StoreRef) -> None:
    """Raise the one-line :func:`busy` error if another process holds the writer lock: said
    before anything (even the lock itself) touches the store."""
    holder = writer(ref)
    if holder:
        raise busy(ref.url, holder)


def lease_seconds() -> float:
    """The object-store lease: ``XRAYBATCH_LOCK_LEASE`` (seconds) or :data:`LEASE_SECONDS`."""
    text = os.environ.get("XRAYBATCH_LOCK_LEASE", "")
    try:
        seconds = float(text) if text else LEASE_SECONDS
    except ValueError:
        raise ValueError(f"XRAYBATCH_LOCK_LEASE must be seconds, got {text!r}") from None
    if not 0 < seconds < 1e6:
        raise ValueError(f"XRAYBATCH_LOCK_LEASE must be positive seconds, got {text!r}")
    return seconds


# --- local stores: flock --------------------------------------------------------------------


@contextmanager
def _flocked(ref: StoreRef) -> Iterator[None]:
    os.makedirs(ref.local_path, exist_ok=True)
    path = os.path.join(ref.local_path, LOCK_NAME)
    fd = _lock_file(path, ref.url)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _me().encode(), 0)
        try:
            yield
        finally:  # leave no foreign file in the store (zarr would warn about it)
            os.unlink(path)
    finally:
        os.close(fd)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


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


# --- other stores: a lease object -----------------------------------------------------------


@dataclass(frozen=True)
class _Holder:
    """The content of a lease object (JSON)."""

    host: str
    pid: int
    token: str  # tells two holders with the same host and pid apart
    expires: float  # the holder's time.time() when the lease runs out
    lease: float

    @classmethod
    def new(cls, lease: float) -> _Holder:
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time() + lease,
                   lease)

    @classmethod
    def decode(cls, data: bytes) -> _Holder | None:
        """None for content that is not a lease (never written by xraybatch)."""
        try:
            fields = json.loads(data)
            return cls(str(fields["host"]), int(fields["pid"]), str(fields["token"]),
                       float(fields["expires"]), float(fields["lease"]))
        except (ValueError, KeyError, TypeError):
            return None

    def encode(self) -> bytes:
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.expires))
        return json.dumps({**asdict(self), "expires_utc": expires}).encode()

    def renewed(self) -> _Holder:
        return replace(self, expires=time.time() + self.lease)

    def expired(self) -> bool:
        # Wall clocks of the writers' machines are compared: they must agree to well within
        # the lease (NTP does).
        return time.time() > self.expires

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


class _Lost(Exception):
    """The lease object is no longer the one this writer last saw."""


class _NoExclusiveCreate(Exception):
    """The file system cannot create a file only if it is absent."""


class _Lease:
    """The lease object of a store, through any fsspec file system.

    A version of the object is known by its bytes (each holds a fresh token and expiry).
    Without a conditional overwrite, :meth:`replace` reads, compares and writes: a second
    writer could overwrite in between (milliseconds). :class:`_S3Lease` closes that window.
    """

    def __init__(self, fs, path: str) -> None:
        self.fs, self.path = fs, path

    @staticmethod
    def of(ref: StoreRef) -> _Lease:
        fs, path = ref.fs()
        kind = _S3Lease if type(fs).__module__.split(".")[0] == "s3fs" else _Lease
        return kind(fs, f"{path.rstrip('/')}/{LOCK_NAME}")

    def create(self, data: bytes) -> object:
        """Write ``data`` only if no lock exists (FileExistsError); its version tag."""
        try:
            with self.fs.open(self.path, "xb") as f:
                f.write(data)
        except (ValueError, NotImplementedError, TypeError) as e:  # "xb" is not a mode here
            raise _NoExclusiveCreate(str(e) or type(e).__name__) from None
        except OSError as e:
            if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
                raise _NoExclusiveCreate(str(e)) from None
            raise
        return data

    def read(self) -> tuple[bytes, object] | None:
        """The lock's bytes and version tag; None if there is no lock."""
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        return data, data

    def replace(self, data: bytes, tag: object) -> object:
        """Write ``data`` if the lock is still version ``tag`` (else :class:`_Lost`)."""
        found = self.read()
        if found is None or found[1] != tag:
            raise _Lost
        self.fs.pipe_file(self.path, data)
        return data

    def delete(self, tag: object) -> None:
        """Delete the lock if it is still version ``tag``."""
        found = self.read()
        if found is not None and found[1] == tag:
            self.fs.rm_file(self.path)


class _S3Lease(_Lease):
    """S3 and compatible servers: every step is conditional (``If-None-Match: *`` to create,
    ``If-Match: ETag`` to renew, take over and delete), so two writers never both win."""

    def _call(self, method: str, **kwargs):
        bucket, key, _ = self.fs.split_path(self.path)
        try:
            return self.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)
        finally:
            if method != "head_object":  # s3fs's cached listings would miss the change
                self.fs.invalidate_cache(self.path)

    def create(self, data: bytes) -> object:
        try:
            return self._call("put_object", Body=data, IfNoneMatch="*")["ETag"]
        except OSError as e:
            code = _s3_code(e)
            if isinstance(e, FileExistsError) or code in _CONFLICT:
                raise FileExistsError(self.path) from None
            if code in ("NotImplemented", "501", "InvalidArgument", "400"):
                raise _NoExclusiveCreate(str(e)) from None
            raise

    def read(self) -> tuple[bytes, object] | None:
        try:
            # The tag first: if the object changes before the body is read, a replace with
            # this (older) tag fails, so a later lock is never taken over by mistake.
            tag = self._call("head_object")["ETag"]
            return self.fs.cat_file(self.path), tag
        except FileNotFoundError:
            return None

    def replace(self, data: bytes, tag: object) -> object:
        try:
            return self._call("put_object", Body=data, IfMatch=tag)["ETag"]
        except FileNotFoundError:
            raise _Lost from None
        except OSError as e:
            if _s3_code(e) in _CONFLICT:
                raise _Lost from None
            raise

    def delete(self, tag: object) -> None:
        try:
            self._call("delete_object", IfMatch=tag)
        except FileNotFoundError:
            pass
        except OSError as e:
            if _s3_code(e) in _CONFLICT:
                return  # another writer's lock now: not ours to delete
            super().delete(tag)  # a server without conditional deletes


#: S3 error codes of a condition that did not hold (or a conditional write in progress).
_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _s3_code(error: OSError) -> str:
    response = getattr(error.__cause__, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    return code or ("NotImplemented" if error.errno == errno.ENOSYS else "")


class _Renewal(threading.Thread):
    """Renews the lease every quarter of it until :meth:`close`; notes a lost lock."""

    def __init__(self, lease: _Lease, holder: _Holder, tag: object, url: str) -> None:
        super().__init__(name="xraybatch-lock-renewal", daemon=True)
        self.lease, self.holder, self.tag, self.url = lease, holder, tag, url
        self.stop = threading.Event()
        self.lost: str | None = None  # who took the lock over

    def run(self) -> None:
        while not self.stop.wait(self.holder.lease / 4):
            holder = self.holder.renewed()
            try:
                self.tag, self.holder = self.lease.replace(holder.encode(), self.tag), holder
            except _Lost:
                found = self.lease.read()
                other = found and _Holder.decode(found[0])
                if other and other.token == self.holder.token:  # our own write, whose reply
                    self.tag, self.holder = found[1], other  # was lost on the way back
                    continue
                self.lost = other.describe() if other else "another writer"
                _warn(f"lost the writer lock of {self.url} to {self.lost}: its lease "
                      f"({self.holder.lease:g} s) ran out before this writer renewed it")
                return
            except Exception:  # noqa: BLE001 (a network hiccup: try again at the next tick)
                continue

    def close(self) -> None:
        self.stop.set()
        self.join()
        if self.lost is None:
            try:
                self.lease.delete(self.tag)
            except Exception as e:  # noqa: BLE001 (the lease expires by itself)
                _warn(f"could not remove the writer lock of {self.url} ({e}); it expires "
                      f"in {self.holder.lease:g} s")


@contextmanager
def _leased(ref: StoreRef, seconds: float) -> Iterator[None]:
    lease = _Lease.of(ref)
    try:
        holder, tag = _acquire(lease, ref.url, seconds)
    except _NoExclusiveCreate as e:
        protocol = ref.url.split("://", 1)[0]
        _warn(f"{protocol}:// cannot create a file only if it is absent ({e}); {ref.url} is "
              "written without a writer lock: do not start two writers on it")
        yield
        return
    except OSError as e:
        # (not a busy store: no bucket, no permission, no network) said with the URL
        raise StoreError(f"cannot write the writer lock of {ref.url}: {e}") from None
    renewal = _Renewal(lease, holder, tag, ref.url)
    renewal.start()
    try:
        yield
    finally:
        renewal.close()
    if renewal.lost:  # reached only when the writer's own work succeeded
        raise StoreError(f"{ref.url} lost its writer lock to {renewal.lost} while this run "
                         "wrote it; check the store, or write it again with --overwrite")


def _acquire(lease: _Lease, url: str, seconds: float) -> tuple[_Holder, object]:
    """Create the lease object, or take over an expired one; refuse a live one."""
    me = _Holder.new(seconds)
    for _ in range(8):  # each turn follows a change made by another writer
        try:
            tag = lease.create(me.encode())
        except FileExistsError:
            pass
        else:
            _check_exclusive(lease, me, tag)
            return me, tag
        found = lease.read()
        if found is None:
            continue  # released meanwhile: create it again
        other = _Holder.decode(found[0])
        if other is not None and not other.expired():
            raise busy(url, other.describe())
        # Expired (its writer was killed or cut off), or not a lease at all: take it over by
        # compare-and-swap on the version just read. On S3 (If-Match) only one of two
        # writers racing for it wins; the other sees the winner's lock on its next turn.
        # Elsewhere the swap reads, compares and writes: two writers that both read the
        # expired lock within the same few milliseconds could both win; the loser finds
        # out at its first renewal (a quarter of the lease later) and says so.
        try:
            tag = lease.replace(me.encode(), found[1])
        except _Lost:
            continue
        if other is not None:
            when = time.strftime("%H:%M:%S UTC", time.gmtime(other.expires))
            _warn(f"took over the writer lock of {url} from {other.describe()}, whose lease "
                  f"ran out at {when} (a writer killed or cut off)")
        return me, tag
    raise busy(url, "another writer")


def _check_exclusive(lease: _Lease, me: _Holder, tag: object) -> None:
    """Some servers accept the condition and ignore it: a second exclusive create of the
    same object must fail. If it does not, there is no lock to be had here."""
    try:
        lease.create(me.encode())
    except FileExistsError:
        return
    found = lease.read()  # the same bytes again
    lease.delete(found[1] if found else tag)
    raise _NoExclusiveCreate("a second exclusive create of the lock succeeded")


def _warn(message: str) -> None:
    print(f"xraybatch: warning: {message}", file=sys.stderr, flush=True)
