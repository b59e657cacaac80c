"""PyTorch adapter: a map-style ``Dataset`` per sample, and models' conventions.

Needs the optional ``torch`` extra (``pip install 'xraybatch[torch]'``). The module is named
``torch_dataset`` so that it never shadows the ``torch`` package. It is also the public entry
point of the batched path, which lives in :mod:`xraybatch.torch_loader`:
``from xraybatch.torch_dataset import XrayLoader, ChunkBatchSampler, to_float`` works.

Two ways to read a store:

- :class:`~xraybatch.torch_loader.XrayLoader` (the fast path, :mod:`xraybatch.torch_loader`):
  a ``DataLoader`` of whole uint8 batches, scaled to float in the training step
  (:func:`~xraybatch.torch_loader.to_float`).
- :class:`XrayDataset` with a ``DataLoader`` of your own: ``(image, label)`` per sample, for
  per-sample transforms; :class:`ChunkShuffleSampler` keeps its chunk reads at one per chunk.

Reads (:class:`~xraybatch.pixels.Pixels`): on a local store each image is read by its offset
in its shard file; elsewhere (object storage, stores with whole-chunk image files) reading
one image reads its chunk, and every process keeps the last few chunks it read, in buffers
it reuses.

Worker processes: datasets pickle as a store address and index arrays only; every process
opens the zarr store itself on its first read (``num_workers > 0`` is safe with fork, spawn
or forkserver).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

try:
    import torch
    from torch.utils.data import Dataset, Sampler, get_worker_info
except ImportError:
    raise ImportError("xraybatch.torch_dataset needs PyTorch: "
                      "pip install 'xraybatch[torch]'") from None

from .pixels import Pixels
from .store import StoreError, XrayStore

if TYPE_CHECKING:  # for type checkers; at run time see __getattr__ at the bottom
    from .torch_loader import ChunkBatchSampler as ChunkBatchSampler
    from .torch_loader import XrayLoader as XrayLoader
    from .torch_loader import to_float as to_float

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
        Chunks kept per process where images are read by whole chunks (each is
        ``chunk * size * size`` bytes).
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
        self._chunks, self._pid = Pixels(store, cache_chunks), os.getpid()  # no second open

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
        self._chunks: Pixels | None = None
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
        pixels = self._cache().row(row)  # a new array: in-place transforms are safe
        # numpy, not torch: torch's intra-op thread pool costs more than these 65k-pixel
        # operations (same float32 values: a correctly rounded x / 255 either way).
        if self.dtype == "float32":
            pixels = scale_images(pixels, self.scale)
        image = torch.from_numpy(pixels)[None]
        if self.transform is not None:
            image = self.transform(image)
        return image, self._label(index)

    def _label(self, index: int) -> Any:
        if self.multilabel:
            return torch.from_numpy(self.targets[index])
        return int(self.targets[index])

    def _cache(self) -> Pixels:
        if self._pid != os.getpid():  # first read in this process (or a forked child)
            store = XrayStore(self.ref.url, self.ref.storage_options)
            self._chunks, self._pid = Pixels(store, self.cache_chunks), os.getpid()
        self._chunks.capacity = self.cache_chunks  # XrayLoader raises it to its windows
        return self._chunks

    def read_batch(self, indices: Sequence[int], epoch: int | None = None, *,
                   pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``indices`` as one uint8 batch ``(B, 1, size, size)`` and their labels.

        Each image is read by its offset (local store), or each chunk touched is read once
        (or found in this process's cache) and each image copied once, into the batch.
        ``epoch``: forget cached chunks of other epochs.

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
        cache.fill(rows, out[:, 0])
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


# --- the batched path, importable from here too ------------------------------------------

#: Names of :mod:`xraybatch.torch_loader` that this module also serves. Resolved on first use
#: (PEP 562), not imported at the top: torch_loader imports this module, and a worker that
#: unpickles one of torch_loader's objects imports torch_loader first.
_LOADER_NAMES = ("ChunkBatchSampler", "XrayLoader", "to_float")


def __getattr__(name: str) -> Any:
    if name not in _LOADER_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import torch_loader

    value = getattr(torch_loader, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LOADER_NAMES})


# ``from xraybatch.torch_dataset import *`` brings torch_loader's names too.
__all__ = ["DTYPES", "PATHOLOGY_ALIASES", "SCALES", "VIEWS", "XRV_PATHOLOGIES",
           "ChunkShuffleSampler", "XrayDataset", "collate", "pathology_targets",
           "scale_images", *_LOADER_NAMES]
