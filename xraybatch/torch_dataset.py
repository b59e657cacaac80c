"""PyTorch adapter: a map-style ``Dataset`` that reads samples straight from a store.

Needs the optional ``torch`` extra (``pip install 'xraybatch[torch]'``). The module is named
``torch_dataset`` so that it never shadows the ``torch`` package.

Reads: zarr compresses whole chunks of ``chunk`` images (the store's chunk size), so reading
one image decompresses its chunk. Each dataset keeps the last ``cache_chunks`` chunks it
decompressed, so reading in store order costs one decompression per chunk. For shuffled
training, :class:`ChunkShuffleSampler` draws random batches from a few random chunks at a time,
which keeps that cache hit rate; a plain ``shuffle=True`` works too, at one chunk read per
sample.

Worker processes: the dataset pickles as a store address and index arrays only; every
process opens the zarr store itself on its first read (``num_workers > 0`` is safe with
fork, spawn or forkserver).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import Dataset, Sampler
except ImportError:
    raise ImportError("xraybatch.torch_dataset needs PyTorch: "
                      "pip install 'xraybatch[torch]'") from None

from .store import StoreError, XrayStore

DTYPES = ("float32", "uint8")


class XrayDataset(Dataset):
    """Samples ``(image, label)`` of a store, optionally one split, valid images only.

    For a multi-label store (a table with several findings per image) the label is a
    multi-hot ``float32`` tensor of length ``len(classes)``: 1 positive, ``uncertain`` for
    the uncertain (-1) findings, 0 for negative and not stated ones (for
    ``BCEWithLogitsLoss``).

    Parameters
    ----------
    out
        Store path or fsspec URL written by :func:`xraybatch.ingest`.
    split
        A split name (``"train"``), a list of them, or ``None`` for all samples.
    valid_only
        Leave out the files that could not be stored (their image is all zeros).
    dtype
        ``"float32"``: image scaled to [0, 1]; ``"uint8"``: the stored values.
    transform
        Applied to the image tensor ``(1, size, size)`` (e.g. torchvision v2 transforms).
    cache_chunks
        Decompressed chunks kept per process (each is ``chunk * size * size`` bytes).
    storage_options
        fsspec options for a remote store.
    uncertain
        Multi-label stores: the target of an uncertain finding (0.0 U-Zeros, 1.0 U-Ones).

    Attributes
    ----------
    classes : list of str
        Class names; ``label`` indexes them.
    rows : numpy.ndarray
        Store row of each sample (``dataset[i]`` is store image ``rows[i]``).
    targets : numpy.ndarray
        Label of each sample (int64), e.g. for a ``WeightedRandomSampler``; for a
        multi-label store the (n, C) float32 multi-hot targets.

    Examples
    --------
    >>> from torch.utils.data import DataLoader  # doctest: +SKIP
    >>> from xraybatch.torch_dataset import ChunkShuffleSampler, XrayDataset  # doctest: +SKIP
    >>> train = XrayDataset("xray.zarr", split="train")  # doctest: +SKIP
    >>> image, label = train[0]  # torch.float32 (1, 256, 256), int  # doctest: +SKIP
    >>> loader = DataLoader(train, batch_size=32, num_workers=2,
    ...                     sampler=ChunkShuffleSampler(train, seed=0))  # doctest: +SKIP
    """

    def __init__(self, out: str | os.PathLike, split: str | list[str] | None = None, *,
                 valid_only: bool = True, dtype: str = "float32",
                 transform: Callable[[torch.Tensor], Any] | None = None,
                 cache_chunks: int = 8, storage_options: dict | None = None,
                 uncertain: float = 0.0) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if cache_chunks < 1:
            raise ValueError(f"cache_chunks must be at least 1, got {cache_chunks}")
        store = XrayStore(str(out), storage_options)
        if not store.complete:
            raise StoreError(f"{out} is INCOMPLETE (an interrupted ingest): finish it with "
                             f"'xraybatch ingest SRC {out} --resume'")
        self.ref = store.ref
        self.classes, self.size, self.chunk = store.classes, store.size, store.chunk
        keep = np.ones(len(store), bool)
        if split is not None:
            wanted = [split] if isinstance(split, str) else list(split)
            unknown = sorted(set(wanted) - set(store.splits))
            if unknown:
                raise ValueError(f"unknown split {', '.join(unknown)}: "
                                 f"the store has {', '.join(store.splits)}")
            keep &= np.isin(store.split, [store.splits.index(s) for s in wanted])
        if valid_only:
            keep &= store.valid
        self.rows = np.flatnonzero(keep)
        self.multilabel = store.multilabel
        self.targets = (store.multi_hot(uncertain)[self.rows] if self.multilabel
                        else store.labels[self.rows].astype(np.int64))
        self.dtype, self.transform, self.cache_chunks = dtype, transform, cache_chunks
        self._reset()

    def _reset(self) -> None:
        self._store: XrayStore | None = None
        self._pid: int | None = None
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        # Open zarr handles and cached pixels stay behind: each worker opens its own.
        state = self.__dict__.copy()
        state.update(_store=None, _pid=None, _cache=OrderedDict())
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        row = int(self.rows[index])
        pixels = self._read_chunk(row // self.chunk)[row % self.chunk]
        # A copy either way: the cached chunk must survive in-place transforms. numpy, not
        # torch: torch's intra-op thread pool costs more than these 65k-pixel operations
        # (same float32 values: a correctly rounded x / 255 either way).
        pixels = np.divide(pixels, np.float32(255), dtype=np.float32) \
            if self.dtype == "float32" else pixels.copy()
        image = torch.from_numpy(pixels)[None]
        if self.transform is not None:
            image = self.transform(image)
        if self.multilabel:
            return image, torch.from_numpy(self.targets[index])
        return image, int(self.targets[index])

    def _read_chunk(self, index: int) -> np.ndarray:
        if self._pid != os.getpid():  # first read in this process (or a forked child)
            self._reset()
            self._store, self._pid = XrayStore(self.ref.url, self.ref.storage_options), os.getpid()
        chunk = self._cache.get(index)
        if chunk is None:
            chunk = self._store.read_images(slice(index * self.chunk, (index + 1) * self.chunk))
            self._cache[index] = chunk
            if len(self._cache) > self.cache_chunks:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return chunk


class ChunkShuffleSampler(Sampler[int]):
    """Random order that reads each chunk once per epoch (with the dataset's chunk cache).

    Each epoch shuffles the chunks, takes them ``window`` at a time, and shuffles the samples
    of those chunks together. A batch thus mixes samples of ``window`` random chunks
    (stores are written in split/class/path order, so mix enough chunks for mixed batches),
    and each worker decompresses each chunk at most once per epoch as long as
    ``window <= dataset.cache_chunks``.

    Parameters
    ----------
    dataset
        The :class:`XrayDataset` to sample.
    window
        Chunks mixed together (default: the dataset's ``cache_chunks``).
    seed
        Seeds the sequence of epochs: the same seed gives the same orders.

    Examples
    --------
    >>> sampler = ChunkShuffleSampler(train, seed=0)  # doctest: +SKIP
    >>> loader = DataLoader(train, batch_size=32, sampler=sampler, num_workers=2)  # doctest: +SKIP
    """

    def __init__(self, dataset: XrayDataset, window: int | None = None, seed: int = 0) -> None:
        self.window = window or dataset.cache_chunks
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        chunk_of = dataset.rows // dataset.chunk
        starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
        self.groups = np.split(np.arange(len(chunk_of)), starts[1:])  # rows are sorted
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def __iter__(self) -> Iterator[int]:
        order = self.rng.permutation(len(self.groups))
        for start in range(0, len(order), self.window):
            window = np.concatenate([self.groups[k] for k in order[start:start + self.window]])
            yield from self.rng.permutation(window).tolist()
