"""Zarr plumbing for sharded arrays: whole shards encoded and decoded in the calling thread,
and single rows read straight from a local shard file. Knows no array names.

A sharded array (zarr v3 ``sharding_indexed``) stores each shard as one file: its inner
chunks one after the other, then an index of ``(offset, length)`` per inner chunk, each part
with its own codecs. zarr-python runs every inner chunk through its asynchronous pipeline
(~0.1 ms each: 14 ms for a shard of 128 images that a plain chunk reads in 3 ms). The
functions here apply the same codecs, in the same order, to the same bytes, without the
pipeline: :func:`encode` and :func:`decode` for any chain whose codecs (inner and index)
encode synchronously, :class:`RowFiles` for the loader, which reads one image (one inner
chunk) by its offset into the batch it fills. ``tests/test_shards.py`` compares every byte
with what zarr writes and reads.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np
from zarr import AsyncArray
from zarr.abc.codec import SupportsSyncCodec
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import MAX_UINT_64, ShardingCodecIndexLocation
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer, default_buffer_prototype
from zarr.core.indexing import morton_order_iter
from zarr.storage import LocalStore

try:  # zarr's own CRC-32C (its crc32c codec uses it): a dependency of zarr
    from google_crc32c import value as crc32c
except ImportError:  # pragma: no cover - zarr < 3.1 used the crc32c package
    from crc32c import crc32c


def syncable(codecs: Any) -> bool:
    """Whether :func:`encode` and :func:`decode` can run the chain ``codecs``."""
    return all(isinstance(c, SupportsSyncCodec)
               or (isinstance(c, ShardingCodec) and syncable(c.codecs)
                   and syncable(c.index_codecs)) for c in codecs)


def encode(codecs: Any, chunk: NDBuffer, spec: ArraySpec,
           inside: tuple[int, ...] | None = None) -> Buffer:
    """``chunk`` encoded by the chain ``codecs`` as zarr's pipeline encodes it (each codec
    sees the spec the previous one resolved).

    A sharding codec writes every inner chunk that starts within ``inside`` (the part of
    the chunk inside the array: all of it by default), as zarr does with
    ``write_empty_chunks``; zarr leaves out the inner chunks of a last shard that lie
    wholly past the array's end."""
    value: Any = chunk
    for codec in codecs:
        value = (_encode_shard(codec, value, spec, inside or spec.shape)
                 if isinstance(codec, ShardingCodec) else codec._encode_sync(value, spec))
        spec = codec.resolve_metadata(spec)
    return value


def decode(codecs: Any, data: Buffer, spec: ArraySpec) -> NDBuffer:
    """The encoded ``data`` decoded by the chain ``codecs`` (checksums checked)."""
    specs = []
    for codec in codecs:
        specs.append(spec)
        spec = codec.resolve_metadata(spec)
    value: Any = data
    for codec, codec_spec in zip(reversed(codecs), reversed(specs), strict=True):
        value = (_decode_shard(codec, value, codec_spec) if isinstance(codec, ShardingCodec)
                 else codec._decode_sync(value, codec_spec))
    return value


