"""The batched PyTorch path (XrayLoader), its resumable shuffle, and models' conventions.

Every batch is compared with the store's arrays read with zarr alone; the scalings with
plain numpy formulas (and torchxrayvision's own ``normalize`` when it is installed).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tables_corpus as tc
import zarr

import xraybatch

torch = pytest.importorskip(
    "torch", reason="PyTorch not installed (optional: pip install 'xraybatch[torch]')")

from xraybatch.store import XrayStore  # noqa: E402
from xraybatch.torch_dataset import (  # noqa: E402
    XRV_PATHOLOGIES,
    ChunkBatchSampler,
    XrayDataset,
    XrayLoader,
    scale_images,
    to_float,
)

SIZE = 32


@pytest.fixture(scope="module")
def store(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The 60 synthetic images at 32 x 32 in chunks of 8 (three classes)."""
    src = tmp_path_factory.mktemp("torch") / "chest_xray"
    shutil.copytree(synth_small, src)
    out = src.parent / "xray.zarr"
    xraybatch.ingest(src, out, size=SIZE, labels="kermany3", chunk=8, scheduler="sync")
    return str(out)


@pytest.fixture(scope="module")
def raw(store: str) -> dict[str, np.ndarray]:
    group = zarr.open_group(store, mode="r")
    return {name: group[name][:] for name in ("images", "labels", "valid")}


def _epochs(loader, epochs: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy().copy(), y.numpy().copy()) for _ in range(epochs) for x, y in loader]


def test_batches_equal_the_store_and_per_sample_reads(store, raw) -> None:
    ds = XrayDataset(store, dtype="uint8")
    loader = XrayLoader(ds, batch_size=7, window=2, seed=3)
    sampler = ChunkBatchSampler(ds, 7, window=2, seed=3)
    seen = []
    for (images, labels), batch in zip(loader, sampler.batches(0), strict=True):
        rows = ds.rows[batch]
        assert images.dtype == torch.uint8 and tuple(images.shape) == (len(rows), 1, SIZE, SIZE)
        np.testing.assert_array_equal(images[:, 0].numpy(), raw["images"][rows])
        np.testing.assert_array_equal(labels.numpy(), raw["labels"][rows])
        per_sample = torch.stack([ds[i][0] for i in batch])
        assert torch.equal(images, per_sample)
        seen += rows.tolist()
    assert sorted(seen) == np.flatnonzero(raw["valid"]).tolist()  # each sample once
    images, labels = ds.read_batch([4, 0, 4])
    np.testing.assert_array_equal(images[:, 0].numpy(), raw["images"][ds.rows[[4, 0, 4]]])


