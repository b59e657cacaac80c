"""PyTorch adapter: whole uint8 batches for training, and a map-style ``Dataset`` per sample.

Needs the optional ``torch`` extra (``pip install 'xraybatch[torch]'``). The module is named
``torch_dataset`` so that it never shadows the ``torch`` package.

Two ways to read a store:

- :class:`XrayLoader` (the fast path): a ``DataLoader`` of whole batches. A seeded, resumable
  chunk shuffle (:class:`ChunkBatchSampler`) picks each batch's rows in the main process;
  the batch is read where it is needed (the main process or a worker) with one zarr read per
  chunk and one copy per image, straight into a uint8 tensor (in shared memory in a worker, so
  that it crosses to the main process without a copy). Scaling to float is one operation of
  the training step (:func:`to_float`), on the GPU when the batch is there.
- :class:`XrayDataset` with a ``DataLoader`` of your own: ``(image, label)`` per sample, for
  per-sample transforms; :class:`ChunkShuffleSampler` keeps its chunk reads at one per chunk.

Reads: zarr reads whole chunks of ``chunk`` images (the store's chunk size), so reading one
image reads its chunk. Every process keeps the last few chunks it read, in buffers it reuses.

Worker processes: datasets pickle as a store address and index arrays only; every process
opens the zarr store itself on its first read (``num_workers > 0`` is safe with fork, spawn
or forkserver).
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

try:
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
except ImportError:
    raise ImportError("xraybatch.torch_dataset needs PyTorch: "
                      "pip install 'xraybatch[torch]'") from None

from .store import StoreError, XrayStore

DTYPES = ("float32", "uint8")
#: Float scalings: ``unit`` x / 255 in [0, 1]; ``xrv`` torchxrayvision's
#: ``normalize(x, 255)``: (2 * (x / 255) - 1) * 1024 in [-1024, 1024].
SCALES = ("unit", "xrv")
#: torchxrayvision's ``datasets.default_pathologies`` (the output order of its models).
XRV_PATHOLOGIES = [
    "Atelectasis", "Consolidation", "Infiltration", "Pneumothorax", "Edema", "Emphysema",
    "Fibrosis", "Effusion", "Pneumonia", "Pleural_Thickening", "Cardiomegaly", "Nodule",
    "Mass", "Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum",
]
#: Finding names that differ between sources and torchxrayvision (normalised, see _key).
PATHOLOGY_ALIASES = {"pleural effusion": "effusion"}
#: ``views`` names -> DICOM ViewPosition values (upper case).
VIEWS = {"PA": ("PA", "POSTERO_ANTERIOR"), "AP": ("AP", "ANTERO_POSTERIOR"),
         "LATERAL": ("LL", "RL", "LAT", "LATERAL", "L", "R")}


def scale_images(pixels: np.ndarray, scale: str = "unit") -> np.ndarray:
    """uint8 pixels -> float32, scaled as ``scale`` says (a new array).

    ``"unit"``: x / 255; ``"xrv"``: torchxrayvision's ``normalize(x, 255)``, the same float32
    operations in the same order, so the same bits.

    Examples
    --------
    >>> scale_images(np.array([0, 51, 255], np.uint8), "xrv").tolist()
    [-1024.0, -614.4000244140625, 1024.0]
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    x = np.divide(pixels, np.float32(255), dtype=np.float32)
    if scale == "xrv":
        x *= 2
        x -= 1
        x *= 1024
    return x


