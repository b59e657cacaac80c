"""Sharded arrays without zarr's pipeline (xraybatch.shards) against zarr itself: the same
bytes written, the same values read, damage refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ShardingCodec, ZstdCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

from xraybatch import shards, zarrio

# The images layout: shards of 8 rows, one inner chunk per row (not a multiple of 8 rows:
# a short last shard).
IMAGES = dict(shape=(21, 6, 5), dtype="uint8", shards=(8, 6, 5), chunks=(1, 6, 5),
              compressors=Crc32cCodec(), fill_value=0)


def _data(shape: tuple[int, ...], dtype: str = "uint8", seed: int = 0) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)
    data[2] = 0  # a row equal to the fill value is written all the same
    return data


def _create(path: Path, **kw) -> zarr.Array:
    if "codecs" in kw:  # a codec chain create_array cannot spell (index first)
        return zarr.create(store=str(path), zarr_format=3, **kw)
    return zarr.create_array(str(path), **kw)


def _zarr_wrote(path: Path, data: np.ndarray, **kw) -> zarr.Array:
    array = _create(path, config={"write_empty_chunks": True}, **kw)
    array[:] = data
    return array


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("c/**/*"))
            if p.is_file()}


LAYOUTS = {
    "images": IMAGES,
    # 2-D inner chunks (Morton order differs from C order), Zstandard, index at the start.
    "zstd, index first": dict(
        shape=(10, 12), dtype="int32", fill_value=-1,
        codecs=[ShardingCodec(chunk_shape=(2, 3), codecs=[zarr.codecs.BytesCodec(),
                                                          ZstdCodec(level=1)],
                              index_location=ShardingCodecIndexLocation.start)],
        chunks=(8, 12)),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_write_chunks_writes_zarrs_bytes(tmp_path: Path, layout: str) -> None:
    kw = LAYOUTS[layout]
    data = _data(kw["shape"], kw["dtype"])
    _zarr_wrote(tmp_path / "zarr", data, **kw)
    ours = _create(tmp_path / "ours", **kw)._async_array
    assert shards.syncable(ours.metadata.codecs)
    rows = ours.metadata.chunk_grid.chunk_shape[0]
    for k in range(-(-kw["shape"][0] // rows)):  # whole shards and the short last one
        zarrio.write_chunks({"x": ours}, k, {}, ("x", data[k * rows:(k + 1) * rows]))
    assert _files(tmp_path / "ours") == _files(tmp_path / "zarr")
    assert np.array_equal(zarr.open_array(str(tmp_path / "ours"))[:], data)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_read_chunks_reads_zarrs_values(tmp_path: Path, layout: str) -> None:
    kw = LAYOUTS[layout]
    data = _data(kw["shape"], kw["dtype"], seed=1)
    array = _zarr_wrote(tmp_path / "z", data, **kw)._async_array
    rows = array.metadata.chunk_grid.chunk_shape[0]
    n = -(-kw["shape"][0] // rows)
    got = zarrio.read_chunks([(array, (k,) + (0,) * (len(kw["shape"]) - 1)) for k in range(n)])
    assert np.array_equal(np.concatenate(got), data)


def test_damaged_inner_chunk_is_an_error_not_data(tmp_path: Path) -> None:
    array = _zarr_wrote(tmp_path / "z", _data(IMAGES["shape"]), **IMAGES)._async_array
    shard = tmp_path / "z" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[40] ^= 1  # a pixel of the shard's first image
    shard.write_bytes(bytes(raw))
    first, second = zarrio.read_chunks([(array, (0, 0, 0)), (array, (1, 0, 0))])
    assert isinstance(first, np.ndarray)
    assert isinstance(second, ValueError) and "checksum" in str(second)


def test_rows_by_offset_equal_zarrs_reads(tmp_path: Path) -> None:
    data = _data(IMAGES["shape"], seed=2)
    array = _zarr_wrote(tmp_path / "z", data, **IMAGES)
    files = shards.RowFiles.of(array._async_array)
    assert files is not None
    rows = np.array([20, 3, 3, 8, 0, 16, 7, 2])  # any order, repeats, the short last shard
    out = np.full((len(rows), 6, 5), 99, np.uint8)
    files.read_into(rows, out)
    assert np.array_equal(out, array.get_orthogonal_selection((rows,)))


def test_rows_never_written_read_as_the_fill_value(tmp_path: Path) -> None:
    array = zarr.create_array(str(tmp_path / "z"), **IMAGES)  # write_empty_chunks=False
    data = _data(IMAGES["shape"], seed=3)
    array[:] = data  # zarr leaves out row 2 (all fill)
    out = np.full((2, 6, 5), 99, np.uint8)
    shards.RowFiles.of(array._async_array).read_into(np.array([2, 1]), out)
    assert np.array_equal(out, data[[2, 1]]) and not out[0].any()


def test_missing_shards_and_rows_past_the_end(tmp_path: Path) -> None:
    """A shard file that does not exist reads as the fill value, as zarr reads it; rows past
    the array's shape when the reader was made are refused (an append may have rewritten
    the last shard since)."""
    array = _zarr_wrote(tmp_path / "z", _data(IMAGES["shape"], seed=5), **IMAGES)
    (tmp_path / "z" / "c" / "1" / "0" / "0").unlink()
    files = shards.RowFiles.of(array._async_array)
    out = np.full((3, 6, 5), 99, np.uint8)
    files.read_into(np.array([9, 0, 20]), out)
    assert np.array_equal(out, array.get_orthogonal_selection((np.array([9, 0, 20]),)))
    assert not out[0].any()
    with pytest.raises(IndexError):
        files.read_into(np.array([3, 21]), out[:2])
    with pytest.raises(IndexError):
        files.read_row(21, out[0])


def test_read_chunk_is_writable_and_contiguous(synth_small: Path, tmp_path: Path) -> None:
    """XrayStore.read_chunk gives a new array, as zarr does (a full shard decodes to a view
    of its file's bytes inside xraybatch)."""
    import xraybatch

    xraybatch.ingest(synth_small, tmp_path / "x.zarr", size=16, chunk=8, scheduler="sync")
    ds = xraybatch.open(str(tmp_path / "x.zarr"))
    last = -(-len(ds) // 8) - 1
    assert len(ds) % 8  # a short last shard
    for k in (0, 1, last):
        chunk = ds.read_chunk(k)
        assert chunk.flags.writeable and chunk.flags.c_contiguous
        assert np.array_equal(chunk, zarr.open_array(str(tmp_path / "x.zarr"),
                                                     path="images")[8 * k:8 * k + 8])
    with pytest.raises(IndexError):
        ds.read_chunk(last + 1)
    images = ds.images
    assert np.array_equal(images[5:19:3].compute(), images.compute()[5:19:3])


@pytest.mark.parametrize("where", ["image", "index", "cut", "tiny"])
def test_damaged_rows_are_refused(tmp_path: Path, where: str) -> None:
    array = _zarr_wrote(tmp_path / "z", _data(IMAGES["shape"]), **IMAGES)
    shard = tmp_path / "z" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    if where == "cut":
        shard.write_bytes(bytes(raw[:30]) + bytes(raw[-(16 * 8 + 4):]))  # index intact
    elif where == "tiny":
        shard.write_bytes(bytes(raw[:30]))  # shorter than its index
    else:
        raw[{"image": 35, "index": -10}[where]] ^= 4
        shard.write_bytes(bytes(raw))
    files = shards.RowFiles.of(array._async_array)
    out = np.empty((3, 6, 5), np.uint8)
    with pytest.raises(shards.ChecksumError, match="xraybatch verify"):
        files.read_into(np.array([0, 1, 9]), out)
    files.read_into(np.array([9, 10, 11]), out)  # the other shards read


@pytest.mark.parametrize("kw", [
    dict(chunks=(8, 6, 5), compressors=Crc32cCodec()),  # plain chunks
    dict(shards=(8, 6, 5), chunks=(1, 6, 5), compressors=ZstdCodec()),  # compressed
    dict(shards=(8, 6, 5), chunks=(2, 6, 5), compressors=Crc32cCodec()),  # 2 rows per chunk
])
def test_other_layouts_are_left_to_zarr(tmp_path: Path, kw: dict) -> None:
    array = zarr.create_array(str(tmp_path / "z"), shape=(21, 6, 5), dtype="uint8", **kw)
    assert shards.RowFiles.of(array._async_array) is None


def test_object_stores_are_left_to_zarr() -> None:
    array = zarr.create_array(zarr.storage.MemoryStore(), **IMAGES)
    assert shards.RowFiles.of(array._async_array) is None


def test_benchmark_smoke(synth_small: Path, tmp_path: Path) -> None:
    """benchmarks/shards.py runs end to end on both layouts (nothing timed here)."""
    import json
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "shards.py"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(bench), str(synth_small), "--size", "32",
                           "--chunk", "8", "--rounds", "1", "--warmup", "0", "--repeat", "2",
                           "--out", str(out), "--tmp", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "shards.json").read_text())
    for job in ("ingest", "verify"):
        assert {m["n"] for m in results[job]["medians"].values()} == {results["n"]}
    assert len(results["chunk_ms"]) == 7 and len(results["rows_ms"]) == 5
    assert "| zarr get_orthogonal_selection |" in (out / "shards.md").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the stores removed


@pytest.mark.parametrize("dtype", ["bool", "float64", "str", "int8"])
def test_read_whole_equals_zarr(tmp_path: Path, dtype: str) -> None:
    """Whole columns read chunk file by chunk file in this thread (a missing file is the
    fill value), as zarr reads them; 2-D arrays chunked along their first axis too."""
    shape = (23, 3) if dtype == "int8" else (23,)
    array = zarr.create_array(str(tmp_path / "z"), shape=shape, dtype=dtype,
                              chunks=(5, *shape[1:]), compressors=ZstdCodec(checksum=True))
    values = _data(shape, "int64", seed=4)
    array[:] = values.astype(str) if dtype == "str" else values.astype(dtype)
    (tmp_path / "z" / "c" / ("2/0" if len(shape) == 2 else "2")).unlink()
    got = zarrio.read_whole(array._async_array)
    assert got.dtype == array[:].dtype and np.array_equal(got, array[:])
