"""Images of a store read in one process for training: by row, or by cached chunk.

:class:`Pixels` is what :class:`~xraybatch.torch_dataset.XrayDataset` and
:class:`~xraybatch.torch_loader.XrayLoader` read through (one per process). On a local store
whose ``images`` are sharded one image per inner chunk (format 2 stores written since
0.9), each image is read by its offset straight into the batch that needs it, its CRC-32C
checked (:class:`xraybatch.shards.RowFiles`): a batch costs the bytes of its images, whatever
the shuffle. Elsewhere (object storage, stores with whole-chunk files) it reads whole chunks
through zarr and keeps the last ``capacity`` of them in buffers it reuses, which the chunk
shuffles of :mod:`xraybatch.torch_dataset` read once per epoch.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .store import XrayStore


class Pixels:
    """The images of ``store`` as this process reads them (see the module docstring).

    Examples
    --------
    >>> pixels = Pixels(XrayStore("xray.zarr"), capacity=8)  # doctest: +SKIP
    >>> out = np.empty((2, 256, 256), np.uint8)                # doctest: +SKIP
    >>> pixels.fill(np.array([7, 3]), out)                     # doctest: +SKIP
    """

    def __init__(self, store: XrayStore, capacity: int) -> None:
        self.store, self.capacity = store, capacity
        self.files = store.row_files()
        self.chunk = store.chunk
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.spare: list[np.ndarray] = []
        self.epoch: int | None = None

    @property
    def by_row(self) -> bool:
        """Whether images are read one by one (else by cached chunk)."""
        return self.files is not None

    def start_epoch(self, epoch: int) -> None:
        """Forget the chunks of another epoch (keeping their buffers): every epoch reads its
        chunks, as on a store larger than memory, whatever the store's size."""
        if epoch != self.epoch:
            self.spare.extend(chunk.base for chunk in self.cache.values())
            self.cache.clear()
            self.epoch = epoch

    def fill(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Copy the images of store rows ``rows`` into ``out`` (uint8 ``(B, size, size)``)."""
        if self.files is not None:
            self.files.read_into(rows, out)
            return
        chunk_of, local = np.divmod(rows, self.chunk)
        touched = np.unique(chunk_of).tolist()
        if len(touched) > self.capacity:  # more than the cache holds: chunk by chunk
            for i, (c, r) in enumerate(zip(chunk_of.tolist(), local.tolist(), strict=True)):
                out[i] = self.get(c)[r]
            return
        chunks = {c: self.get(c) for c in touched}
        for i, (c, r) in enumerate(zip(chunk_of.tolist(), local.tolist(), strict=True)):
            out[i] = chunks[c][r]  # one copy per image, no temporaries

    def row(self, row: int) -> np.ndarray:
        """The image of store row ``row``, a new array (the caller may change it)."""
        if self.files is not None:
            out = np.empty((self.store.size, self.store.size), np.uint8)
            self.files.read_row(row, out)
            return out
        return self.get(row // self.chunk)[row % self.chunk].copy()

    def get(self, index: int) -> np.ndarray:
        """Chunk ``index`` of the images, from the cache or read into a reused buffer."""
        chunk = self.cache.get(index)
        if chunk is not None:
            self.cache.move_to_end(index)
            return chunk
        if len(self.cache) >= self.capacity:
            self.spare.append(self.cache.popitem(last=False)[1].base)
        buffer = self.spare.pop() if self.spare else None
        if buffer is None:
            s = self.store.size
            buffer = np.empty((self.chunk, s, s), np.uint8)
        chunk = self.store.read_chunk(index, out=buffer)
        self.cache[index] = chunk
        return chunk
