"""Reading a store: :class:`XrayStore`."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr import AsyncArray

from .. import qc, shards, zarrio
from ..findings import joined
from ..location import StoreError, StoreRef
from .layout import FINGERPRINT_ARRAYS, PAIR_ARRAYS, RECORD_ARRAYS, chunk_bounds, n_chunks
from .versions import done_chunks, layout_written, patient_ids_of, read_partials


class XrayStore:
    """A stored dataset, opened read-only (see :func:`xraybatch.open`).

    Examples
    --------
    >>> ds = xraybatch.open("out.zarr")  # doctest: +SKIP
    >>> ds.images            # dask array (N, size, size) uint8  # doctest: +SKIP
    >>> ds.labels, ds.classes, ds.manifest, ds.stats()  # doctest: +SKIP
    """

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.ref = StoreRef(str(url), storage_options or {})
        if not self.ref.exists():
            raise StoreError(f"no store at {url}")
        try:
            self.group = self.ref.open("r")
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise StoreError(f"{url} is not a zarr v3 store: {e}") from None
        if not layout_written(self.group.attrs) or "chunk_done" not in self.group:
            raise StoreError(f"{url} is not an xraybatch store (or its creation was interrupted)")
        self.attrs: dict[str, Any] = dict(self.group.attrs)

    def __repr__(self) -> str:
        state = "complete" if self.complete else "INCOMPLETE"
        return (f"<XrayStore {self.ref.url}: {self.attrs['n_images']} images "
                f"{self.size}x{self.size}, classes {self.classes}, {state}>")

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete"))

    @property
    def progress(self) -> tuple[int, int]:
        """(chunks written, chunks in all)."""
        done = done_chunks(self.group)
        return int(done.sum()), len(done)

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.attrs["splits"])

    @property
    def size(self) -> int:
        return int(self.attrs["size"])

    def __len__(self) -> int:
        return int(self.attrs["n_images"])

    @property
    def images(self):
        """All images as a dask array (N, size, size) uint8, one dask chunk per chunk file
        (shard), each decoded in its task's thread (:func:`xraybatch.zarrio.read_chunks`,
        ~4x faster than zarr's pipeline on a shard of one-image inner chunks)."""
        import dask.array as da

        images = self.group["images"]
        rows = zarrio.rows_per_chunk(images._async_array)
        # The store's identity and version: a store ingested anew is another array.
        token = (f"{self.ref.url}-{self.attrs.get('created')}-{self.attrs.get('version', 0)}-"
                 f"{len(self)}")
        return da.from_array(_ChunkFiles(images), chunks=(rows, *images.shape[1:]),
                             name=f"xraybatch-images-{token}", asarray=False, fancy=False,
                             meta=np.empty((0,) * images.ndim, images.dtype))

    @property
    def hist(self):
        """Per-image histograms as a dask array (N, 256)."""
        import dask.array as da

        return da.from_zarr(self.group["hist"])

    @property
    def labels(self) -> np.ndarray:
        return self._column("labels")

    @property
    def split(self) -> np.ndarray:
        return self._column("split")

    @property
    def original_split(self) -> np.ndarray:
        """The scan's assignment (``split`` is the active one, which ``xraybatch split``
        rewrites); a store that has no ``split_original`` was never split."""
        g = self.group
        return self._column("split_original") if "split_original" in g else self.split

    @property
    def multilabel(self) -> bool:
        """Whether the store holds a findings matrix (then ``classes`` are its findings)."""
        return self.attrs.get("label_kind") == "multi"

    @property
    def findings(self) -> np.ndarray | None:
        """(N, C) int8: 1 positive, 0 negative, -1 uncertain, -2 not stated; None if single-label.

        Examples
        --------
        >>> ds.findings[:2], ds.classes  # doctest: +SKIP
        """
        return self._column("findings") if self.multilabel else None

    def class_membership(self, valid_only: bool = True) -> np.ndarray:
        """(N, C) bool: (valid) images counted under each class (every positive finding)."""
        valid = self.valid if valid_only else np.ones(len(self), bool)
        if self.multilabel:
            return (self.findings == 1) & valid[:, None]
        return (np.where(valid, self.labels, -1)[:, None]
                == np.arange(len(self.classes)))

    def multi_hot(self, uncertain: float = 0.0) -> np.ndarray:
        """(N, C) float32 targets: 1 positive, ``uncertain`` for -1, 0 otherwise.

        ``uncertain=1.0`` is CheXpert's U-Ones policy, ``0.0`` U-Zeros. A single-label store
        gives its one-hot labels.
        """
        if not self.multilabel:
            return (self.labels[:, None] == np.arange(len(self.classes))).astype(np.float32)
        values = self.findings
        return np.where(values == 1, 1.0, np.where(values == -1, uncertain, 0.0)
                        ).astype(np.float32)

    def class_names(self) -> np.ndarray:
        """Class of each sample; for multi-label stores its positive findings as ``A|B``."""
        if not self.multilabel:
            return np.asarray(self.classes, dtype=object)[self.labels]
        return joined(self.findings, self.classes)

    @property
    def valid(self) -> np.ndarray:
        return self._column("valid")

    @property
    def chunk(self) -> int:
        """Images per zarr chunk: reading any one image decompresses its whole chunk."""
        return int(self.attrs["chunk"])

    @property
    def has_fingerprints(self) -> bool:
        """Whether chunk tasks stored content fingerprints (stores from 0.2 on)."""
        return all(name in self.group for name in FINGERPRINT_ARRAYS)

    @property
    def fingerprint_version(self) -> int | None:
        if not self.has_fingerprints:
            return None
        return int(self.group["fp_hash"].attrs.get("fingerprint_version", 0))

    def fingerprint_codes(self) -> np.ndarray:
        """(N, codes) uint64 SimHash codes of every row (0 where invalid)."""
        return self._column("fp_hash")

    def fingerprint_thumbs(self, rows: np.ndarray) -> np.ndarray:
        """Equalised thumbnails of ``rows`` (sorted, unique integer indices)."""
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros((0, *FINGERPRINT_ARRAYS["fp_thumb"][0]), np.uint8)
        return self.group["fp_thumb"].get_orthogonal_selection(
            (rows, slice(None), slice(None)))

    @property
    def sha256(self) -> np.ndarray:
        return self._column("sha256")

    @property
    def paths(self) -> np.ndarray:
        """Each row's source path, relative to ``attrs["source"]``."""
        return self._column("path")

    def stored_pairs(self) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
        """Near-duplicate pairs kept by :func:`write_pairs`: (key, (P, 2) rows, (P,) scores)."""
        if not all(name in self.group for name in PAIR_ARRAYS):
            return None
        pairs = self.group["dup_pairs"]
        return dict(pairs.attrs), pairs[:], self.group["dup_score"][:]

    def array(self, name: str) -> zarr.Array:
        """One zarr array of the store by name (for readers that page through it)."""
        return self.group[name]

    def read_images(self, rows: slice | np.ndarray) -> np.ndarray:
        """Images of ``rows`` (a slice or integer indices, any order) as a numpy array.

        On a local store only those images are read (by offset); elsewhere the chunks
        holding them.

        Examples
        --------
        >>> ds.read_images(slice(0, 32)).shape   # doctest: +SKIP
        (32, 256, 256)
        >>> ds.read_images(np.array([7, 3])).shape  # doctest: +SKIP
        (2, 256, 256)
        """
        files = self.row_files()
        if files is not None:  # local, sharded: the rows' images only, by offset
            n = len(self)  # (no arange of every row: a few rows of a large store)
            index = (np.asarray(range(n)[rows], np.int64) if isinstance(rows, slice)
                     else np.asarray(rows, np.int64))
            index = np.where(index < 0, index + n, index)  # past either end: IndexError
            out = np.empty((len(index), self.size, self.size), np.uint8)
            if len(index):
                files.read_into(index, out)
            return out
        images = self.group["images"]
        if isinstance(rows, slice):
            return images[rows]
        return images.get_orthogonal_selection((np.asarray(rows), slice(None), slice(None)))

    def read_chunk(self, index: int, out: np.ndarray | None = None) -> np.ndarray:
        """The images of chunk ``index`` (rows ``index * chunk`` on), decoded into ``out``.

        ``out`` (uint8, at least ``chunk`` rows of ``size`` x ``size``) is a buffer to reuse:
        a fresh 8 MB array costs page faults on every read. The file is decoded with the
        images array's own codecs (checksums checked), in this thread
        (:func:`xraybatch.zarrio.read_chunks`).

        Examples
        --------
        >>> ds.read_chunk(1).shape   # doctest: +SKIP
        (128, 256, 256)
        """
        if not 0 <= index < n_chunks(len(self), self.chunk):
            raise IndexError(f"chunk {index} of a store of {len(self)} images in chunks of "
                             f"{self.chunk}")
        images = self._images
        (chunk,) = zarrio.read_chunks([(images, (index, 0, 0))])
        if isinstance(chunk, Exception):
            raise chunk
        stop = min((index + 1) * self.chunk, len(self))
        if chunk is None:  # no file: zarr's fill value
            chunk = np.zeros((stop - index * self.chunk, self.size, self.size), np.uint8)
        if out is None:  # a writable, contiguous array (a shard decodes to a view of its file)
            return chunk if chunk.flags.writeable and chunk.flags.c_contiguous else chunk.copy()
        view = out[:len(chunk)]
        view[...] = chunk
        return view

    def _column(self, name: str) -> np.ndarray:
        """The whole array ``name``, its chunk files read and decoded in this thread
        (:func:`xraybatch.zarrio.read_whole`: 5x faster than zarr for per-image columns)."""
        return zarrio.read_whole(self.group[name]._async_array)

    def row_files(self) -> shards.RowFiles | None:
        """A reader of single images by their file offsets, for a local store whose images
        are sharded one image per inner chunk; ``None`` otherwise (made once: it keeps the
        shard indexes it read)."""
        return self._row_files

    @cached_property
    def _row_files(self) -> shards.RowFiles | None:
        return shards.RowFiles.of(self._images)

    @cached_property
    def _images(self) -> AsyncArray:
        """The images array (opening it is a trip through zarr's event loop: once)."""
        return self.group["images"]._async_array

    def view_positions(self) -> np.ndarray:
        """Each image's DICOM ViewPosition (``PA``, ``AP``, ``LL``...; "" when unknown)."""
        if "view_position" in self.group:
            return self._column("view_position")
        return np.full(len(self), "", object)

    @property
    def manifest(self) -> pd.DataFrame:
        """One row per sample: source, label, outcome and quality-control flags."""
        g = self.group
        frame = pd.DataFrame({
            "path": self._column("path"),
            "split": np.asarray(self.splits, dtype=object)[self.split],
            "class_name": self.class_names(),
            "label": self.labels,
            "file_bytes": self._column("file_bytes"),
            **{name: self._column(name) for name in RECORD_ARRAYS if name in g},
            "patient_id": self.patient_ids(),
        })
        return qc.add_flags(frame, None, self.size, moments=self._moments())

    def _moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-image mean and std: stored, or (stores written before 0.2) from the
        histograms one chunk at a time, so that the manifest never holds them all."""
        g = self.group
        if "mean" in g and "std" in g:
            return self._column("mean"), self._column("std")
        parts = [qc.image_moments(g["hist"][a:b]) for a, b in chunk_bounds(len(self), self.chunk)]
        return (np.concatenate([m for m, _ in parts]) if parts else np.zeros(0),
                np.concatenate([s for _, s in parts]) if parts else np.zeros(0))

    def patient_ids(self, start: int = 0) -> np.ndarray:
        """Each image's patient (of rows ``start:``): the DICOM header's PatientID, else the
        scan's id, else "".

        The header is the hospital's own record; a file name is only a naming convention.
        """
        return patient_ids_of(self.group, start, len(self))

    def stats_partials(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The stored statistics partials (see :func:`read_partials`), or None."""
        return read_partials(self.group)

    @property
    def version(self) -> int:
        """The store's version: 1 after its ingest, +1 per append (0 for format 1)."""
        return int(self.attrs.get("version", 0))

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per ingest and append: action, when, source, rows, version."""
        return list(self.attrs.get("history", []))

    def stats(self) -> dict[str, Any]:
        """Exact global, per-class and per split x class statistics (see :mod:`.stats`)."""
        from .. import stats

        return stats.compute(self)

    def to_xarray(self):
        """The store as an ``xarray.Dataset`` with class and split names as coordinates."""
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("to_xarray needs xarray: pip install 'xraybatch[xarray]'") from None
        kwargs = {"storage_options": self.ref.storage_options} if not self.ref.is_local else {}
        ds = xr.open_zarr(self.ref.local_path if self.ref.is_local else self.ref.url,
                          consolidated=self.complete, zarr_format=3, **kwargs)
        # One dask chunk per shard file, decoded by zarrio (xarray would take zarr's inner
        # chunks: a task per image, each through zarr's pipeline).
        ds = ds.drop_vars("chunk_done").assign(images=ds["images"].copy(data=self.images))
        # numpy's StringDType (how zarr v3 strings arrive) breaks xarray operations that
        # promote dtypes, such as ds.where(..., drop=True): object is xarray's string type.
        ds = ds.assign({name: var.astype(object) for name, var in ds.data_vars.items()
                        if var.dtype.kind == "T"})
        return ds.assign_coords(
            class_name=("sample", self.class_names().astype(str)),
            split_name=("sample", np.asarray(self.splits)[self.split]),
        )


class _ChunkFiles:
    """An array that dask reads block by block, each block one chunk file of ``array``
    (a whole chunk along the first axis) decoded by :func:`xraybatch.zarrio.read_chunks`."""

    def __init__(self, array: zarr.Array) -> None:
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.ndim = len(array.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        rows = zarrio.rows_per_chunk(self.array._async_array)
        start, stop, step = key[0].indices(self.shape[0])
        index = start // rows
        if start >= stop or (stop - 1) // rows != index:  # empty, or not within one file
            return self.array[key]
        coords = (index,) + (0,) * (self.ndim - 1)
        (chunk,) = zarrio.read_chunks([(self.array._async_array, coords)])
        if isinstance(chunk, Exception):
            raise chunk
        if chunk is None:  # no file: zarr's fill value
            return self.array[key]
        first = index * rows
        return chunk[(slice(start - first, stop - first, step), *key[1:])]
