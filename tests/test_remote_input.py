"""SRC in object storage: a folder prefix and a table on a local S3 server (moto, 127.0.0.1).

Workers read the bytes themselves (the storage options travel in each chunk task), and the
store is the same as from the local copy of the files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tables_corpus as tc
from corpus import assert_same_store, open_group
from test_s3 import _options, endpoint  # noqa: F401  (the moto server fixture)

import xraybatch
from xraybatch import cli

pytestmark = pytest.mark.slow
s3fs = pytest.importorskip("s3fs")

SIZE, CHUNK = 48, 16


def _upload(local: Path, url: str, options: dict) -> None:
    fs = s3fs.S3FileSystem(**options)
    fs.put(str(local), url.removeprefix("s3://").rstrip("/"), recursive=True)


def _same_arrays(a, b) -> None:
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)  # NaN == NaN


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    return tc.nih(tmp_path_factory.mktemp("nih_remote"), n=24, seed=5)


def test_folder_prefix_matches_local_folder(endpoint, synth_small, tmp_path):  # noqa: F811
    options = _options(endpoint)
    _upload(synth_small, "s3://xrb/src/chest_xray", options)
    local = xraybatch.ingest(synth_small, tmp_path / "local.zarr", size=SIZE, chunk=CHUNK)
    remote = xraybatch.ingest("s3://xrb/src/chest_xray/", tmp_path / "remote.zarr",
                              size=SIZE, chunk=CHUNK, storage_options=options)
    assert remote.n_stored == local.n_stored == 60
    assert_same_store(open_group(remote.out), open_group(local.out))
    assert open_group(remote.out).attrs["source"] == "s3://xrb/src/chest_xray/"


def test_table_on_s3_on_a_process_cluster(endpoint, nih, tmp_path):  # noqa: F811
    """Worker processes get nothing but the task: they open the object store themselves."""
    distributed = pytest.importorskip("distributed")
    options = _options(endpoint)
    _upload(nih.parent, "s3://xrb/nih", options)
    local = xraybatch.ingest(nih.parent, tmp_path / "local.zarr", files=nih, size=SIZE,
                             chunk=CHUNK, table_preset="nih")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = xraybatch.ingest("s3://xrb/nih/Data_Entry_2017.csv", "s3://xrb/nih.zarr",
                                  size=SIZE, chunk=CHUNK, table_preset="nih",
                                  scheduler=client, storage_options=options)
    assert remote.n_stored == 24 and len(remote.failures) == 0
    got = xraybatch.open("s3://xrb/nih.zarr", storage_options=options)
    _same_arrays(got.group, open_group(local.out))
    assert got.stats() == xraybatch.open(local.out).stats()


def test_missing_object_gets_its_reason(endpoint, nih, tmp_path):  # noqa: F811
    options = _options(endpoint)
    fs = s3fs.S3FileSystem(**options)
    fs.pipe_file("xrb/gaps/t.csv", b"path,label\na.png,x\nnot-there.png,y\n")
    fs.put_file(str(next(nih.parent.glob("images_001/images/*.png"))), "xrb/gaps/a.png")
    result = xraybatch.ingest("s3://xrb/gaps/", tmp_path / "g.zarr", files="s3://xrb/gaps/t.csv",
                              columns={"label": "label"}, size=SIZE, storage_options=options)
    assert result.failures[["path", "status"]].values.tolist() == [["not-there.png", "missing"]]
    assert result.n_stored == 1


def test_reading_commands_take_storage_options(endpoint, nih, tmp_path, capsys):  # noqa: F811
    options = _options(endpoint)
    url = "s3://xrb/cli-nih.zarr"
    opts = [f"--storage-option={k}={v}" for k, v in options.items()]
    assert cli.main(["ingest", str(nih), url, "--table-preset", "nih", "--size", str(SIZE),
                     "--quiet", *opts]) == 0
    capsys.readouterr()
    assert cli.main(["stats", url, "--json", *opts]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["valid"] == 24 and "cooccurrence" in stats
    if __import__("importlib").util.find_spec("matplotlib"):
        assert cli.main(["report", url, "--out", str(tmp_path / "rep"), *opts]) == 0
        assert (tmp_path / "rep" / "index.html").exists()
    image = next(nih.parent.glob("images_002/images/*.png"))
    s3fs.S3FileSystem(**options).put_file(str(image), "xrb/one.png")
    capsys.readouterr()
    assert cli.main(["inspect", "s3://xrb/one.png", "--json", *opts]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert cli.main(["inspect", str(image), "--json"]) == 0
    assert {**json.loads(capsys.readouterr().out), "path": ""} == {**remote, "path": ""}