def to_float(batch: torch.Tensor, scale: str = "unit") -> torch.Tensor:
    """A uint8 batch -> float32, scaled, on the batch's device (run it in the training step).

    The same values as :func:`scale_images` (a true division: a 0-d divisor on the batch's
    device, which CUDA does not turn into a multiplication by 1/255).

    Examples
    --------
    >>> to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist()
    [0.0, 1.0]
    >>> to_float(torch.tensor([0, 255], dtype=torch.uint8), "xrv").tolist()
    [-1024.0, 1024.0]
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    x = batch.to(torch.float32)
    x.div_(torch.full((), 255.0, device=x.device))
    if scale == "xrv":
        x.mul_(2).sub_(1).mul_(1024)
    return x


def _key(name: str) -> str:
    """Finding names compared case-, space- and underscore-blind, with known aliases."""
    key = " ".join(str(name).replace("_", " ").lower().split())
    return PATHOLOGY_ALIASES.get(key, key)


def pathology_targets(store: XrayStore, pathologies: Sequence[str], uncertain: float = 0.0,
                      aliases: dict[str, str] | None = None) -> np.ndarray:
    """(N, len(pathologies)) float32 labels in ``pathologies`` order, NaN where not stated.

    Store findings (multi-label) or classes (single-label) are matched to pathologies by
    name (case, spaces and underscores ignored; ``aliases`` maps a store name to a pathology,
    e.g. ``{"BACTERIA": "Pneumonia"}``). Multi-label: 1 positive, 0 negative, ``uncertain``
    for uncertain, NaN for not stated. Single-label: a matched class is 1 for its images and
    0 for every other image; pathologies that no name matches are NaN.

    Examples
    --------
    ::

        pathology_targets(ds, XRV_PATHOLOGIES)[:, 8]  # Pneumonia
    """
    names = store.classes
    alias = {_key(k): _key(v) for k, v in (aliases or {}).items()}
    wanted = [_key(p) for p in pathologies]
    sources = [[i for i, c in enumerate(names) if alias.get(_key(c), _key(c)) == w]
               for w in wanted]
    out = np.full((len(store), len(wanted)), np.nan, np.float32)
    if store.multilabel:
        f = store.findings
        values = np.select([f == 1, f == 0, f == -1], [1.0, 0.0, uncertain], np.nan)
        for j, cols in enumerate(sources):
            for c in cols:  # several findings of one pathology: the strongest stated one
                out[:, j] = np.fmax(out[:, j], values[:, c])
    else:
        labels = store.labels
        for j, cols in enumerate(sources):
            if cols:
                out[:, j] = np.isin(labels, cols)
    return out


def _view_mask(positions: np.ndarray, views: Sequence[str]) -> np.ndarray:
    unknown = sorted({v for v in views if v.upper() not in VIEWS})
    if unknown:
        raise ValueError(f"unknown view {', '.join(unknown)}: choose from {', '.join(VIEWS)}")
    accepted = [p for v in views for p in VIEWS[v.upper()]]
    return pd.Series(positions, dtype=object).str.upper().isin(accepted).to_numpy()


def _first_per_patient(rows: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """The first of ``rows`` of each patient (an image without a patient id is its own)."""
    ids = patients[rows]
    _, first = np.unique(ids, return_index=True)
    keep = np.zeros(len(rows), bool)
    keep[first] = True
    keep |= ids == ""
    return rows[keep]


class _Chunks:
    """The last ``capacity`` chunks of a store read by this process, in reused buffers."""

    def __init__(self, store: XrayStore, capacity: int) -> None:
        self.store, self.capacity = store, capacity
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.spare: list[np.ndarray] = []
        self.epoch: int | None = None

    def start_epoch(self, epoch: int) -> None:
        """Forget the chunks of another epoch (keeping their buffers): every epoch reads its
        chunks, as on a store larger than memory, whatever the store's size."""
        if epoch != self.epoch:
            self.spare.extend(chunk.base for chunk in self.cache.values())
            self.cache.clear()
            self.epoch = epoch

    def get(self, index: int) -> np.ndarray:
        chunk = self.cache.get(index)
        if chunk is not None:
            self.cache.move_to_end(index)
            return chunk
        if len(self.cache) >= self.capacity:
            self.spare.append(self.cache.popitem(last=False)[1].base)
        buffer = self.spare.pop() if self.spare else None
        if buffer is None:
            s = self.store.size
            buffer = np.empty((self.store.chunk, s, s), np.uint8)
        chunk = self.store.read_chunk(index, out=buffer)
        self.cache[index] = chunk
        return chunk


