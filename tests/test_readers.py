"""Readers of a store: the manifest, xarray, read_images and the PyTorch Dataset adapter.

Every reader is compared with the store's arrays read directly with zarr.
"""

from __future__ import annotations

import importlib
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch.store import StoreError, XrayStore

BROKEN = "train/PNEUMONIA/person9998_virus_1.jpeg"


@pytest.fixture(scope="module")
def store(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> XrayStore:
    """The synthetic set plus one corrupt file, at 32 x 32 in chunks of 8."""
    src = tmp_path_factory.mktemp("readers") / "chest_xray"
    shutil.copytree(synth_small, src)
    (src / BROKEN).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = src.parent / "xray.zarr"
    xraybatch.ingest(src, out, size=32, labels="kermany3", chunk=8, scheduler="sync")
    return xraybatch.open(str(out))


@pytest.fixture(scope="module")
def raw(store: XrayStore) -> dict[str, np.ndarray]:
    """The store's arrays, read with zarr alone."""
    group = zarr.open_group(store.ref.local_path, mode="r")
    return {name: group[name][:] for name in ("images", "labels", "split", "valid", "path",
                                              "status")}


def test_manifest_rows_match_the_arrays(store: XrayStore, raw: dict[str, np.ndarray]) -> None:
    m = store.manifest
    assert len(m) == len(store) == len(raw["labels"])
    assert list(m.path) == list(raw["path"])
    assert list(m.class_name) == [store.classes[i] for i in raw["labels"]]
    assert list(m.split) == [store.splits[i] for i in raw["split"]]
    assert (m.valid.to_numpy() == raw["valid"]).all()
    assert list(m.path[~m.valid]) == [BROKEN] and m.status[~m.valid].item() != "ok"
    assert {"sha256", "orig_height", "orig_width", "mean", "std", "duplicate_of",
            "qc_flags"} <= set(m.columns)
    images = raw["images"][raw["valid"]].astype(np.float64)
    np.testing.assert_allclose(m["mean"][m.valid], images.mean(axis=(1, 2)), rtol=1e-12)


def test_read_images_slices_and_any_order(store: XrayStore, raw: dict[str, np.ndarray]) -> None:
    np.testing.assert_array_equal(store.read_images(slice(5, 21)), raw["images"][5:21])
    rows = np.array([40, 3, 17, 3])
    np.testing.assert_array_equal(store.read_images(rows), raw["images"][rows])
    assert store.row_files() is not None  # read by offset (a local, sharded store)
    np.testing.assert_array_equal(store.read_images([-1, 0]), raw["images"][[-1, 0]])
    np.testing.assert_array_equal(store.read_images(slice(50, 10, -7)), raw["images"][50:10:-7])
    assert store.read_images([]).shape == (0, *raw["images"].shape[1:])
    with pytest.raises(IndexError):
        store.read_images([len(raw["images"])])


def test_to_xarray(store: XrayStore, raw: dict[str, np.ndarray]) -> None:
    pytest.importorskip("xarray")
    ds = store.to_xarray()
    assert ds.images.dims == ("sample", "y", "x")
    np.testing.assert_array_equal(ds.images.values, raw["images"])
    assert list(ds.class_name.values) == [store.classes[i] for i in raw["labels"]]
    assert list(ds.split_name.values) == [store.splits[i] for i in raw["split"]]
    train = ds.where(ds.split_name == "train", drop=True)  # strings must not break this
    in_train = raw["split"] == store.splits.index("train")
    assert list(train.path.values) == list(raw["path"][in_train])


def test_torch_adapter_names_the_extra_when_torch_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "xraybatch.torch_dataset", raising=False)
    for name in ("torch", "torch.utils", "torch.utils.data"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'xraybatch\[torch\]'"):
        importlib.import_module("xraybatch.torch_dataset")


# --- PyTorch (skipped when torch is not installed) ------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip(
        "torch", reason="PyTorch not installed (optional: pip install 'xraybatch[torch]')")


@pytest.fixture(scope="module")
def XrayDataset(torch):  # noqa: N802 - the class under test
    from xraybatch.torch_dataset import XrayDataset

    return XrayDataset


def _rows(store: XrayStore, raw: dict, split: str | None = None, valid_only: bool = True):
    keep = np.ones(len(raw["labels"]), bool)
    if split:
        keep &= raw["split"] == store.splits.index(split)
    if valid_only:
        keep &= raw["valid"]
    return np.flatnonzero(keep)


def test_dataset_samples_match_the_store(store, raw, torch, XrayDataset) -> None:
    ds = XrayDataset(store.ref.url, split="train")
    rows = _rows(store, raw, "train")
    assert len(ds) == len(rows) and (ds.rows == rows).all()
    assert ds.classes == store.classes
    for i in (0, 9, len(ds) - 1):
        image, label = ds[i]
        assert image.dtype == torch.float32 and tuple(image.shape) == (1, 32, 32)
        want = raw["images"][rows[i]].astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(image[0].numpy(), want)
        assert label == raw["labels"][rows[i]] and isinstance(label, int)


