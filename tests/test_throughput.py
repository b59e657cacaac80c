"""The throughput changes keep every output: bulk chunk writes, the store layout, the reused
group of chunk tasks, failures from the chunk reports, and the ``auto`` interpolation
against a serial OpenCV reference."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import zarr

import xraybatch
from xraybatch import store
from xraybatch.scan import scan
from xraybatch.store import StoreRef
from xraybatch.tasks import ChunkTask, process_chunk

SIZE = 32
CHUNK = 16
REDUCED = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
           8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def _create(src: Path, path: Path) -> tuple[StoreRef, zarr.Group, pd.DataFrame]:
    found = scan(src)
    ref = StoreRef(str(path))
    group = store.create(ref, found.manifest, size=SIZE, chunk=CHUNK, classes=found.classes,
                         splits=found.splits, attrs={})
    return ref, group, found.manifest


def _one_array_at_a_time(group: zarr.Group, index: int, start: int, images, hist,
                         records) -> None:
    """The writer before bulk writes: one zarr call per array, then chunk_done."""
    stop = start + len(images)
    for name, values in {"images": images, "hist": hist, **records}.items():
        group[name].with_config({"write_empty_chunks": True})[start:stop] = values
    group["chunk_done"][index] = True


def _files(path: Path) -> dict[str, bytes]:
    """Every chunk file of the store (metadata left out: it holds creation times)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "zarr.json"}


def test_bulk_write_equals_one_array_at_a_time(synth_small: Path, tmp_path: Path) -> None:
    bulk_ref, bulk, manifest = _create(synth_small, tmp_path / "bulk.zarr")
    _, single, _ = _create(synth_small, tmp_path / "single.zarr")
    for index, (a, b) in enumerate(store.chunk_bounds(len(manifest), CHUNK)):
        paths = tuple(str(synth_small / p) for p in manifest.path[a:b])
        task = ChunkTask(bulk_ref, index, a, paths, SIZE, "auto", "fast", 10**8)
        images, hist, records, _ = process_chunk(task)
        store.write_chunk(bulk, index, a, images, hist, records)
        _one_array_at_a_time(single, index, a, images, hist, records)
    files, every = _files(tmp_path / "bulk.zarr"), _files(tmp_path / "single.zarr")
    # The same bytes in the same files, less the record chunks that hold only the fill value
    # (JPEG sources leave the DICOM columns empty): those read back the same unwritten.
    assert {name: every[name] for name in files} == files
    skipped = {name.split("/")[0] for name in set(every) - set(files)}
    assert "window_center" in skipped and "study_uid" in skipped
    assert skipped <= set(store.RECORD_ARRAYS) - {"valid", "status", "sha256"}
    assert any(name.startswith("images/c/") for name in files)
    for name in ("images", "hist", *store.RECORD_ARRAYS, "chunk_done"):
        np.testing.assert_array_equal(bulk[name][:], single[name][:])
    assert bulk["chunk_done"][:].all() and bulk["valid"][:].all()


