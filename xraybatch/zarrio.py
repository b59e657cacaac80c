"""Zarr plumbing that knows no array names: whole-chunk writes in one event-loop trip, and
consolidated metadata. :mod:`xraybatch.store` says what is written where.

zarr-python's asynchronous codec pipeline costs ~1.3 ms of CPU per array per chunk written
(tasks, futures and a thread hop for every step), more than encoding and storing a small
chunk. :func:`write_chunks` encodes each whole chunk in the calling thread with the array's
own codecs, then stores every file of the chunk concurrently in one trip through zarr's
event loop (benchmarks/README.md, "write"). The files are the ones zarr itself writes
(``tests/test_throughput.py`` compares them byte for byte).
"""

from __future__ import annotations

import asyncio
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr import AsyncArray, AsyncGroup
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.group import ConsolidatedMetadata, GroupMetadata
from zarr.core.sync import sync
from zarr.errors import ZarrUserWarning
from zarr.storage import LocalStore, StorePath

from . import shards

_ARRAYS: dict[int, tuple[zarr.Group, dict[str, AsyncArray]]] = {}
# zarr warns about the writer lock's file whenever it lists a store's members: expected.
# A filter for that one message, not catch_warnings, which is not thread-safe (two ingests
# in two threads of one client restore each other's filters mid-listing).
warnings.filterwarnings("ignore", message=r"Object at \.xraybatch\.lock is not recognized",
                        category=ZarrUserWarning)


def arrays_of(group: zarr.Group, names: list[str]) -> dict[str, AsyncArray]:
    """The group's arrays ``names``, opened once per group (one trip, from its consolidated
    metadata); the last group asked for is kept (a task process writes one store at a time).
    """
    cached = _ARRAYS.get(id(group))
    if cached is None or cached[0] is not group or not set(names) <= set(cached[1]):
        cached = (group, dict(zip(names, sync(_getitems(group._async_group, names)),
                                  strict=True)))
        _ARRAYS.clear()
        _ARRAYS[id(group)] = cached
    return cached[1]


def write_chunks(arrays: dict[str, AsyncArray], index: int, values: dict[str, np.ndarray],
                 last: tuple[str, np.ndarray]) -> None:
    """Write ``values[name]`` as chunk ``index`` (along the first axis) of each array, then
    ``last`` once all of them are stored.

    Each value fills its whole chunk, or the start of the short last chunk (padded with the
    fill value, as zarr does), so a rewrite of the same values writes the same bytes. A
    chunk of a sharded array is a shard; arrays whose codecs cannot encode synchronously
    (sharding) go through zarr's pipeline.
    """
    if not all(_encodes_sync(arrays[name]) for name in (*values, last[0])):
        sync(_write_through_zarr(arrays, index, values, last))
        return
    encoded = [encode_chunk(arrays[name], index, v) for name, v in values.items()]
    sync(_store(encoded, encode_chunk(arrays[last[0]], index, last[1])))


def read_chunks(items: list[tuple[AsyncArray, tuple[int, ...]]]
                ) -> list[np.ndarray | None | Exception]:
    """Chunk ``coords`` of each ``(array, coords)``, decoded with the array's own codecs
    (which check their checksums: CRC-32C, Zstandard's frame checksum), the files fetched in
    one trip through zarr's event loop and decoded in the calling thread.

    Each result is the chunk's values within the array's bounds, ``None`` when its file does
    not exist (zarr reads it as the fill value), or the exception that reading or decoding
    it raised: one damaged chunk never stops the others. Arrays whose codecs cannot decode
    synchronously (sharding) are read through zarr's pipeline.
    """
    direct = [i for i, (array, _) in enumerate(items) if _encodes_sync(array)]
    local = [i for i in direct if isinstance(items[i][0].store_path.store, LocalStore)]
    remote = sorted(set(direct) - set(local))
    fetched = {**dict(zip(remote, sync(_fetch([items[i] for i in remote])), strict=True)),
               **{i: _read_file(*items[i]) for i in local}}
    out: list[np.ndarray | None | Exception] = []
    for i, (array, coords) in enumerate(items):
        try:
            if i not in fetched:
                out.append(sync(array.getitem(_region(array, coords))))
            elif isinstance(fetched[i], Exception) or fetched[i] is None:
                out.append(fetched[i])
            else:
                out.append(decode_chunk(array, coords, fetched[i]))
        except Exception as e:  # noqa: BLE001 - any codec error is the damage reported
            out.append(e)
    return out