def test_one_read_per_chunk_per_epoch(store, monkeypatch) -> None:
    """Stores read by whole chunks (object storage, whole-chunk files): each chunk once per
    epoch."""
    monkeypatch.setattr(XrayStore, "row_files", lambda self: None)
    reads: list[int] = []
    original = XrayStore.read_chunk
    monkeypatch.setattr(XrayStore, "read_chunk",
                        lambda self, i, out=None: reads.append(i) or original(self, i, out))
    ds = XrayDataset(store, dtype="uint8")
    loader = XrayLoader(ds, batch_size=5, window=3, streams=2)
    chunks = sorted(set((ds.rows // ds.chunk).tolist()))
    for epoch in range(2):
        del reads[:]
        assert sum(len(x) for x, _ in loader) == len(ds)
        assert sorted(reads) == chunks, epoch  # every chunk once per epoch, none twice


def test_one_read_per_image_per_epoch(store, monkeypatch) -> None:
    """Local sharded stores: each image read once per epoch by its offset, no chunk read."""
    from xraybatch.shards import RowFiles

    rows_read: list[int] = []
    original = RowFiles.read_into
    monkeypatch.setattr(RowFiles, "read_into", lambda self, rows, out: (
        rows_read.extend(rows.tolist()), original(self, rows, out))[1])
    monkeypatch.setattr(XrayStore, "read_chunk", None)  # never called
    ds = XrayDataset(store, dtype="uint8")
    loader = XrayLoader(ds, batch_size=5, window=3, streams=2)
    for epoch in range(2):
        del rows_read[:]
        assert sum(len(x) for x, _ in loader) == len(ds)
        assert sorted(rows_read) == ds.rows.tolist(), epoch


@pytest.mark.parametrize(("workers", "persistent"), [(1, True), (2, True), (2, False)])
def test_same_order_for_any_number_of_workers(store, workers, persistent) -> None:
    # (the first batch of an iteration that starts the workers is read in this process)
    ds = XrayDataset(store, dtype="uint8")
    main = _epochs(XrayLoader(ds, batch_size=5, window=2, seed=1, block=3), 2)
    other = _epochs(XrayLoader(ds, batch_size=5, window=2, seed=1, block=3,
                               num_workers=workers, persistent_workers=persistent,
                               timeout=60), 2)
    nb = -(-len(ds) // 5)
    assert len(main) == len(other) == 2 * nb
    for (a, la), (b, lb) in zip(main, other, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    first = np.concatenate([x.reshape(len(x), -1) for x, _ in main[:nb]])
    second = np.concatenate([x.reshape(len(x), -1) for x, _ in main[nb:]])
    assert len(first) == len(ds) and not np.array_equal(first, second)  # epochs differ
    assert sorted(map(bytes, first)) == sorted(map(bytes, second))  # same samples


@pytest.mark.parametrize("workers", [0, 2])
def test_state_round_trips_mid_epoch(store, workers) -> None:
    ds = XrayDataset(store, dtype="uint8")
    kw = dict(batch_size=4, window=2, seed=7, num_workers=workers, timeout=60 if workers else 0)
    whole = _epochs(XrayLoader(ds, **kw), 2)
    loader = XrayLoader(ds, **kw)
    head = _epochs(loader, 1)  # epoch 0
    it = iter(loader)
    head += [tuple(t.numpy().copy() for t in next(it)) for _ in range(5)]  # 5 of epoch 1
    state = loader.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 5
    resumed = XrayLoader(ds, **kw)
    resumed.load_state_dict(state)
    tail = _epochs(resumed, 1)
    assert len(head) + len(tail) == len(whole)
    for (a, la), (b, lb) in zip(head + tail, whole, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert resumed.state_dict()["epoch"] == 2
    with pytest.raises(ValueError, match="seed differ"):
        XrayLoader(ds, batch_size=4, window=2, seed=8).load_state_dict(state)


def test_sampler_deals_runs_and_blocks(store) -> None:
    ds = XrayDataset(store)
    s = ChunkBatchSampler(ds, batch_size=4, window=2, streams=2, block=2, seed=0)
    blocks = s.blocks(0)
    # 15 batches: runs of 8 and 7 batches, blocks of 1, 2, 2, 2 (+1) taken in turn.
    assert [len(b) for b in blocks] == [1, 1, 2, 2, 2, 2, 2, 2, 1]
    flat = np.concatenate(s.batches(0))
    assert sorted(flat.tolist()) == list(range(len(ds)))
    assert len(s) == 15 and len(ChunkBatchSampler(ds, 4, drop_last=True)) == len(ds) // 4
    assert np.array_equal(np.concatenate(ChunkBatchSampler(ds, 4, shuffle=False,
                                                           streams=1).batches(0)),
                          np.arange(len(ds)))


def test_scalings_match_numpy_formulas(store, raw) -> None:
    values = np.arange(256, dtype=np.uint8)
    unit = values.astype(np.float32) / np.float32(255)
    xrv = (2 * (values.astype(np.float32) / 255) - 1.0) * 1024  # torchxrayvision's normalize
    assert xrv.dtype == np.float32 and xrv.min() == -1024 and xrv.max() == 1024
    np.testing.assert_array_equal(scale_images(values), unit)
    np.testing.assert_array_equal(scale_images(values, "xrv"), xrv)
    batch = torch.from_numpy(values).reshape(4, 1, 8, 8)
    np.testing.assert_array_equal(to_float(batch).numpy().ravel(), unit)
    np.testing.assert_array_equal(to_float(batch, "xrv").numpy().ravel(), xrv)
    ds = XrayDataset(store, scale="xrv")
    image, label = ds[3]
    want = (2 * (raw["images"][ds.rows[3]].astype(np.float32) / 255) - 1.0) * 1024
    assert tuple(image.shape) == (1, SIZE, SIZE)
    np.testing.assert_array_equal(image[0].numpy(), want)
    assert label.shape == (len(XRV_PATHOLOGIES),) and ds.classes == XRV_PATHOLOGIES
    with pytest.raises(ValueError, match="to_float"):
        XrayDataset(store, dtype="uint8", scale="xrv")


def test_scaling_equals_torchxrayvision() -> None:
    xrv = pytest.importorskip(
        "torchxrayvision", reason="torchxrayvision not installed (pip install "
        "torchxrayvision): compared with the numpy formula above instead")
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(scale_images(values, "xrv"), xrv.datasets.normalize(values, 255))
    assert list(xrv.datasets.default_pathologies) == XRV_PATHOLOGIES


def test_pathologies_by_name_with_nan_where_not_stated(tmp_path) -> None:
    table = tc.chexpert(tmp_path, n=24, seed=9)
    out = tmp_path / "c.zarr"
    xraybatch.ingest(table, out, size=SIZE, chunk=8, table_preset="chexpert", scheduler="sync")
    findings = zarr.open_group(str(out), mode="r")["findings"][:]
    names = tc.CHEXPERT_FINDINGS
    ds = XrayDataset(str(out), scale="xrv", uncertain=np.nan)
    want = np.full((len(findings), len(XRV_PATHOLOGIES)), np.nan, np.float32)
    for j, p in enumerate(XRV_PATHOLOGIES):
        name = "Pleural Effusion" if p == "Effusion" else p
        if name in names:
            col = findings[:, names.index(name)]
            want[:, j] = np.where(col == 1, 1.0, np.where(col == 0, 0.0, np.nan))
    np.testing.assert_array_equal(ds.targets, want)  # NaN == NaN here
    assert np.isnan(want[:, XRV_PATHOLOGIES.index("Infiltration")]).all()
    assert (findings == -2).any() and (findings == -1).any()
    assert not np.isnan(want[:, XRV_PATHOLOGIES.index("Effusion")]).all()
    _, labels = XrayLoader(ds, batch_size=24, shuffle=False).__iter__().__next__()
    np.testing.assert_array_equal(labels.numpy(), want)


def test_single_label_pathologies_views_and_patients(tmp_path) -> None:
    pytest.importorskip("pydicom", reason="needs pydicom (test extra)")
    from xraybatch.synth_dicom import synth_dicom

    synth_dicom(tmp_path / "dcm", n=24, seed=2, scale=0.1)
    out = tmp_path / "d.zarr"
    xraybatch.ingest(tmp_path / "dcm", out, size=SIZE, chunk=8, labels="kermany3",
                     scheduler="sync")
    g = zarr.open_group(str(out), mode="r")
    labels, view = g["labels"][:], g["view_position"][:]
    patient = g["dicom_patient_id"][:].astype(object)  # the header's PatientID
    assert (patient != "").all()
    classes = list(g.attrs["classes"])
    ds = XrayDataset(str(out), pathologies=["Pneumonia", "Mass"],
                     aliases={"BACTERIA": "Pneumonia", "VIRUS": "Pneumonia"})
    sick = np.isin(labels, [classes.index("BACTERIA"), classes.index("VIRUS")])
    np.testing.assert_array_equal(ds.targets[:, 0], sick[ds.rows])
    assert np.isnan(ds.targets[:, 1]).all()
    pa = XrayDataset(str(out), views=["PA"])
    assert (pa.rows == np.flatnonzero(view == "PA")).all() and len(pa) > 0
    assert len(XrayDataset(str(out), views="lateral")) == 0
    one = XrayDataset(str(out), unique_patients=True)
    _, first = np.unique(patient, return_index=True)
    assert (one.rows == np.sort(first)).all() and len(one) < len(labels)
    with pytest.raises(ValueError, match="unknown view"):
        XrayDataset(str(out), views=["oblique"])


def test_pinned_spawned_worker_batches(store, raw) -> None:
    """pin_memory (ignored without CUDA) and a spawned worker (slots pickled, not forked)."""
    ds = XrayDataset(store, dtype="uint8", split="test")
    loader = XrayLoader(ds, batch_size=3, num_workers=1, pin_memory=True, timeout=60,
                        multiprocessing_context="spawn")
    batches = [(x, y) for x, y in loader]
    want = np.concatenate([ds.rows[b] for b in loader.batch_sampler.batches(0)])
    np.testing.assert_array_equal(torch.cat([x for x, _ in batches])[:, 0].numpy(),
                                  raw["images"][want])
    assert all(x.is_pinned() for x, _ in batches) == torch.cuda.is_available()


def test_start_method_chosen_after_the_loader(store, raw) -> None:
    """The shared slots suit the workers that start, not the start method the loader was
    made under (an anonymous mapping is shared by forking only): spawned after all."""
    ds = XrayDataset(store, dtype="uint8", split="test")
    loader = XrayLoader(ds, batch_size=3, num_workers=1, timeout=60)  # fork, the default
    loader.multiprocessing_context = "spawn"
    got = torch.cat([x for x, _ in loader])[:, 0].numpy()
    want = np.concatenate([ds.rows[b] for b in loader.batch_sampler.batches(0)])
    np.testing.assert_array_equal(got, raw["images"][want])
    assert not loader._pool.forked


def test_batches_kept_are_never_overwritten(store, raw) -> None:
    """Shared slots are recycled only once their batches are gone: an epoch kept whole
    (more blocks than slots), then an iteration left early and resumed."""
    ds = XrayDataset(store, dtype="uint8")
    loader = XrayLoader(ds, batch_size=3, block=2, num_workers=2, timeout=60)
    kept = list(loader)
    assert len(loader.batch_sampler.blocks(0)) > len(loader._pool.state)
    it = iter(loader)
    kept += [next(it) for _ in range(4)]
    kept += list(loader)  # resumes epoch 1 after its first 4 batches
    want = loader.batch_sampler.batches(0) + loader.batch_sampler.batches(1)
    assert len(kept) == len(want)
    for (images, labels), batch in zip(kept, want, strict=True):
        np.testing.assert_array_equal(images[:, 0].numpy(), raw["images"][ds.rows[batch]])
        np.testing.assert_array_equal(labels.numpy(), raw["labels"][ds.rows[batch]])
    del kept, images, it
    import gc

    gc.collect()
    assert set(loader._pool.state) == {"free"}


@pytest.mark.parametrize("workers", [0, 1])
def test_collate_equals_default_collate(store, workers) -> None:
    from torch.utils.data import DataLoader

    from xraybatch.torch_dataset import collate

    for ds in (XrayDataset(store, dtype="uint8"), XrayDataset(store, scale="xrv")):
        kw = dict(batch_size=7, num_workers=workers, timeout=60 if workers else 0)
        ours, theirs = DataLoader(ds, collate_fn=collate, **kw), DataLoader(ds, **kw)
        for (a, la), (b, lb) in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
            assert la.dtype == lb.dtype and torch.equal(torch.nan_to_num(la), torch.nan_to_num(lb))