class XrayDataset(Dataset):
    """Samples ``(image, label)`` of a store, optionally one split, valid images only.

    For a multi-label store (a table with several findings per image) the label is a
    multi-hot ``float32`` tensor of length ``len(classes)``: 1 positive, ``uncertain`` for
    the uncertain (-1) findings, 0 for negative and not stated ones (for
    ``BCEWithLogitsLoss``). With ``pathologies`` it is a ``float32`` vector in that order,
    NaN where not stated (:func:`pathology_targets`).

    Parameters
    ----------
    out
        Store path or fsspec URL written by :func:`xraybatch.ingest`.
    split
        A split name (``"train"``), a list of them, or ``None`` for all samples.
    valid_only
        Leave out the files that could not be stored (their image is all zeros).
    dtype
        ``"float32"``: image scaled as ``scale`` says; ``"uint8"``: the stored values.
    scale
        float32 images: ``"unit"`` [0, 1], or ``"xrv"`` torchxrayvision's [-1024, 1024]
        (then ``pathologies`` defaults to :data:`XRV_PATHOLOGIES`).
    transform
        Applied to the image tensor ``(1, size, size)`` (e.g. torchvision v2 transforms).
    cache_chunks
        Chunks kept per process (each is ``chunk * size * size`` bytes).
    storage_options
        fsspec options for a remote store.
    uncertain
        Multi-label stores: the target of an uncertain finding (0.0 U-Zeros, 1.0 U-Ones,
        NaN as torchxrayvision's CheXpert dataset).
    pathologies
        Label order: a list of names (or ``"xrv"``), matched to the store's findings or
        classes by name; ``None``: the store's classes.
    aliases
        Store finding/class name -> pathology name, for names that differ.
    views
        Keep these views only (``"PA"``, ``"AP"``, ``"lateral"``), from the store's DICOM
        ``view_position``; images without one are left out.
    unique_patients
        One image per patient (the first in the store); images without a patient id stay.

    Attributes
    ----------
    classes : list of str
        Class (or pathology) names; ``label`` indexes them.
    rows : numpy.ndarray
        Store row of each sample (``dataset[i]`` is store image ``rows[i]``).
    targets : numpy.ndarray
        Label of each sample (int64), e.g. for a ``WeightedRandomSampler``; for a
        multi-label store or with ``pathologies`` the (n, C) float32 targets.

    Examples
    --------
    ::

        from torch.utils.data import DataLoader
        from xraybatch.torch_dataset import ChunkShuffleSampler, XrayDataset
        train = XrayDataset("xray.zarr", split="train")
        image, label = train[0]  # torch.float32 (1, 256, 256), int
        loader = DataLoader(train, batch_size=32, num_workers=2,
                            sampler=ChunkShuffleSampler(train, seed=0))
        xrv = XrayDataset("xray.zarr", scale="xrv", views=["PA"], unique_patients=True)
    """

    def __init__(self, out: str | os.PathLike, split: str | list[str] | None = None, *,
                 valid_only: bool = True, dtype: str = "float32", scale: str = "unit",
                 transform: Callable[[torch.Tensor], Any] | None = None,
                 cache_chunks: int = 8, storage_options: dict | None = None,
                 uncertain: float = 0.0, pathologies: Sequence[str] | str | None = None,
                 aliases: dict[str, str] | None = None, views: Sequence[str] | None = None,
                 unique_patients: bool = False) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if dtype == "uint8" and scale != "unit":
            raise ValueError("scale applies to float32 images: keep uint8 and scale in the "
                             f"training step with to_float(batch, {scale!r})")
        if cache_chunks < 1:
            raise ValueError(f"cache_chunks must be at least 1, got {cache_chunks}")
        store = XrayStore(str(out), storage_options)
        if not store.complete:
            raise StoreError(f"{out} is INCOMPLETE (an interrupted ingest): finish it with "
                             f"'xraybatch ingest SRC {out} --resume'")
        self.ref = store.ref
        self.size, self.chunk = store.size, store.chunk
        self.rows = self._select(store, split, valid_only, views, unique_patients)
        if pathologies is None and scale == "xrv":
            pathologies = "xrv"
        if pathologies is not None:
            names = XRV_PATHOLOGIES if pathologies == "xrv" else [str(p) for p in pathologies]
            self.classes, self.multilabel = list(names), True
            self.targets = pathology_targets(store, names, uncertain, aliases)[self.rows]
        else:
            self.classes, self.multilabel = store.classes, store.multilabel
            self.targets = (store.multi_hot(uncertain)[self.rows] if self.multilabel
                            else store.labels[self.rows].astype(np.int64))
        self.dtype, self.scale = dtype, scale
        self.transform, self.cache_chunks = transform, cache_chunks
        self._reset()
        self._chunks, self._pid = _Chunks(store, cache_chunks), os.getpid()  # no second open

    @staticmethod
    def _select(store: XrayStore, split, valid_only: bool, views, unique_patients: bool
                ) -> np.ndarray:
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
        if views is not None:
            keep &= _view_mask(store.view_positions(), [views] if isinstance(views, str)
                               else list(views))
        rows = np.flatnonzero(keep)
        return _first_per_patient(rows, store.patient_ids()) if unique_patients else rows

    def _reset(self) -> None:
        self._chunks: _Chunks | None = None
        self._pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Open zarr handles and cached pixels stay behind: each worker opens its own.
        state = self.__dict__.copy()
        state.update(_chunks=None, _pid=None)
        return state

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        row = int(self.rows[index])
        pixels = self._read_chunk(row // self.chunk)[row % self.chunk]
        # A copy either way: the cached chunk must survive in-place transforms. numpy, not
        # torch: torch's intra-op thread pool costs more than these 65k-pixel operations
        # (same float32 values: a correctly rounded x / 255 either way).
        pixels = scale_images(pixels, self.scale) if self.dtype == "float32" else pixels.copy()
        image = torch.from_numpy(pixels)[None]
        if self.transform is not None:
            image = self.transform(image)
        return image, self._label(index)

    def _label(self, index: int) -> Any:
        if self.multilabel:
            return torch.from_numpy(self.targets[index])
        return int(self.targets[index])

    def _cache(self) -> _Chunks:
        if self._pid != os.getpid():  # first read in this process (or a forked child)
            store = XrayStore(self.ref.url, self.ref.storage_options)
            self._chunks, self._pid = _Chunks(store, self.cache_chunks), os.getpid()
        self._chunks.capacity = self.cache_chunks  # XrayLoader raises it to its windows
        return self._chunks

    def _read_chunk(self, index: int) -> np.ndarray:
        return self._cache().get(index)

    def read_batch(self, indices: Sequence[int], epoch: int | None = None, *,
                   pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` as one uint8 batch ``(B, 1, size, size)`` and their labels.

        Each chunk touched is read once (or found in this process's cache); each image is
        copied once, into the batch. ``epoch``: forget cached chunks of other epochs.

        Examples
        --------
        ::

            images, labels = train.read_batch([5, 0, 3])  # uint8 (3, 1, 256, 256)
        """
        s = self.size
        images = torch.empty((len(indices), 1, s, s), dtype=torch.uint8, pin_memory=pin_memory)
        return images, torch.from_numpy(self.fill_batch(indices, images.numpy(), epoch))

    def fill_batch(self, indices: Sequence[int], out: np.ndarray, epoch: int | None = None
                   ) -> np.ndarray:
        """Copy the images of ``indices`` into ``out`` (uint8 ``(B, 1, size, size)``);
        returns their labels (numpy)."""
        index = np.asarray(indices, dtype=np.int64)
        rows = self.rows[index]
        cache = self._cache()
        if epoch is not None:
            cache.start_epoch(epoch)
        chunk_of, local = np.divmod(rows, self.chunk)
        touched = np.unique(chunk_of).tolist()
        if len(touched) > cache.capacity:  # more than the cache holds: chunk by chunk
            for i, row in enumerate(rows.tolist()):
                out[i, 0] = cache.get(row // self.chunk)[row % self.chunk]
        else:
            chunks = {c: cache.get(c) for c in touched}
            for i, (c, r) in enumerate(zip(chunk_of.tolist(), local.tolist(), strict=True)):
                out[i, 0] = chunks[c][r]  # one copy per image, no temporaries
        return self.targets[index]


def collate(samples: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
    """``DataLoader(collate_fn=collate)``: ``default_collate`` without torch's thread pool.

    ``default_collate`` stacks with ``torch.stack``, whose intra-op threads cost more than
    copying 32 small images, by far on a busy machine (measured at load 7 on 2 cores: 250-3,500
    samples/s against 12,000-20,000 with one thread). In the main process this stacks CPU
    tensors with numpy; in ``DataLoader`` workers (one torch thread each) and for anything
    else it is ``default_collate``.

    Examples
    --------
    >>> images, labels = collate([(torch.zeros(1, 2, 2), 0), (torch.ones(1, 2, 2), 1)])
    >>> tuple(images.shape), labels.tolist()
    ((2, 1, 2, 2), [0, 1])
    """
    images, labels = zip(*samples, strict=True)
    first = images[0]
    if get_worker_info() is not None or not all(
            isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.requires_grad
            and t.shape == first.shape and t.dtype == first.dtype for t in images):
        return torch.utils.data.default_collate(list(samples))
    out = torch.empty((len(images), *first.shape), dtype=first.dtype)
    np.stack([t.numpy() for t in images], out=out.numpy())
    if isinstance(labels[0], torch.Tensor):
        return out, torch.from_numpy(np.stack([t.numpy() for t in labels]))
    return out, torch.tensor(labels)


# --- shuffling ----------------------------------------------------------------------------


def _chunk_groups(dataset: XrayDataset) -> list[np.ndarray]:
    """Sample indices of each chunk (the dataset's rows are sorted)."""
    chunk_of = dataset.rows // dataset.chunk
    starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]]) if len(chunk_of) else []
    return np.split(np.arange(len(chunk_of)), starts[1:]) if len(chunk_of) else []


def _window_order(groups: list[np.ndarray], window: int, rng: np.random.Generator
                  ) -> np.ndarray:
    """Chunks in a random order, ``window`` at a time, samples shuffled within a window."""
    if not groups:
        return np.zeros(0, np.int64)
    order = rng.permutation(len(groups))
    return np.concatenate([
        rng.permutation(np.concatenate([groups[k] for k in order[a:a + window]]))
        for a in range(0, len(order), window)])


class ChunkShuffleSampler(Sampler[int]):
    """Random order that reads each chunk once per epoch (with the dataset's chunk cache).

    Each epoch shuffles the chunks, takes them ``window`` at a time, and shuffles the samples
    of those chunks together. A batch thus mixes samples of ``window`` random chunks
    (stores are written in split/class/path order, so mix enough chunks for mixed batches),
    and each worker reads each chunk at most once per epoch as long as
    ``window <= dataset.cache_chunks``. Epoch ``e`` of seed ``s`` is always the same order
    (each iteration starts the next epoch; :meth:`set_epoch` picks one).

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
    ::

        sampler = ChunkShuffleSampler(train, seed=0)
        loader = DataLoader(train, batch_size=32, sampler=sampler, num_workers=2)
    """

    def __init__(self, dataset: XrayDataset, window: int | None = None, seed: int = 0) -> None:
        self.window = window or dataset.cache_chunks
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window}")
        self.groups = _chunk_groups(dataset)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(len(g) for g in self.groups)

    def __iter__(self) -> Iterator[int]:
        order = _window_order(self.groups, self.window,
                              np.random.default_rng((self.seed, self.epoch)))
        self.epoch += 1
        yield from order.tolist()


class _Item(list):
    """Sample indices of one or more consecutive batches, read and sent as one block."""

    def __init__(self, batches: list[np.ndarray], epoch: int) -> None:
        super().__init__(np.concatenate(batches).tolist())
        self.sizes, self.epoch = [len(b) for b in batches], epoch
        self.slot: int | None = None  # the shared-memory slot a worker writes it into


class ChunkBatchSampler(Sampler[list[int]]):
    """Batches of a seeded chunk shuffle, the same for any number of workers, resumable.

    Epoch ``e`` of seed ``s``: the chunk shuffle of :class:`ChunkShuffleSampler` cut into
    batches of ``batch_size``, dealt into ``streams`` consecutive runs of (almost) equal
    length; each run is cut into blocks of 1, 2, 4, ... up to ``block`` batches, and the epoch
    takes one block of each run in turn. A ``DataLoader`` worker reads a whole block and sends
    it at once (one transfer per block, not per batch); it hands block ``k`` to worker
    ``k % num_workers``, so with ``num_workers`` equal to ``streams`` each worker reads the
    chunks of its own run only: together they read each chunk about once per epoch. The
    order is a function of the seed, the epoch and these parameters only, never of the
    number of workers.

    Parameters
    ----------
    dataset
        The :class:`XrayDataset` to sample.
    batch_size
        Samples per batch (the last batch of an epoch may be smaller).
    window
        Chunks shuffled together.
    streams
        Runs read side by side (the number of workers you use most; 2 by default).
    block
        Batches a worker reads and sends at once (at most).
    seed
        Seeds every epoch's order.
    shuffle
        ``False``: the store's order (still dealt into runs).
    drop_last
        Leave out an epoch's last batch when it is smaller than ``batch_size``.

    Examples
    --------
    ::

        sampler = ChunkBatchSampler(train, batch_size=32, seed=0)
        sampler.set_epoch(3, skip=10)  # the next iteration: epoch 3 from its 11th batch
    """

    def __init__(self, dataset: XrayDataset, batch_size: int = 32, *, window: int = 8,
                 streams: int = 2, block: int = 8, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False) -> None:
        for name, value in (("batch_size", batch_size), ("window", window),
                            ("streams", streams), ("block", block)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.groups, self.n = _chunk_groups(dataset), len(dataset)
        self.batch_size, self.window, self.streams = batch_size, window, streams
        self.block, self.seed, self.shuffle, self.drop_last = block, seed, shuffle, drop_last
        self.epoch, self.skip, self.per_batch = 0, 0, False
        self.pool: _SlotPool | None = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next iteration epoch ``epoch``, starting after its first ``skip`` batches."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def blocks(self, epoch: int) -> list[list[np.ndarray]]:
        """The batches of ``epoch`` (sample indices) in order, grouped in blocks."""
        order = (_window_order(self.groups, self.window, np.random.default_rng((self.seed, epoch)))
                 if self.shuffle else np.arange(self.n))
        cut = [order[a:a + self.batch_size] for a in range(0, len(order), self.batch_size)]
        cut = cut[:len(self)]
        q, r = divmod(len(cut), self.streams)
        bounds = np.cumsum([0] + [q + (s < r) for s in range(self.streams)]).tolist()
        runs = []
        for s in range(self.streams):
            run, start, size = [], bounds[s], 1
            while start < bounds[s + 1]:  # 1, 2, 4 ... block: a first batch soon
                run.append(cut[start:min(start + size, bounds[s + 1])])
                start, size = start + size, min(2 * size, self.block)
            runs.append(run)
        return [run[k] for k in range(max(map(len, runs), default=0)) for run in runs
                if k < len(run)]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The sample indices of every batch of ``epoch``, in order."""
        return [b for block in self.blocks(epoch) for b in block]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        for block in self.blocks(epoch):
            if skip >= len(block):
                skip -= len(block)
                continue
            block, skip = block[skip:], 0
            if self.per_batch:
                yield from (_Item([b], epoch) for b in block)
                continue
            item = _Item(block, epoch)
            if self.pool is not None:  # called when the DataLoader hands the block out
                item.slot = self.pool.acquire()
            yield item


class _SlotPool:
    """Shared-memory buffers that workers write blocks into, recycled when freed.

    Made by the main process before the workers start (forked workers inherit the mappings,
    spawned ones receive them once), so no block pays for a new shared segment (an
    allocation, and a page fault per 4 KiB on both sides: more than reading the images).
    The main process hands a free slot out with each block and wraps the filled slot as the
    batches it yields, without a copy; the slot is free again once every tensor of the block
    is gone (a finalizer on the array the tensors keep alive). Only the main process tracks
    the states. No free slot (batches kept longer than the pool allows): the worker returns
    the block in a new segment of its own, as ``DataLoader`` does.
    """

    def __init__(self, count: int, nbytes: int) -> None:
        self.tensors = [torch.empty(0, dtype=torch.uint8).set_(
            torch.UntypedStorage._new_shared(nbytes)) for _ in range(count)]
        self.arrays = [t.numpy() for t in self.tensors]
        self.state = ["free"] * count  # free, out (handed to a worker), held, stale

    def acquire(self) -> int | None:
        for slot, state in enumerate(self.state):
            if state == "free":
                self.state[slot] = "out"
                return slot
        return None

    def lend(self, slot: int, n: int, size: int) -> torch.Tensor:
        """The block in ``slot`` as a tensor that frees the slot when it (and its views) die."""
        array = self.arrays[slot][:n * size * size].reshape(n, 1, size, size)
        self.state[slot] = "held"
        weakref.finalize(array, self.release, slot)
        return torch.from_numpy(array)

    def release(self, slot: int) -> None:
        self.state[slot] = "free"

    def mark_stale(self) -> None:
        """Blocks handed out by an iteration that was left: their workers may still write."""
        self.state = ["stale" if s == "out" else s for s in self.state]

    def reclaim(self) -> None:
        """Once the workers have finished the stale blocks, their slots are free again."""
        self.state = ["free" if s == "stale" else s for s in self.state]


class _Batches(Dataset):
    """What :class:`XrayLoader` hands its ``DataLoader``: whole blocks via ``__getitems__``."""

    def __init__(self, dataset: XrayDataset, slots: list[torch.Tensor] | None) -> None:
        self.dataset, self.slots = dataset, slots

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, item: _Item) -> tuple[Any, Any, list[int]]:
        if get_worker_info() is None or item.slot is None:
            # A new tensor (in a worker, DataLoader moves it to a new shared segment).
            return (*self.dataset.read_batch(item, item.epoch), item.sizes)
        s = self.dataset.size
        images = self.slots[item.slot][:len(item) * s * s].view(len(item), 1, s, s)
        labels = self.dataset.fill_batch(item, images.numpy(), item.epoch)
        return item.slot, labels, item.sizes


def _as_is(batch: Any) -> Any:
    """The collate function of whole blocks (module level: spawned workers unpickle it)."""
    return batch


class XrayLoader(DataLoader):
    """A ``DataLoader`` of whole uint8 batches ``(B, 1, size, size)`` and their labels.

    Batches come from :class:`ChunkBatchSampler` (seeded chunk shuffle, the same order for
    any ``num_workers``); they are read by :meth:`XrayDataset.read_batch` in the main
    process, or a block of them at a time by a worker into a recycled shared-memory slot
    (no per-sample collation, no copy on the way to the main process; see
    :class:`_SlotPool`). Scale in the training step with :func:`to_float`, after moving the batch
    to the GPU. Iterating runs the next epoch; :meth:`state_dict` / :meth:`load_state_dict`
    save and restore the position mid-epoch (an iteration left early resumes where it
    stopped). Each epoch reads its chunks anew (in each process, the current window's chunks
    stay in memory).

    Parameters
    ----------
    dataset
        An :class:`XrayDataset` (its ``dtype``, ``scale`` and ``transform`` do not apply:
        batches are the stored uint8 values; its ``cache_chunks`` is raised to what the
        windows need).
    batch_size, window, streams, block, seed, shuffle, drop_last
        See :class:`ChunkBatchSampler`.
    num_workers
        ``DataLoader`` worker processes (persistent by default).
    pin_memory
        Batches in pinned memory, for a faster, asynchronous copy to the GPU
        (``.to(device, non_blocking=True)``); ignored without CUDA.
    prefetch_factor
        Blocks in flight per worker. The workers share ``prefetch_factor * num_workers + 4``
        slots of ``block * batch_size`` images (128 MB at the defaults for 256 x 256 and 2
        workers); a block that finds none free travels in a new segment (slower).
    **kwargs
        Passed to ``DataLoader`` (``multiprocessing_context``, ``timeout``...).

    Examples
    --------
    ::

        loader = XrayLoader(XrayDataset("xray.zarr", split="train"), num_workers=2)
        for images, labels in loader:  # uint8 (32, 1, 256, 256), int64 (32,)
            x = to_float(images.to("cuda", non_blocking=True))
        state = loader.state_dict()  # {"epoch": 0, "batches": 12, ...}
    """

    def __init__(self, dataset: XrayDataset, batch_size: int = 32, *, window: int = 8,
                 streams: int = 2, block: int = 8, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool | None = None, prefetch_factor: int | None = None,
                 **kwargs: Any) -> None:
        sampler = ChunkBatchSampler(dataset, batch_size, window=window, streams=streams,
                                    block=block, seed=seed, shuffle=shuffle,
                                    drop_last=drop_last)
        sampler.per_batch = num_workers == 0  # no transfer to save: the first batch sooner
        # The current window's chunks of each run this process reads, plus one for a window
        # boundary inside a batch.
        runs = streams if num_workers <= 1 else -(-streams // num_workers)
        dataset.cache_chunks = max(dataset.cache_chunks, runs * (window + 1))
        self._pin = pin_memory and torch.cuda.is_available()
        self._pool = None
        if num_workers > 0:
            # Blocks in flight, the one being yielded and a few the training step holds.
            self._pool = _SlotPool((prefetch_factor or 2) * num_workers + 4,
                                   block * batch_size * dataset.size ** 2)
            sampler.pool = self._pool
        super().__init__(_Batches(dataset, self._pool.tensors if self._pool else None),
                         batch_sampler=sampler, collate_fn=_as_is, num_workers=num_workers,
                         persistent_workers=(num_workers > 0 if persistent_workers is None
                                             else persistent_workers),
                         prefetch_factor=prefetch_factor, **kwargs)
        self._active: weakref.ref | None = None
        self.epoch, self.batches_done = 0, 0

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        previous = self._active() if self._active is not None else None
        if previous is not None:  # an iteration left early: stop its workers' blocks
            previous.close()
        batches = self._batches()
        # A weak reference: a strong one would make a cycle (the generator refers to the
        # loader), left to the garbage collector, which then stops the workers 5 s late.
        self._active = weakref.ref(batches)
        return batches

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.batch_sampler.set_epoch(self.epoch, self.batches_done)
        pool, s = self._pool, self.dataset.dataset.size
        if pool is not None:
            pool.mark_stale()
        blocks = super().__iter__()  # persistent workers finish the stale blocks here
        if pool is not None:
            pool.reclaim()
        for images, labels, sizes in blocks:
            if isinstance(images, int):  # a slot of the pool
                slot, n = images, sum(sizes)
                if self._pin:  # the copy to pinned memory frees the slot at once
                    images = pool.tensors[slot][:n * s * s].view(n, 1, s, s).pin_memory()
                    pool.release(slot)
                else:
                    images = pool.lend(slot, n, s)
                labels = torch.from_numpy(labels)
            elif self._pin:
                images = images.pin_memory()
            start = 0
            for n in sizes:
                self.batches_done += 1
                yield images[start:start + n], labels[start:start + n]
                start += n
            del images  # the slot is free once the training step drops the batches
        self.epoch, self.batches_done = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` from its start."""
        self.epoch, self.batches_done = epoch, 0

    def _plan(self) -> dict[str, Any]:
        s = self.batch_sampler
        return {"samples": s.n, "batch_size": s.batch_size, "window": s.window,
                "streams": s.streams, "block": s.block, "seed": s.seed, "shuffle": s.shuffle,
                "drop_last": s.drop_last}

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: the epoch and the batches of it already yielded, and the
        parameters that fix the order (checked by :meth:`load_state_dict`)."""
        return {"epoch": self.epoch, "batches": self.batches_done, **self._plan()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields the batches after it."""
        differ = sorted(k for k, v in self._plan().items() if state.get(k) != v)
        if differ:
            raise ValueError(f"the state is of another order: {', '.join(differ)} differ")
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches"])