def test_dataset_uint8_all_splits_and_invalid(store, raw, torch, XrayDataset) -> None:
    ds = XrayDataset(store.ref.url, dtype="uint8", valid_only=False)
    assert len(ds) == len(raw["labels"])
    broken = int(np.flatnonzero(raw["path"] == BROKEN)[0])
    image, _ = ds[broken]
    assert image.dtype == torch.uint8 and not image.any()
    assert len(XrayDataset(store.ref.url)) == raw["valid"].sum()
    both = XrayDataset(store.ref.url, split=["val", "test"])
    assert (both.rows == np.sort(np.r_[_rows(store, raw, "val"), _rows(store, raw, "test")])).all()


def test_dataset_transform_cannot_damage_the_cache(store, raw, torch, XrayDataset) -> None:
    ds = XrayDataset(store.ref.url, dtype="uint8", transform=lambda t: t.zero_())
    assert not ds[0][0].any()
    ds.transform = None
    np.testing.assert_array_equal(ds[0][0][0].numpy(), raw["images"][ds.rows[0]])
    doubled = XrayDataset(store.ref.url, transform=lambda t: t * 2)
    np.testing.assert_array_equal(doubled[0][0].numpy(), (2 * ds[0][0].float() / 255).numpy())


def test_dataset_errors(store, tmp_path, XrayDataset) -> None:
    with pytest.raises(ValueError, match="unknown split nope: the store has train, val, test"):
        XrayDataset(store.ref.url, split="nope")
    with pytest.raises(ValueError, match="dtype"):
        XrayDataset(store.ref.url, dtype="float16")
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.ref.local_path, copy)
    zarr.open_group(str(copy), mode="r+").attrs["complete"] = False
    with pytest.raises(StoreError, match="INCOMPLETE"):
        XrayDataset(str(copy))


def test_dataset_pickles_without_open_handles(store, raw, XrayDataset) -> None:
    ds = XrayDataset(store.ref.url, split="test")
    ds[0]  # opens the store and fills the cache
    state = pickle.dumps(ds)
    assert b"zarr.core" not in state  # no zarr object: an address and index arrays only
    assert len(state) < 4 * 32 * 32  # and no cached pixels
    clone = pickle.loads(state)
    assert clone._chunks is None
    np.testing.assert_array_equal(clone[1][0].numpy(), ds[1][0].numpy())


@pytest.mark.parametrize("context", ["fork"])  # spawn: tests/test_torch.py (XrayLoader)
def test_dataloader_with_two_workers_matches_the_store(store, raw, torch, XrayDataset,
                                                       context) -> None:
    from torch.utils.data import DataLoader

    ds = XrayDataset(store.ref.url, split="train", dtype="uint8")
    ds[0]  # the parent has an open store: forked workers must open their own
    rows = _rows(store, raw, "train")
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=False, timeout=60,
                        multiprocessing_context=context)
    images, labels = zip(*loader, strict=True)
    np.testing.assert_array_equal(torch.cat(images)[:, 0].numpy(), raw["images"][rows])
    np.testing.assert_array_equal(torch.cat(labels).numpy(), raw["labels"][rows])


def test_chunk_shuffle_sampler_reads_each_chunk_once(store, raw, XrayDataset,
                                                     monkeypatch) -> None:
    from xraybatch.torch_dataset import ChunkShuffleSampler

    ds = XrayDataset(store.ref.url, split="train", cache_chunks=3)
    sampler = ChunkShuffleSampler(ds, seed=5)
    epoch1, epoch2 = list(sampler), list(sampler)
    assert sorted(epoch1) == sorted(epoch2) == list(range(len(ds))) and epoch1 != epoch2
    assert epoch1 == list(ChunkShuffleSampler(ds, seed=5))

    reads = []
    original = XrayStore.read_chunk
    monkeypatch.setattr(XrayStore, "read_chunk",
                        lambda self, i, out=None: reads.append(i) or original(self, i, out))
    monkeypatch.setattr(XrayStore, "row_files", lambda self: None)  # read by whole chunks
    ds = XrayDataset(store.ref.url, split="train", cache_chunks=3)
    for i in epoch1:
        image, label = ds[i]
        assert label == raw["labels"][ds.rows[i]]
        np.testing.assert_array_equal(image[0].numpy(), raw["images"][ds.rows[i]].astype(
            np.float32) / np.float32(255))
    chunks = set((ds.rows // store.chunk).tolist())
    assert len(reads) == len(chunks) > 3  # each chunk decompressed once, not once per sample