def test_layout_pixels_uncompressed_rest_compressed(synth_small: Path, tmp_path: Path) -> None:
    """Array names, dtypes and chunks as documented; only the pixels skip Zstd; every
    chunk carries a checksum (format 2): CRC-32C on each image, Zstd's frame checksum."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    _, group, manifest = _create(synth_small, tmp_path / "x.zarr")
    n = len(manifest)
    assert group.attrs["format_version"] == 2
    assert group["images"].compressors == (Crc32cCodec(),)
    # One shard (file) per chunk task, one inner chunk (and CRC-32C) per image.
    images = group["images"]
    assert (images.dtype, images.shards, images.chunks) == (np.uint8, (CHUNK, SIZE, SIZE),
                                                            (1, SIZE, SIZE))
    assert (group["hist"].dtype, group["hist"].chunks) == (np.int32, (CHUNK, 256))
    for name in ("hist", "labels", "split", "path", "file_bytes", *store.RECORD_ARRAYS,
                 "chunk_done"):
        assert group[name].compressors == (ZstdCodec(level=1, checksum=True),), name
        assert group[name].shape[0] == (n if name != "chunk_done" else store.n_chunks(n, CHUNK))
    assert group["chunk_done"].shape == (store.n_chunks(n, CHUNK),)
    # Chunk tasks open every array from the consolidated root metadata.
    members = zarr.open_group(str(tmp_path / "x.zarr"), mode="r").metadata.consolidated_metadata
    assert members is not None and {"images", "hist", "chunk_done"} <= set(members.metadata)
    assert group["labels"].attrs["flag_meanings"] == " ".join(scan(synth_small).classes)
    np.testing.assert_array_equal(group["path"][:], manifest.path.to_numpy(dtype=str))


def test_chunk_tasks_reuse_the_group_until_the_store_changes(synth_small: Path,
                                                             tmp_path: Path) -> None:
    path = tmp_path / "x.zarr"
    ref, _, manifest = _create(synth_small, path)
    first = store.open_for_chunks(ref)
    assert store.open_for_chunks(ref) is first
    # Recreated at the same path with fewer images: the key changes, the new layout is seen.
    found = scan(synth_small)
    store.create(ref, found.manifest.iloc[:20], size=SIZE, chunk=CHUNK, classes=found.classes,
                 splits=found.splits, attrs={}, overwrite=True)
    again = store.open_for_chunks(ref)
    assert again is not first and again["images"].shape[0] == 20


def test_failures_from_reports_equal_the_stored_ones(synth_small: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    for p in sorted(synth_small.rglob("*.jpeg"))[:10]:
        dst = src / p.relative_to(synth_small)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(p.read_bytes())
    bad = sorted(src.rglob("*.jpeg"))
    bad[1].write_bytes(b"")
    bad[4].write_bytes(b"not an image at all")
    bad[7].write_bytes(bad[7].read_bytes()[:300])
    result = xraybatch.ingest(src, tmp_path / "x.zarr", size=SIZE, chunk=4, scheduler="sync")
    assert result.chunks_run == result.chunks_total and len(result.failures) == 3
    stored = store.failures(zarr.open_group(str(tmp_path / "x.zarr"), mode="r"))
    pd.testing.assert_frame_equal(result.failures.reset_index(drop=True),
                                  stored.reset_index(drop=True), check_dtype=False)
    assert set(result.failures.status) == {"empty", "not_image", "truncated"}


def _auto_reference(path: str, size: int) -> tuple[np.ndarray, str]:
    """Serial OpenCV: the largest DCT scale keeping both sides >= size, then bilinear after
    a reduced decode that is under 4x size on its longer side, else INTER_AREA."""
    full = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    scale = next((s for s in (8, 4, 2) if min(-(-full.shape[0] // s), -(-full.shape[1] // s))
                  >= size), 1)
    image = full if scale == 1 else cv2.imread(path, REDUCED[scale])
    linear = scale > 1 and max(image.shape) < 4 * size
    method = cv2.INTER_LINEAR if linear else cv2.INTER_AREA
    return cv2.resize(image, (size, size), interpolation=method), "linear" if linear else "area"


@pytest.mark.parametrize("size", [SIZE, 128])
def test_default_ingest_is_auto_and_matches_cv2(synth_small: Path, tmp_path: Path,
                                                size: int) -> None:
    xraybatch.ingest(synth_small, tmp_path / "x.zarr", size=size, chunk=CHUNK)
    ds = xraybatch.open(str(tmp_path / "x.zarr"))
    assert ds.attrs["interpolation"] == "auto" and ds.attrs["decode"] == "fast"
    images = ds.read_images(slice(None))
    used = set()
    for row, rel in enumerate(ds.manifest.path):
        expected, method = _auto_reference(os.path.join(synth_small, rel), size)
        used.add(method)
        np.testing.assert_array_equal(images[row], expected, err_msg=rel)
    assert used == {"linear", "area"}  # both branches of auto are exercised


@pytest.mark.parametrize("checksums", [False, True])
@pytest.mark.parametrize("sharded", [False, True])
def test_zarrio_chunks_equal_zarrs_own(tmp_path: Path, sharded: bool, checksums: bool) -> None:
    """Whole-chunk writes, short last chunk included, give zarr's own files (a sharded
    array's chunk is a shard; tests/test_shards.py compares the images layout), with the store's
    checksum codecs too (CRC-32C, Zstd with its frame checksum); and zarrio reads back,
    checksums checked, what zarr reads."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from xraybatch import zarrio

    kinds = {"i": ("int32", 0, np.arange(10, dtype=np.int32)),
             "s": (str, "", np.array([f"x{i}" * i for i in range(10)], dtype=object)),
             "f": ("float64", np.nan, np.linspace(0, 1, 10)),
             "b": ("bool", False, np.arange(10) % 3 == 0),
             "u": ("uint8", 0, np.arange(10, dtype=np.uint8) * 7)}
    codecs = ({"u": Crc32cCodec()} if checksums else {})
    groups = {}
    for name in ("ours", "zarr"):
        g = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        for key, (dtype, fill, _) in kinds.items():
            compressors = codecs.get(key, ZstdCodec(level=1, checksum=True)) if checksums \
                else "auto"
            g.create_array(key, shape=(10,), dtype=dtype, chunks=(2,) if sharded else (4,),
                           fill_value=fill, shards=(4,) if sharded else None,
                           compressors=compressors)
        g.create_array("done", shape=(3,), dtype=bool, chunks=(1,), fill_value=False)
        groups[name] = g
    arrays = zarrio.arrays_of(groups["ours"], [*kinds, "done"])
    for index, (a, b) in enumerate(store.chunk_bounds(10, 4)):
        zarrio.write_chunks(arrays, index, {k: v[a:b] for k, (_, _, v) in kinds.items()},
                            last=("done", np.ones(1, bool)))
        for key, (_, _, values) in kinds.items():
            groups["zarr"][key].with_config({"write_empty_chunks": True})[a:b] = values[a:b]
        groups["zarr"]["done"][index] = True
    assert _files(tmp_path / "ours.zarr") == _files(tmp_path / "zarr.zarr")
    for key, (_, _, values) in kinds.items():
        np.testing.assert_array_equal(groups["ours"][key][:], values.astype(
            groups["ours"][key].dtype))
        array = groups["ours"][key]._async_array
        read = zarrio.read_chunks([(array, (i,)) for i in range(zarrio.chunk_counts(array)[0])])
        np.testing.assert_array_equal(np.concatenate(read), groups["zarr"][key][:])
