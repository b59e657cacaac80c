"""OUT as an S3 URL, against a local S3-compatible server (moto) on 127.0.0.1."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zarr
from corpus import assert_same_store, free_port, open_group, wait_until

import xraybatch
from xraybatch import cli
from xraybatch.store import StoreRef

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
