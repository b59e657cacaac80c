"""The writer lock of stores behind fsspec URLs: a lease object.

The logic is tested here on fsspec's in-memory file system, whose ``open(..., "xb")`` is an
exclusive create (fast, no server); tests/test_s3.py runs it against the local S3 server
(moto honours ``If-None-Match``/``If-Match``), with real processes and a killed writer.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest
from corpus import wait_until
from fsspec import register_implementation
from fsspec.implementations.memory import MemoryFileSystem

from xraybatch import lock
from xraybatch.location import StoreError, StoreRef

ME = f"pid {os.getpid()} on {socket.gethostname()}"


def _ref(protocol: str = "memory") -> StoreRef:
    return StoreRef(f"{protocol}://lock-{uuid.uuid4().hex[:8]}/out.zarr")


def _lock_path(ref: StoreRef) -> tuple[object, str]:
    fs, path = ref.fs()
    return fs, f"{path}/{lock.LOCK_NAME}"


def _content(ref: StoreRef) -> dict:
    fs, path = _lock_path(ref)
    return json.loads(fs.cat_file(path))


def _plant(ref: StoreRef, expires_in: float, pid: int = 4242, host: str = "node07") -> None:
    """A lock as another writer (on another machine) leaves it."""
    fs, path = _lock_path(ref)
    fs.pipe_file(path, json.dumps({"host": host, "pid": pid, "token": "theirs", "lease": 60,
                                   "expires": time.time() + expires_in}).encode())


def test_lease_lock_is_exclusive_and_released() -> None:
    ref = _ref()
    fs, path = _lock_path(ref)
    with lock.locked(ref, lease=30):
        held = _content(ref)
        assert (held["host"], held["pid"]) == (socket.gethostname(), os.getpid())
        assert 29 < held["expires"] - time.time() <= 30 and held["lease"] == 30
        assert lock.writer(ref) == ME
        with pytest.raises(StoreError) as refused, lock.locked(ref):
            pass
        assert str(refused.value) == (f"{ref.url} is being written by {ME}; wait for that "
                                      "ingest to finish")  # the message of a local store
        assert _content(ref) == held  # the refused writer left the lock alone
    assert not fs.exists(path) and lock.writer(ref) is None
    with lock.locked(ref):  # released: the next writer gets it
        pass


def test_lease_is_renewed_while_the_writer_runs() -> None:
    ref = _ref()
    with lock.locked(ref, lease=0.4):
        seen = []
        for _ in range(6):  # 1.2 s: three leases, so it lives only if renewed
            seen.append(_content(ref)["expires"])
            time.sleep(0.2)
        assert seen[-1] > seen[0] + 0.6 and seen[-1] > time.time()
        with pytest.raises(StoreError, match="is being written by"), lock.locked(ref):
            pass


def test_expired_lock_is_taken_over_and_a_live_one_refused(capsys) -> None:
    ref = _ref()
    _plant(ref, expires_in=+30)
    assert lock.writer(ref) == "pid 4242 on node07"
    with pytest.raises(StoreError, match="is being written by pid 4242 on node07;"), \
            lock.locked(ref):
        pass
    _plant(ref, expires_in=-1)  # its writer was killed a minute ago
    expired_at = time.strftime("%H:%M:%S UTC", time.gmtime(_content(ref)["expires"]))
    assert lock.writer(ref) is None  # an expired lock holds nothing
    with lock.locked(ref):
        assert _content(ref)["pid"] == os.getpid() and _content(ref)["token"] != "theirs"
    assert capsys.readouterr().err == (
        f"xraybatch: warning: took over the writer lock of {ref.url} from pid 4242 on node07, "
        f"whose lease ran out at {expired_at} (a writer killed or cut off)\n")
    fs, path = _lock_path(ref)
    fs.pipe_file(path, b"<html>not a lease</html>")  # never written by xraybatch
    with lock.locked(ref):
        assert lock.writer(ref) == ME


def test_takeover_is_compare_and_swap() -> None:
    """Two writers find the same expired lock: the one that swaps second is refused."""
    ref = _ref()
    _plant(ref, expires_in=-1)

    class Racing(lock._Lease):
        raced = False

        def read(self):
            found = super().read()
            if not Racing.raced:  # another writer takes it over right after this read
                Racing.raced = True
                _plant(ref, expires_in=30, pid=777, host="rival")
            return found

    fs, path = _lock_path(ref)
    with pytest.raises(StoreError, match="is being written by pid 777 on rival;"):
        lock._acquire(Racing(fs, path), ref.url, 30)
    assert _content(ref)["pid"] == 777


def test_a_writer_that_lost_its_lock_says_so(capsys) -> None:
    ref = _ref()
    with pytest.raises(StoreError) as lost, lock.locked(ref, lease=0.2):
        _plant(ref, expires_in=30)  # as if this writer had stalled past its lease
        wait_until(lambda: "lost the writer lock" in capsys.readouterr().err, 10,
                   "the renewal to notice")
    assert str(lost.value) == (f"{ref.url} lost its writer lock to pid 4242 on node07 while "
                               "this run wrote it; check the store, or write it again with "
                               "--overwrite")
    assert _content(ref)["pid"] == 4242  # the other writer's lock is not deleted


class _IgnoresX(MemoryFileSystem):
    """A store whose 'exclusive' create overwrites (as servers that ignore the condition)."""

    protocol = "ignoresx"

    def _open(self, path, mode="rb", **kwargs):
        return super()._open(path, mode.replace("x", "w"), **kwargs)


class _NoX(MemoryFileSystem):
    protocol = "nox"

    def _open(self, path, mode="rb", **kwargs):
        if "x" in mode:
            raise ValueError(f"unsupported file mode {mode!r}")
        return super()._open(path, mode, **kwargs)


@pytest.mark.parametrize(("fs", "why"), [
    (_IgnoresX, "a second exclusive create of the lock succeeded"),
    (_NoX, "unsupported file mode 'xb'"),
])
def test_no_exclusive_create_warns_in_one_line_and_goes_on(fs, why, capsys) -> None:
    register_implementation(fs.protocol, fs, clobber=True)
    ref = _ref(fs.protocol)
    ran = False
    with lock.locked(ref):
        ran = True
    assert ran and capsys.readouterr().err == (
        f"xraybatch: warning: {fs.protocol}:// cannot create a file only if it is absent "
        f"({why}); {ref.url} is written without a writer lock: do not start two writers on "
        "it\n")
    assert not _lock_path(ref)[0].exists(_lock_path(ref)[1])


def test_lease_length_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("XRAYBATCH_LOCK_LEASE", "7.5")
    ref = _ref()
    with lock.locked(ref):
        assert _content(ref)["lease"] == 7.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv("XRAYBATCH_LOCK_LEASE", bad)
        with pytest.raises(ValueError, match="XRAYBATCH_LOCK_LEASE must be"):
            lock.lease_seconds()
    monkeypatch.delenv("XRAYBATCH_LOCK_LEASE")
    assert lock.lease_seconds() == lock.LEASE_SECONDS


def test_a_renewal_whose_reply_was_lost_keeps_the_lock(monkeypatch, capsys) -> None:
    """The store took the renewal but the answer never came back: the next renewal finds its
    own token there, and goes on."""
    ref = _ref()
    replace, failed = lock._Lease.replace, []

    def flaky(self, data, tag):
        new = replace(self, data, tag)
        if not failed:
            failed.append(new)
            raise ConnectionError("reply lost")
        return new

    monkeypatch.setattr(lock._Lease, "replace", flaky)
    with lock.locked(ref, lease=0.2):
        wait_until(lambda: failed and _content(ref)["expires"] > json.loads(failed[0])[
            "expires"], 5, "a renewal after the lost reply")
    assert capsys.readouterr().err == ""
    assert lock.writer(ref) is None