def read_whole(array: AsyncArray) -> np.ndarray:
    """All of ``array`` (chunked along its first axis only): every chunk fetched in one trip
    through zarr's event loop and decoded in the calling thread, as :func:`read_chunks`.

    zarr's pipeline costs ~1 ms per chunk: a per-image column of 20,000 rows in chunks of
    128 took 0.15 s through ``array[:]`` (opening a training dataset), a million rows 8 s.
    """
    counts = chunk_counts(array)
    if len(counts) == 0:
        return sync(array.getitem(()))
    if any(c != 1 for c in counts[1:]) or not _encodes_sync(array):
        return sync(array.getitem(slice(None)))
    parts = read_chunks([(array, (k,) + (0,) * (len(counts) - 1)) for k in range(counts[0])])
    for part in parts:
        if isinstance(part, Exception):
            raise part
    if all(part is None for part in parts):
        return sync(array.getitem(slice(None)))  # nothing written: zarr's fill values
    dtype = next(part.dtype for part in parts if part is not None)
    out = np.empty(array.shape, dtype=dtype)
    rows = rows_per_chunk(array)
    for k, part in enumerate(parts):
        region = out[k * rows:(k + 1) * rows]
        if part is None:
            region[...] = sync(array.getitem(slice(k * rows, k * rows + len(region))))
        else:
            region[...] = part
    return out


def decode_chunk(array: AsyncArray, coords: tuple[int, ...], data: Buffer) -> np.ndarray:
    """The encoded chunk ``data`` at ``coords`` decoded as zarr's pipeline decodes it (each
    codec in reverse, with the spec it resolved on encoding), cut to the array's bounds."""
    meta = array.metadata
    spec = meta.get_chunk_spec(coords, array.config, default_buffer_prototype())
    chunk = shards.decode(meta.codecs, data, spec)
    region = _region(array, coords)
    return chunk.as_numpy_array()[tuple(slice(0, r.stop - r.start) for r in region)]


def chunk_counts(array: AsyncArray) -> tuple[int, ...]:
    """Chunks (shards, for a sharded array) along each axis."""
    meta = array.metadata
    return tuple(-(-n // c) for n, c in zip(meta.shape, meta.chunk_grid.chunk_shape,
                                            strict=True))


def _region(array: AsyncArray, coords: tuple[int, ...]) -> tuple[slice, ...]:
    meta = array.metadata
    return tuple(slice(i * c, min((i + 1) * c, n))
                 for i, c, n in zip(coords, meta.chunk_grid.chunk_shape, meta.shape, strict=True))


async def _fetch(items: list[tuple[AsyncArray, tuple[int, ...]]]) -> list[Buffer | None]:
    prototype = default_buffer_prototype()
    return await asyncio.gather(
        *((array.store_path / array.metadata.encode_chunk_key(coords)).get(prototype)
          for array, coords in items), return_exceptions=True)