def _inner_region(codec: ShardingCodec, coords: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(slice(c * s, (c + 1) * s) for c, s in zip(coords, codec.chunk_shape,
                                                           strict=True))


def _index_spec(codec: ShardingCodec, per_shard: tuple[int, ...]) -> ArraySpec:
    return codec._get_index_chunk_spec(per_shard)


def _inner_codec(codec: ShardingCodec, inner: ArraySpec) -> tuple[Any, Any]:
    """(encode, decode) of one inner chunk, numpy array <-> numpy bytes: zarr's codecs, or
    for raw bytes + CRC-32C of one-byte values (the images) the same bytes without zarr's
    ~0.1 ms per call (12 ms per shard of 128 images, 3% of decoding them)."""
    if _raw_crc(codec, inner.dtype):
        return _raw_crc32c, functools.partial(_checked_raw, shape=inner.shape)
    return (lambda a: encode(codec.codecs, inner.prototype.nd_buffer.from_numpy_array(a),
                             inner).as_numpy_array(),
            lambda b: decode(codec.codecs, _bytes(b), inner).as_numpy_array())


def _raw_crc(codec: ShardingCodec, dtype: Any) -> bool:
    """Whether each inner chunk is its raw bytes (one byte per value of ``dtype``, a zarr
    data type), then a CRC-32C."""
    return (np.dtype(dtype.to_native_dtype()).itemsize == 1
            and [type(c) for c in codec.codecs] == [BytesCodec, Crc32cCodec])


def _crc_matches(data: Any, stored: Any) -> bool:
    """Whether ``data`` has the CRC-32C ``stored`` (4 bytes, little-endian)."""
    return crc32c(data) == int.from_bytes(bytes(stored), "little")


def _raw_crc32c(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size + 4, np.uint8)
    out[:-4] = values.reshape(-1)
    out[-4:] = np.frombuffer(crc32c(out[:-4]).to_bytes(4, "little"), np.uint8)
    return out


def _checked_raw(data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(data) < 4 or not _crc_matches(data[:-4], data[-4:]):
        raise ValueError("stored and computed CRC-32C checksums do not match")
    return data[:-4].reshape(shape)


def _encode_shard(codec: ShardingCodec, shard: NDBuffer, spec: ArraySpec,
                  inside: tuple[int, ...]) -> Buffer:
    per_shard = codec._get_chunks_per_shard(spec)
    values = shard.as_numpy_array()
    if _raw_crc(codec, spec.dtype) and _one_row_each(codec, per_shard):
        return _encode_rows(codec, values[:inside[0]], per_shard)
    encode_inner, _ = _inner_codec(codec, codec._get_chunk_spec(spec))
    index = np.full((*per_shard, 2), MAX_UINT_64, dtype=np.uint64)
    parts, offset = [], 0
    for coords in morton_order_iter(per_shard):  # zarr's order of the inner chunks
        if any(c * s >= n for c, s, n in zip(coords, codec.chunk_shape, inside, strict=True)):
            continue
        parts.append(encode_inner(values[_inner_region(codec, coords)]))
        index[coords] = (offset, len(parts[-1]))
        offset += len(parts[-1])
    index_spec = _index_spec(codec, per_shard)
    if codec.index_location == ShardingCodecIndexLocation.start:
        written = index[..., 0] != MAX_UINT_64
        index[written, 0] += np.uint64(codec._shard_index_size(per_shard))
    encoded = encode(codec.index_codecs,
                     index_spec.prototype.nd_buffer.from_numpy_array(index), index_spec)
    ordered = ([encoded.as_numpy_array(), *parts]
               if codec.index_location == ShardingCodecIndexLocation.start
               else [*parts, encoded.as_numpy_array()])
    return default_buffer_prototype().buffer.from_array_like(np.concatenate(ordered))


def _one_row_each(codec: ShardingCodec, per_shard: tuple[int, ...]) -> bool:
    """Inner chunks of one row (whole along the other axes), the index at the end: the
    shard is its rows one after the other, then the index."""
    return (codec.chunk_shape[0] == 1 and all(n == 1 for n in per_shard[1:])
            and codec.index_location == ShardingCodecIndexLocation.end)


def _encode_rows(codec: ShardingCodec, rows: np.ndarray, per_shard: tuple[int, ...]
                 ) -> Buffer:
    """:func:`_encode_shard` of one-row inner chunks of raw bytes + CRC-32C, written in
    place: one copy of the values (the same bytes as the general loop)."""
    n, width = len(rows), rows[0].size + 4 if len(rows) else 4
    index = np.full((*per_shard, 2), MAX_UINT_64, dtype=np.uint64)
    flat = index.reshape(-1, 2)
    flat[:n, 0], flat[:n, 1] = np.arange(n, dtype=np.uint64) * np.uint64(width), width
    spec = _index_spec(codec, per_shard)
    encoded = encode(codec.index_codecs, spec.prototype.nd_buffer.from_numpy_array(index),
                     spec).as_numpy_array()
    out = np.empty(n * width + len(encoded), np.uint8)
    body = out[:n * width].reshape(n, width)
    body[:, :-4] = rows.reshape(n, -1)
    sums = np.array([crc32c(body[k, :-4]) for k in range(n)], dtype="<u4")
    body[:, -4:] = sums.view(np.uint8).reshape(n, 4)
    out[n * width:] = encoded
    return default_buffer_prototype().buffer.from_array_like(out)


def _decode_rows(raw: np.ndarray, index: np.ndarray, spec: ArraySpec) -> np.ndarray | None:
    """:func:`_decode_shard` of one-row inner chunks of raw bytes + CRC-32C laid out as
    :func:`_encode_rows` writes them (``None`` for any other layout): one copy, no fill of
    the written rows."""
    written = index[:, 0] != MAX_UINT_64
    n, width = int(written.sum()), int(np.prod(spec.shape[1:])) + 4
    starts = np.arange(n, dtype=np.uint64) * np.uint64(width)
    if (not written[:n].all() or n * width > len(raw)
            or not np.array_equal(index[:n, 0], starts) or not (index[:n, 1] == width).all()):
        return None
    body = raw[:n * width].reshape(n, width)
    for k in range(n):
        if not _crc_matches(body[k, :-4], body[k, -4:]):
            coords = (k,) + (0,) * (len(spec.shape) - 1)
            raise ValueError(f"inner chunk {coords}: stored and computed CRC-32C checksums "
                             "do not match")
    if n == spec.shape[0]:  # a full shard: its images where they lie, without a copy
        item = body.strides[1]
        strides = (width, *np.cumprod((1, *spec.shape[:0:-1]))[-2::-1] * item)
        return np.lib.stride_tricks.as_strided(body, shape=spec.shape, strides=strides)
    values = np.empty(spec.shape, spec.dtype.to_native_dtype())
    values[:n].reshape(n, -1)[:] = body[:, :-4]
    values[n:] = spec.fill_value
    return values


def _decode_shard(codec: ShardingCodec, data: Buffer, spec: ArraySpec) -> NDBuffer:
    per_shard = codec._get_chunks_per_shard(spec)
    raw = data.as_numpy_array()
    size = codec._shard_index_size(per_shard)
    at_start = codec.index_location == ShardingCodecIndexLocation.start
    index = decode(codec.index_codecs, _bytes(raw[:size] if at_start else raw[len(raw) - size:]),
                   _index_spec(codec, per_shard)).as_numpy_array()
    if _raw_crc(codec, spec.dtype) and _one_row_each(codec, per_shard):
        rows = _decode_rows(raw, index.reshape(-1, 2), spec)
        if rows is not None:
            return spec.prototype.nd_buffer.from_numpy_array(rows)
    _, decode_inner = _inner_codec(codec, codec._get_chunk_spec(spec))
    out = spec.prototype.nd_buffer.create(shape=spec.shape,
                                          dtype=spec.dtype.to_native_dtype(),
                                          order=spec.order, fill_value=spec.fill_value)
    values = out.as_numpy_array()
    for coords in np.ndindex(*per_shard):
        start, length = (int(x) for x in index[coords])
        if start == MAX_UINT_64:  # not written: the fill value
            continue
        if start + length > len(raw):
            raise ValueError(f"inner chunk {coords} ends at byte {start + length}, after "
                             f"the {len(raw)} bytes of the shard")
        try:
            values[_inner_region(codec, coords)] = decode_inner(raw[start:start + length])
        except ValueError as e:  # name the inner chunk (one image of an images shard)
            raise ValueError(f"inner chunk {coords}: {e}") from None
    return out


def _bytes(raw: np.ndarray) -> Buffer:
    return default_buffer_prototype().buffer.from_array_like(raw)


class ChecksumError(ValueError):
    """A shard's bytes do not match their CRC-32C (damaged, or rewritten while read)."""


class RowFiles:
    """Rows of a local array sharded one row per inner chunk, each read by its offset.

    For arrays whose codecs are exactly ``sharding_indexed`` of inner chunks
    ``(1, *shape[1:])`` with ``bytes`` + ``crc32c``, and an index (at the end) with
    ``bytes`` + ``crc32c`` (what ``zarr.create_array(shards=..., chunks=(1, ...),
    compressors=Crc32cCodec())`` makes): :meth:`read_into` reads each row's bytes from its
    shard file straight into the caller's buffer (one ``preadv``, no temporary) and checks
    its CRC-32C. Shard indexes are read once and kept (16 bytes per row).

    :meth:`of` returns ``None`` for any other layout or a store that is not a local
    directory: read those through zarr.
    """

    #: Shard files kept open per reader (a per-sample loader reads one image per call).
    OPEN_FILES = 64

    def __init__(self, root: Path, array: AsyncArray) -> None:
        meta = array.metadata
        self.root, self.meta = root, meta
        self.rows = meta.chunk_grid.chunk_shape[0]
        self.row_bytes = int(np.prod(meta.shape[1:])) * np.dtype(meta.dtype.to_native_dtype()
                                                                  ).itemsize
        self.indexes: dict[int, np.ndarray] = {}
        self.fds: dict[int, int] = {}  # shard -> open file, in the order of use
        self.tail = bytearray(4)  # a row's CRC-32C
        self.lock = threading.Lock()
        weakref.finalize(self, _close_all, self.fds)

    @classmethod
    def of(cls, array: AsyncArray) -> RowFiles | None:
        """A reader of ``array``'s rows, or ``None`` when its layout or store does not suit."""
        store = array.store_path.store
        if not isinstance(store, LocalStore) or not _one_row_shards(array):
            return None
        return cls(Path(store.root) / array.store_path.path, array)

    def _file(self, shard: int) -> str:
        coords = (shard,) + (0,) * (len(self.meta.shape) - 1)
        return str(self.root / self.meta.encode_chunk_key(coords))

    def index(self, shard: int, fd: int) -> np.ndarray:
        """``(offset, length)`` of each row of ``shard`` (its file open as ``fd``)."""
        index = self.indexes.get(shard)
        if index is None:
            size = 16 * self.rows + 4
            total = os.fstat(fd).st_size
            raw = os.pread(fd, size, total - size) if total >= size else b""
            body = np.frombuffer(raw, np.uint8)[:-4]
            if len(raw) != size or not _crc_matches(body, raw[-4:]):
                raise ChecksumError(f"the index of {self._file(shard)} is damaged (CRC-32C); "
                                    "run 'xraybatch verify' on the store")
            index = self.indexes[shard] = body.view("<u8").reshape(self.rows, 2)
        return index

    def read_into(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy array rows ``rows`` (any order) into ``out[i]``, checking each checksum."""
        flat = out.reshape(len(rows), -1)
        if flat.shape[1] * flat.itemsize != self.row_bytes or not flat.flags.c_contiguous:
            raise ValueError("out must be C-contiguous rows of the array's row shape")
        if len(rows) == 1:  # one sample (map-style datasets): no grouping
            self.read_row(int(rows[0]), flat[0])
            return
        rows = np.asarray(rows, np.int64)
        self._check(rows)
        shard_of, local = np.divmod(rows, self.rows)
        with self.lock:  # open files are shared by this reader's threads
            for shard in np.unique(shard_of).tolist():
                fd = self._fd(shard)
                if fd < 0:  # no file: zarr's fill value
                    flat[shard_of == shard] = self.meta.fill_value
                    continue
                index = self.index(shard, fd)
                for i in np.flatnonzero(shard_of == shard).tolist():
                    self._read_row(fd, index[local[i]], flat[i], int(rows[i]))

    def read_row(self, row: int, dest: np.ndarray) -> None:
        """Copy array row ``row`` into ``dest`` (C-contiguous, the row's size)."""
        self._check(np.array([row]))
        shard, local = divmod(row, self.rows)
        with self.lock:
            fd = self._fd(shard)
            if fd < 0:
                dest[...] = self.meta.fill_value
                return
            self._read_row(fd, self.index(shard, fd)[local], dest.reshape(-1), row)

    def _check(self, rows: np.ndarray) -> None:
        """Rows past the array's shape when this reader was made are refused: a shard
        rewritten since (an append) may hold them, its kept index does not."""
        if len(rows) and (rows.min() < 0 or rows.max() >= self.meta.shape[0]):
            raise IndexError(f"rows {rows.min()}-{rows.max()} of an array of "
                             f"{self.meta.shape[0]} rows")

    def _fd(self, shard: int) -> int:
        """The shard's file, open (the last :attr:`OPEN_FILES` opened stay open); -1 when
        it does not exist (zarr reads the fill value)."""
        fd = self.fds.pop(shard, None)
        if fd is None:
            try:
                fd = os.open(self._file(shard), os.O_RDONLY)
            except FileNotFoundError:
                return -1
            if len(self.fds) >= self.OPEN_FILES:
                os.close(self.fds.pop(next(iter(self.fds))))
        self.fds[shard] = fd  # the most recent last
        return fd

    def _read_row(self, fd: int, entry: np.ndarray, dest: np.ndarray, row: int) -> None:
        tail = self.tail
        offset, length = int(entry[0]), int(entry[1])
        if offset == MAX_UINT_64:  # not written: zarr's fill value (0 for images)
            dest[:] = self.meta.fill_value
            return
        view = dest.view(np.uint8)
        if length != len(view) + 4:
            raise ChecksumError(f"row {row}: the index of {self._file(row // self.rows)} "
                                f"gives {length} bytes, not {len(view) + 4}; run 'xraybatch "
                                "verify' on the store")
        if os.preadv(fd, [view, tail], offset) != length:
            raise ChecksumError(f"row {row}: {self._file(row // self.rows)} is shorter than "
                                "its index says; run 'xraybatch verify' on the store")
        if not _crc_matches(view, tail):
            raise ChecksumError(f"row {row} in {self._file(row // self.rows)} is damaged "
                                "(CRC-32C); run 'xraybatch verify' on the store")


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


def _one_row_shards(array: AsyncArray) -> bool:
    """Whether ``array`` is sharded one row per inner chunk with the layout
    :class:`RowFiles` reads."""
    meta = array.metadata
    codecs = getattr(meta, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return False
    codec = codecs[0]
    per_shard = tuple(s // c for s, c in zip(meta.chunk_grid.chunk_shape, codec.chunk_shape,
                                             strict=True))
    return (tuple(codec.chunk_shape[1:]) == tuple(meta.shape[1:])
            and _raw_crc(codec, meta.dtype) and _one_row_each(codec, per_shard)
            and [type(c) for c in codec.index_codecs] == [BytesCodec, Crc32cCodec])
