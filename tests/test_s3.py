"""OUT as an S3 URL, against a local S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import zarr
from corpus import assert_same_store, free_port, open_group, wait_until

import xraybatch
from xraybatch import cli, lock, store
from xraybatch.store import StoreError, StoreRef

pytestmark = pytest.mark.slow
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

SIZE, CHUNK = 64, 30
# Fake credentials for the local fake server; botocore wants some.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def endpoint() -> str:
    """A moto S3 server with the bucket ``xrb``; killed at teardown."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **CREDENTIALS})
    try:
        wait_until(lambda: _listening(port), 60, "the moto server", 0.1)
        url = f"http://127.0.0.1:{port}"
        s3fs.S3FileSystem(**_options(url)).mkdir("xrb")
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


def xarray_installed() -> bool:
    return importlib.util.find_spec("xarray") is not None


def _options(endpoint: str) -> dict:
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}


def _env(**extra: str) -> dict:
    return {**os.environ, **CREDENTIALS, **extra}


@pytest.fixture(scope="module")
def reference(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> zarr.Group:
    out = tmp_path_factory.mktemp("reference") / "ref.zarr"
    xraybatch.ingest(synth_small, out, size=SIZE, chunk=CHUNK)
    return open_group(out)


def test_api_ingest_to_s3_matches_local(endpoint, synth_small, reference):
    url, options = "s3://xrb/api.zarr", _options(endpoint)
    result = xraybatch.ingest(synth_small, url, size=SIZE, chunk=CHUNK, storage_options=options)
    assert result.n_stored == 60 and result.out == url
    assert_same_store(StoreRef(url, options).open("r"), reference)
    ds = xraybatch.open(url, storage_options=options)
    local = xraybatch.open(str(reference.store.root))
    assert ds.complete and len(ds) == 60
    assert ds.stats() == local.stats()
    assert ds.manifest.equals(local.manifest)
    if xarray_installed():
        assert (ds.to_xarray().images.values == local.images.compute()).all()


def test_cli_endpoint_by_option_or_environment(endpoint, synth_small, reference, capsys):
    url = "s3://xrb/cli.zarr"
    ingest = [sys.executable, "-m", "xraybatch", "ingest", str(synth_small), url,
              "--size", str(SIZE), "--chunk", str(CHUNK), "--quiet"]
    run = subprocess.run([*ingest, "--storage-option", f"endpoint_url={endpoint}"],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert run.returncode == 0, run.stderr
    again = subprocess.run(ingest, capture_output=True, text=True, timeout=120,
                           env=_env(AWS_ENDPOINT_URL=endpoint))  # botocore reads it
    assert again.returncode == 2
    assert again.stderr == (f"xraybatch ingest: error: {url} already exists: pass --overwrite "
                            "to replace it, --append to add the files it does not hold or "
                            "--resume to finish an interrupted run\n")
    stats = subprocess.run([sys.executable, "-m", "xraybatch", "stats", url],
                           capture_output=True, text=True, timeout=120,
                           env=_env(AWS_ENDPOINT_URL=endpoint))
    assert stats.returncode == 0, stats.stderr
    capsys.readouterr()
    assert cli.main(["stats", str(reference.store.root)]) == 0
    assert stats.stdout == capsys.readouterr().out
    assert_same_store(StoreRef(url, _options(endpoint)).open("r"), reference)


def test_overwrite_replaces_an_s3_store(endpoint, synth_small, tmp_path):
    url, options = "s3://xrb/overwrite.zarr", _options(endpoint)
    xraybatch.ingest(synth_small, url, size=SIZE, chunk=CHUNK, storage_options=options)
    xraybatch.ingest(synth_small, url, size=32, chunk=CHUNK, storage_options=options,
                     overwrite=True)
    local = tmp_path / "local32.zarr"
    xraybatch.ingest(synth_small, local, size=32, chunk=CHUNK)
    assert_same_store(StoreRef(url, options).open("r"), open_group(local))


def test_missing_s3fs_is_a_one_line_error(synth_small, tmp_path):
    script = ("import sys; sys.modules['s3fs'] = None  # as if it were not installed\n"
              "from xraybatch.cli import main\n"
              f"print(main(['ingest', {str(synth_small)!r}, 's3://xrb/x.zarr', '--quiet']))\n"
              "print(main(['stats', 's3://xrb/x.zarr']))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=_env())
    assert run.stdout.split() == ["2", "2"], run.stderr
    hint = "s3:// stores need s3fs: pip install 'xraybatch[s3]'"
    assert run.stderr.splitlines() == [f"xraybatch ingest: error: {hint}",
                                       f"xraybatch stats: error: {hint}"]


# --- the writer lock on S3 (moto honours If-None-Match and If-Match, as S3 does) ----------

HOLDER = '''
import os, sys, time
from xraybatch import lock
from xraybatch.location import StoreRef
url, endpoint, gate = sys.argv[1:4]
ref = StoreRef(url, {"endpoint_url": endpoint, "key": "testing", "secret": "testing"})
with lock.locked(ref):
    print("held", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
'''


@pytest.fixture
def holder(endpoint, tmp_path):
    """Start processes that hold a store's writer lock until ``gate`` exists (or are killed)."""
    procs: list[subprocess.Popen] = []

    def start(url: str, gate: Path, **env: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, url, endpoint, str(gate)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(**env))
        procs.append(proc)
        assert proc.stdout.readline() == "held\n", proc.stderr.read()
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.communicate(timeout=30)


def _ingest(synth_small: Path, url: str, endpoint: str, *flags: str) -> list[str]:
    return ["ingest", str(synth_small), url, "--size", str(SIZE), "--chunk", str(CHUNK),
            "--quiet", "--storage-option", f"endpoint_url={endpoint}", "--storage-option",
            "key=testing", "--storage-option", "secret=testing", *flags]


def _lock_key(url: str, endpoint: str) -> tuple[s3fs.S3FileSystem, str]:
    return s3fs.S3FileSystem(**_options(endpoint)), f"{url.removeprefix('s3://')}/.xraybatch.lock"


def test_second_writer_on_s3_is_refused_while_the_lock_is_held(endpoint, synth_small, holder,
                                                               tmp_path, capsys):
    url = "s3://xrb/locked.zarr"
    fs, key = _lock_key(url, endpoint)
    fs.pipe_file(f"{url}/zarr.json", b'{"zarr_format": 3, "node_type": "group"}')  # to resume
    proc = holder(url, tmp_path / "go")
    capsys.readouterr()
    for flag in ("", "--resume", "--overwrite"):
        assert cli.main(_ingest(synth_small, url, endpoint, *([flag] if flag else []))) == 2
        assert capsys.readouterr().err == (
            f"xraybatch ingest: error: {url} is being written by pid {proc.pid} on "
            f"{socket.gethostname()}; wait for that ingest to finish\n"), flag
    (tmp_path / "go").touch()
    assert proc.wait(timeout=60) == 0
    fs.invalidate_cache()
    assert not fs.exists(key)  # released by its holder
    assert lock.writer(StoreRef(url, _options(endpoint))) is None


def test_lock_of_a_killed_writer_on_s3_expires(endpoint, synth_small, holder, reference,
                                               tmp_path, capsys):
    url = "s3://xrb/killed.zarr"
    proc = holder(url, tmp_path / "never", XRAYBATCH_LOCK_LEASE="1.5")
    proc.kill()  # as kill -9: no chance to delete its lock
    proc.wait(timeout=30)
    capsys.readouterr()
    assert cli.main(_ingest(synth_small, url, endpoint)) == 2
    assert f"is being written by pid {proc.pid} on" in capsys.readouterr().err
    ref = StoreRef(url, _options(endpoint))
    wait_until(lambda: lock.writer(ref) is None, 10, "the killed writer's lease to run out")
    assert cli.main(_ingest(synth_small, url, endpoint)) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"xraybatch: warning: took over the writer lock of {url} from pid "
                          f"{proc.pid} on {socket.gethostname()}, whose lease ran out at "), err
    assert err.count("\n") == 1  # and no other: moto honours the conditions, as S3 does
    assert_same_store(ref.open("r"), reference)
    fs, key = _lock_key(url, endpoint)
    assert not fs.exists(key)  # released at the end of the run


def test_s3_lock_steps_are_conditional(endpoint):
    """Renewal, takeover and deletion go through If-Match: a stale version never wins."""
    ref = StoreRef("s3://xrb/cas.zarr", _options(endpoint))
    fs, key = _lock_key(ref.url, endpoint)
    with lock.locked(ref, lease=0.4):
        first = fs.info(key, refresh=True)["ETag"]
        wait_until(lambda: fs.info(key, refresh=True)["ETag"] != first, 5, "a renewal")
        lease = lock._Lease.of(ref)
        assert isinstance(lease, lock._S3Lease)
        with pytest.raises(FileExistsError):
            lease.create(b"{}")
        with pytest.raises(lock._Lost):
            lease.replace(b"{}", first)  # the version before the renewal
        lease.delete(first)  # not the current version: left alone
        assert fs.exists(key)
        store._clear(ref)  # --overwrite clears the store, never its lock
        assert fs.exists(key)
    assert not fs.exists(key)


def test_s3_store_in_a_missing_bucket_is_one_line(endpoint, synth_small, capsys):
    url = "s3://no-such-bucket/x.zarr"
    assert cli.main(_ingest(synth_small, url, endpoint)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xraybatch ingest: error: cannot write the writer lock of {url}: ")
    assert err.count("\n") == 1, err


@pytest.mark.parametrize("start", ["absent", "expired"])
def test_of_writers_racing_on_s3_exactly_one_wins(endpoint, start):
    """Eight writers at once on a store without a lock (eight conditional creates), or with
    an expired one (all eight read it, then all eight swap it at once)."""
    ref = StoreRef(f"s3://xrb/race-{start}.zarr", _options(endpoint))
    fs, key = _lock_key(ref.url, endpoint)
    if start == "expired":
        fs.pipe_file(key, b'{"host": "gone", "pid": 1, "token": "t", "expires": 0, "lease": 1}')
    at_start, at_swap = threading.Barrier(8), threading.Barrier(8)

    class Racing(lock._S3Lease):
        swaps = 0

        def replace(self, data, tag):
            if not self.swaps:  # a takeover: wait until every writer has read the old lock
                self.swaps += 1
                at_swap.wait(timeout=30)
            return super().replace(data, tag)

    def race(_):
        lease = Racing(fs, key)
        at_start.wait(timeout=30)
        try:
            return lock._acquire(lease, ref.url, 30)[0].token
        except StoreError:
            return None

    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(race, range(8)))
    winners = [t for t in tokens if t]
    assert len(winners) == 1, tokens
    assert json.loads(fs.cat_file(key))["token"] == winners[0]


def test_split_and_restore_an_s3_store(endpoint, synth_small, capsys):
    """xraybatch split on object storage: the split, its attributes, the consolidated
    metadata and --restore (issue 19)."""
    url, options = "s3://xrb/split.zarr", _options(endpoint)
    xraybatch.ingest(synth_small, url, size=16, chunk=CHUNK, storage_options=options)
    flags = [f"--storage-option={k}={v}" for k, v in options.items()]
    scanned = xraybatch.open(url, storage_options=options).split
    assert cli.main(["split", url, "--by", "patient", "--ratios", "0.5,0.5", *flags]) == 0
    ds = xraybatch.open(url, storage_options=options)
    assert (ds.original_split == scanned).all() and (ds.split != scanned).any()
    assert ds.attrs["split_assignment"]["ratios"] == {"train": 0.5, "test": 0.5}
    assert ds.stats()["patients"]["in_several_splits"]["count"] == 0
    if xarray_installed():
        assert (ds.to_xarray().split.values == ds.split).all()
    assert cli.main(["split", url, "--restore", *flags]) == 0
    assert (xraybatch.open(url, storage_options=options).split == scanned).all()
    capsys.readouterr()
