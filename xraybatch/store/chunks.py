"""Verifying a store chunk by chunk (:mod:`xraybatch.verify`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr

from .. import zarrio
from .layout import _SCAN_ARRAYS


def format_version(attrs: dict[str, Any]) -> int:
    """The store format of a group's attributes: 2 with checksums, 1 (no attribute) without.

    Examples
    --------
    >>> format_version({"format_version": 2}), format_version({})
    (2, 1)
    """
    return int(attrs.get("format_version", 1))


@dataclass
class StoredChunk:
    """One images chunk of a store as :func:`read_chunk` read it: what ``verify`` compares
    (``None`` where the array is absent or its chunk could not be read), and the outcome of
    every chunk file of the arrays chunked with it."""

    index: int
    start: int
    images: np.ndarray | None
    hist: np.ndarray | None
    valid: np.ndarray | None
    mean: np.ndarray | None
    std: np.ndarray | None
    done: bool
    files: int  # chunk files read
    errors: list[tuple[str, str]]  # (array, message): damaged or unreadable chunks
    missing: list[str]  # arrays whose chunk file must exist and does not


#: Arrays whose every chunk file exists once its chunk is done (an absent file is damage,
#: not a fill value): the pixels, the histograms, and what the scan wrote at creation.
_ALWAYS_WRITTEN = frozenset({"images", "hist", *_SCAN_ARRAYS, "findings", "finding"})
_CHUNK_FLAGS = "chunk_done"


def chunk_layout(group: zarr.Group) -> tuple[list[str], list[tuple[str, tuple[int, ...]]]]:
    """Every array of the store, from its committed metadata: the arrays read with each
    images chunk (chunked like it along ``sample``, or one entry per chunk along ``chunk``),
    and every chunk ``(array, coords)`` of the other arrays (written at creation, or added
    later by other stages)."""
    rows = zarrio.rows_per_chunk(group["images"]._async_array)
    with_images, others = [], []
    arrays = [(k, v) for k, v in group.members(max_depth=None) if isinstance(v, zarr.Array)]
    for name, array in sorted(arrays):  # (subgroups too: the statistics partials)
        meta = array.metadata
        dims = meta.dimension_names or ()
        counts = zarrio.chunk_counts(array._async_array)
        along = {"sample": rows, "chunk": 1}.get(dims[0] if dims else None)
        if meta.chunk_grid.chunk_shape[0] == along and all(c == 1 for c in counts[1:]):
            with_images.append(name)
        else:
            others += [(name, coords) for coords in np.ndindex(*counts)]
    return with_images, others


def read_chunk(group: zarr.Group, index: int, names: list[str]) -> StoredChunk:
    """Read chunk ``index`` of each array ``names`` (:func:`chunk_layout`), every file decoded
    with its codecs (checksums checked); never raises for a damaged chunk."""
    arrays = zarrio.arrays_of(group, names)
    rows = zarrio.rows_per_chunk(arrays["images"])
    coords = {name: (index,) + (0,) * (len(a.shape) - 1) for name, a in arrays.items()}
    values = dict(zip(names, zarrio.read_chunks([(arrays[n], coords[n]) for n in names]),
                      strict=True))
    errors = [(n, f"{type(v).__name__}: {v}") for n, v in values.items()
              if isinstance(v, Exception)]
    missing = [n for n, v in values.items() if v is None and n in _ALWAYS_WRITTEN]

    def get(name: str) -> np.ndarray | None:
        v = values.get(name)
        return None if v is None or isinstance(v, Exception) else v

    done = get(_CHUNK_FLAGS)
    return StoredChunk(index, index * rows, get("images"), get("hist"), get("valid"),
                       get("mean"), get("std"), bool(done is not None and done.all()),
                       sum(v is not None for v in values.values()), errors, missing)


def read_other_chunk(group: zarr.Group, name: str, coords: tuple[int, ...]
                     ) -> tuple[bool, str | None]:
    """Read one chunk of an array not chunked with the images: (file present, error)."""
    value = zarrio.read_chunks([(group[name]._async_array, coords)])[0]
    if isinstance(value, Exception):
        return True, f"{type(value).__name__}: {value}"
    if value is None and name in _ALWAYS_WRITTEN:
        return False, "chunk file missing"
    return value is not None, None


def source_facts(group: zarr.Group) -> pd.DataFrame:
    """What ingest recorded about each source file: ``path`` (relative to the ``source``
    attribute), ``file_bytes`` (-1: could not be stat'ed), ``sha256`` ("" if unread) and
    ``status``."""
    return pd.DataFrame({name: group[name][:]
                         for name in ("path", "file_bytes", "sha256", "status")})