def _read_file(array: AsyncArray, coords: tuple[int, ...]) -> Buffer | None | Exception:
    """A chunk file of a local store read in this thread: zarr's ``LocalStore.get`` hops to
    a worker thread per file (~0.2 ms; 38 ms for the 157 chunks of a 20,000-row column)."""
    store = array.store_path.store
    path = Path(store.root) / array.store_path.path / array.metadata.encode_chunk_key(coords)
    try:
        return default_buffer_prototype().buffer.from_bytes(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError as e:
        return e


def rows_per_chunk(array: AsyncArray) -> int:
    """Rows of one chunk file along the first axis (of a shard, for a sharded array)."""
    return array.metadata.chunk_grid.chunk_shape[0]


def encode_chunk(array: AsyncArray, index: int, values: np.ndarray
                 ) -> tuple[StorePath, Buffer]:
    """Chunk ``index`` (along the first axis) of ``array`` holding ``values``, encoded
    exactly as zarr writes it (its codecs must encode synchronously: :func:`_encodes_sync`).
    """
    meta = array.metadata
    coords = (index,) + (0,) * (len(meta.shape) - 1)
    spec = meta.get_chunk_spec(coords, array.config, default_buffer_prototype())
    native = spec.dtype.to_native_dtype()
    if values.shape == spec.shape:
        chunk = spec.prototype.nd_buffer.from_numpy_array(np.asarray(values, native))
    else:
        chunk = spec.prototype.nd_buffer.create(shape=spec.shape, dtype=native,
                                                order=spec.order, fill_value=spec.fill_value)
        chunk[:len(values)] = values
    inside = tuple(r.stop - r.start for r in _region(array, coords))
    return (array.store_path / meta.encode_chunk_key(coords),
            shards.encode(meta.codecs, chunk, spec, inside))


def whole_chunks(array: AsyncArray) -> AsyncArray:
    """The array without zarr's test for all-fill chunks before each write.

    The test costs more than compressing the chunk (benchmarks/README.md, "write"); an
    all-fill chunk written anyway reads back the same.
    """
    return array.with_config({"write_empty_chunks": True})


def consolidate(group: zarr.Group, attrs: dict[str, Any] | None = None,
                drop: tuple[str, ...] = ()) -> zarr.Group:
    """Write the consolidated metadata, with ``attrs`` set and ``drop`` removed from the
    group's attributes, in one write of its ``zarr.json``; the group that holds it.

    Every child's metadata is read from its own ``zarr.json``, as
    ``zarr.consolidate_metadata`` does; the one write makes the new attributes and shapes
    visible together (local writes of zarr are a rename, object-store PUTs are atomic).
    """
    # Consolidated metadata also lets xarray open the store with one read, without a
    # warning. zarr-python warns that it is not in the v3 spec yet (and about the lock
    # file): known.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZarrUserWarning)
        return zarr.Group(sync(_consolidate(group.store_path, attrs or {}, drop)))


async def _consolidate(store_path: StorePath, attrs: dict[str, Any], drop: tuple[str, ...]
                       ) -> AsyncGroup:
    group = await AsyncGroup.open(store_path, zarr_format=3, use_consolidated=False)
    members = {key: node.metadata async for key, node in
               group.members(max_depth=None, use_consolidated_for_children=False)}
    for key, meta in members.items():  # as zarr: an empty child group says so explicitly
        if isinstance(meta, GroupMetadata) and meta.consolidated_metadata is None:
            members[key] = dataclasses.replace(meta,
                                               consolidated_metadata=ConsolidatedMetadata({}))
    ConsolidatedMetadata._flat_to_nested(members)
    attributes = {k: v for k, v in {**group.metadata.attributes, **attrs}.items()
                  if k not in drop}
    metadata = dataclasses.replace(group.metadata, attributes=attributes,
                                   consolidated_metadata=ConsolidatedMetadata(members))
    group = dataclasses.replace(group, metadata=metadata)
    await group._save_metadata()
    return group


def _encodes_sync(array: AsyncArray) -> bool:
    return shards.syncable(array.metadata.codecs)


async def _getitems(group: AsyncGroup, names: list[str]) -> list[AsyncArray]:
    return await asyncio.gather(*(group.getitem(name) for name in names))


async def _store(encoded: list[tuple[StorePath, Buffer]], last: tuple[StorePath, Buffer]
                 ) -> None:
    await asyncio.gather(*(path.set(chunk) for path, chunk in encoded))
    await last[0].set(last[1])


async def _write_through_zarr(arrays: dict[str, AsyncArray], index: int,
                              values: dict[str, np.ndarray], last: tuple[str, np.ndarray]
                              ) -> None:
    async def put(name: str, v: np.ndarray) -> None:
        array = arrays[name]
        start = index * rows_per_chunk(array)
        await whole_chunks(array).setitem(slice(start, start + len(v)), v)

    await asyncio.gather(*(put(name, v) for name, v in values.items()))
    await put(*last)
