"""store.py: the on-disk layout, read without xraybatch, its attributes and `complete`."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch import decode, store
from xraybatch.scan import scan
from xraybatch.store import StoreError, StoreRef, XrayStore
from xraybatch.tasks import ChunkTask, run_chunk

SIZE = 32


@pytest.fixture(scope="module")
def out(synth_small: Path, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "x.zarr"
    xraybatch.ingest(synth_small, path, size=SIZE, chunk=16, labels="kermany3", workers=2)
    return path


def test_xarray_opens_store_without_xraybatch(out: Path) -> None:
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(out)
    group = zarr.open_group(str(out), mode="r")
    assert ds["images"].dims == ("sample", "y", "x")
    assert ds["hist"].dims == ("sample", "bin")
    for name in ("labels", "split", "valid", "path", "status", "orig_height"):
        assert ds[name].dims == ("sample",)
    assert dict(ds.sizes) == {"sample": 60, "y": SIZE, "x": SIZE, "bin": 256, "chunk": 4,
                              "fp_y": 64, "fp_x": 64, "fp_code": 3}  # content fingerprints
    np.testing.assert_array_equal(ds["images"].values, group["images"][:])
    assert ds["path"].values.tolist() == group["path"][:].tolist()
    assert ds.attrs["classes"] == ["NORMAL", "BACTERIA", "VIRUS"]


def test_dask_from_zarr_without_xraybatch(out: Path) -> None:
    # dask takes zarr's (inner) chunks, one image each: one task per shard file is
    # chunks=array.shards (README "The store").
    array = zarr.open_array(str(out), path="images", mode="r")
    images = da.from_zarr(array, chunks=array.shards)
    assert images.shape == (60, SIZE, SIZE) and images.dtype == np.uint8
    assert images.chunks[0] == (16, 16, 16, 12)
    assert da.from_zarr(str(out), component="images").chunks[0] == (1,) * 60
    hist = da.from_zarr(str(out), component="hist").compute()
    np.testing.assert_array_equal(
        hist, [np.bincount(i.ravel(), minlength=256) for i in images.compute()])


def test_xraystore_read_side(out: Path) -> None:
    ds = xraybatch.open(str(out))
    group = zarr.open_group(str(out), mode="r")
    assert len(ds) == 60 and ds.size == SIZE and ds.complete and ds.progress == (4, 4)
    np.testing.assert_array_equal(ds.images.compute(), group["images"][:])
    np.testing.assert_array_equal(ds.labels, group["labels"][:])
    frame = ds.manifest
    assert frame.path.tolist() == group["path"][:].tolist()
    assert frame.class_name.tolist() == [ds.classes[i] for i in group["labels"][:]]
    assert frame.split.tolist() == [ds.splits[i] for i in group["split"][:]]
    assert {"qc_flags", "duplicate_of", "mean", "std"} <= set(frame.columns)
    assert "complete" in repr(ds) and "INCOMPLETE" not in repr(ds)


def test_to_xarray_has_names(out: Path) -> None:
    pytest.importorskip("xarray")
    ds = xraybatch.open(str(out)).to_xarray()
    labels = zarr.open_group(str(out), mode="r")["labels"][:]
    assert ds["class_name"].values.tolist() == \
        [["NORMAL", "BACTERIA", "VIRUS"][i] for i in labels]
    assert "chunk_done" not in ds


def test_attributes(out: Path, synth_small: Path) -> None:
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["classes"] == ["NORMAL", "BACTERIA", "VIRUS"]
    assert attrs["splits"] == ["train", "val", "test"]
    assert (attrs["size"], attrs["chunk"], attrs["n_images"]) == (SIZE, 16, 60)
    assert (attrs["interpolation"], attrs["decode"], attrs["label_scheme"]) == \
        ("auto", "fast", "kermany3")
    assert attrs["source"] == str(synth_small.resolve())
    assert attrs["xraybatch_version"] == xraybatch.__version__
    created = dt.datetime.fromisoformat(attrs["created"])
    assert abs(dt.datetime.now(dt.UTC) - created) < dt.timedelta(hours=1)
    assert attrs["complete"] is True and attrs["summary"]["n_stored"] == 60
    labels = zarr.open_group(str(out), mode="r")["labels"].attrs
    assert labels["flag_values"] == [0, 1, 2]
    assert labels["flag_meanings"] == "NORMAL BACTERIA VIRUS"
    assert not (out / store.LOCK_NAME).exists()  # the writer lock is gone after the run


def _created(synth_small: Path, path: Path, chunk: int = 16) -> tuple[StoreRef, zarr.Group]:
    found = scan(synth_small)
    ref = StoreRef(str(path))
    group = store.create(ref, found.manifest, size=SIZE, chunk=chunk, classes=found.classes,
                         splits=found.splits, attrs={})
    return ref, group


def test_partly_written_store_reads_incomplete(synth_small: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.zarr"
    ref, _ = _created(synth_small, path)
    found = scan(synth_small)
    paths = tuple(str(synth_small / p) for p in found.manifest.path[16:32])
    task = ChunkTask(ref, 1, 16, paths, SIZE, "area", "fast", 10**8)
    run_chunk(task)
    ds = XrayStore(str(path))
    assert not ds.complete and ds.progress == (1, 4)
    assert "INCOMPLETE" in repr(ds)
    assert zarr.open_group(str(path), mode="r").attrs["complete"] is False
    assert ds.valid.tolist() == [False] * 16 + [True] * 16 + [False] * 28
    assert ds.stats()["complete"] is False


def test_failed_ingest_leaves_store_incomplete(synth_small, tmp_path, monkeypatch) -> None:
    """A task that dies (not a bad file: a crash) stops the run before `complete` is set."""
    real_process = decode.process
    calls = []

    def crash_on_third_chunk(data, *args, **kwargs):
        calls.append(1)
        if len(calls) > 40:
            raise RuntimeError("worker lost")
        return real_process(data, *args, **kwargs)

    monkeypatch.setattr(decode, "process", crash_on_third_chunk)
    path = tmp_path / "x.zarr"
    with pytest.raises(RuntimeError, match="worker lost"):
        xraybatch.ingest(synth_small, path, size=SIZE, chunk=20, scheduler="sync")
    ds = XrayStore(str(path))
    assert not ds.complete and ds.progress == (2, 3)
    assert not (path / store.LOCK_NAME).exists()


def test_existing_store_needs_overwrite(synth_small: Path, tmp_path: Path) -> None:
    path = tmp_path / "x.zarr"
    ref, _ = _created(synth_small, path)
    with pytest.raises(StoreError, match="already exists"):
        _created(synth_small, path)
    found = scan(synth_small)
    group = store.create(ref, found.manifest.head(10), size=SIZE, chunk=4,
                         classes=found.classes, splits=found.splits, attrs={}, overwrite=True)
    assert group["images"].shape == (10, SIZE, SIZE) and group["chunk_done"].shape == (3,)


def test_overwrite_refuses_a_folder_that_is_not_a_store(synth_small, tmp_path) -> None:
    path = tmp_path / "precious"
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    with pytest.raises(StoreError, match="not a zarr store"):
        xraybatch.ingest(synth_small, path, size=SIZE, overwrite=True)
    assert (path / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in path.iterdir()) == ["thesis.tex"]


@pytest.mark.parametrize("kind", ["absent", "empty folder", "other zarr"])
def test_open_refuses_non_stores(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.zarr"
    if kind == "empty folder":
        path.mkdir()
    elif kind == "other zarr":
        zarr.open_group(str(path), mode="w", zarr_format=3).create_array("a", shape=(2,),
                                                                           dtype="int8")
    with pytest.raises(StoreError):
        XrayStore(str(path))


def test_write_chunk_is_idempotent(synth_small: Path, tmp_path: Path) -> None:
    ref, _ = _created(synth_small, tmp_path / "x.zarr", chunk=30)
    found = scan(synth_small)
    paths = tuple(str(synth_small / p) for p in found.manifest.path[:30])
    task = ChunkTask(ref, 0, 0, paths, SIZE, "area", "fast", 10**8)
    run_chunk(task)
    first = zarr.open_group(str(tmp_path / "x.zarr"))["images"][:30]
    run_chunk(task)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "x.zarr"))["images"][:30], first)
    assert first.any()
