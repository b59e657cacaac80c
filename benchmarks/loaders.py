"""Loader speed for training: one epoch over the store against torchvision over the JPEGs.

``python benchmarks/run.py SRC --sweep loaders`` ingests SRC once (untimed), then times one
epoch of each loader, each in a fresh process, interleaved, median of ``--repeat``:

- the PyTorch adapter (:class:`xraybatch.torch_dataset.XrayDataset`, float32 in [0, 1],
  shuffled by :class:`~xraybatch.torch_dataset.ChunkShuffleSampler`) in a ``DataLoader``
  with ``num_workers`` 0 and 2;
- its batched path (:class:`~xraybatch.torch_dataset.XrayLoader`, uint8 batches scaled by
  :func:`~xraybatch.torch_dataset.to_float` as a training step would), workers 0 and 2;
- xarray/dask (``xraybatch.open(OUT).to_xarray()``) and plain zarr
  (``zarr.open_array(OUT, path="images")``), reading whole chunks in a shuffled chunk order
  and cutting float32 batches;
- torchvision ``ImageFolder`` + ``Grayscale`` + ``Resize((size, size))`` + ``ToTensor`` in a
  shuffled ``DataLoader`` with 2 workers, over the JPEG folder (one ``ImageFolder`` per split
  folder when SRC has train/val/test).

Every loader yields batches of ``batch`` float32 images of ``size`` x ``size``; the epoch
time includes building the dataset and loader; "first batch" is the time until the first
batch arrives. Torch is optional: without it the torch loaders are skipped with one line.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

#: Loader name -> (kind, DataLoader workers).
LOADERS = {"xraybatch torch, workers 0": ("torch", 0), "xraybatch torch, workers 2": ("torch", 2),
           "xraybatch XrayLoader + to_float, workers 0": ("batched", 0),
           "xraybatch XrayLoader + to_float, workers 2": ("batched", 2),
           "xarray/dask, chunk-shuffled": ("xarray", 0), "zarr, chunk-shuffled": ("zarr", 0),
           "torchvision ImageFolder, workers 2": ("imagefolder", 2)}
NEEDS_TORCH = ("torch", "batched", "imagefolder")
IMPORTS = {"torch": ("torch", "torch.utils.data", "xraybatch.torch_dataset"),
           "batched": ("torch", "xraybatch.torch_dataset"),
           "imagefolder": ("torch", "torch.utils.data", "torchvision"),
           "xarray": ("xarray", "xarray.backends.zarr", "dask.array", "xraybatch.store"),
           "zarr": ("zarr",)}
INSTALL = "pip install 'xraybatch[torch]' torchvision"


def missing_torch() -> str | None:
    """One line naming what to install, or None when torch and torchvision import."""
    absent = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
    return f"loaders sweep: {' and '.join(absent)} missing, torch loaders skipped ({INSTALL})" \
        if absent else None


def specs(base: dict[str, Any], store: str, with_torch: bool) -> dict[str, dict]:
    return {name: {**base, "kind": "loader", "loader": kind, "loader_workers": w,
                   "store": store}
            for name, (kind, w) in LOADERS.items() if with_torch or kind not in NEEDS_TORCH}


def _chunk_batches(read, n: int, chunk: int, batch: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Whole chunks in a random order, each cut into shuffled float32 batches."""
    rng = np.random.default_rng(seed)
    for k in rng.permutation(-(-n // chunk)):
        block = read(slice(k * chunk, min((k + 1) * chunk, n)))
        block = block[rng.permutation(len(block))].astype(np.float32) / 255
        for a in range(0, len(block), batch):
            yield block[a:a + batch]


def _batches(spec: dict[str, Any]) -> Iterator[Any]:
    kind, store, batch = spec["loader"], spec["store"], spec.get("batch", 32)
    if kind == "torch":
        from torch.utils.data import DataLoader

        from xraybatch.torch_dataset import ChunkShuffleSampler, XrayDataset

        ds = XrayDataset(store)
        yield from (x for x, _ in DataLoader(ds, batch_size=batch, num_workers=spec[
            "loader_workers"], sampler=ChunkShuffleSampler(ds, seed=0)))
    elif kind == "batched":  # whole uint8 batches, scaled as the training step would
        from xraybatch.torch_dataset import XrayDataset, XrayLoader, to_float

        loader = XrayLoader(XrayDataset(store), batch_size=batch,
                            num_workers=spec["loader_workers"])
        yield from (to_float(x) for x, _ in loader)
    elif kind == "xarray":
        import xraybatch

        xs = xraybatch.open(store)
        images = xs.to_xarray()["images"]
        yield from _chunk_batches(lambda s: images[s].values, len(xs), xs.chunk, batch)
    elif kind == "zarr":
        import zarr

        images = zarr.open_array(store, path="images", mode="r")
        yield from _chunk_batches(lambda s: images[s], images.shape[0],
                                  (images.shards or images.chunks)[0], batch)
    elif kind == "imagefolder":
        yield from (x for x, _ in _imagefolder(spec["src"], spec["size"], batch,
                                               spec["loader_workers"]))
    else:
        raise ValueError(f"unknown loader {kind!r}")


def _imagefolder(src: str, size: int, batch: int, workers: int):
    from torch.utils.data import ConcatDataset, DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Grayscale(), transforms.Resize((size, size)),
                             transforms.ToTensor()])
    splits = [os.path.join(src, s) for s in ("train", "val", "test")
              if os.path.isdir(os.path.join(src, s))]
    ds = ConcatDataset([datasets.ImageFolder(root, transform=tf, allow_empty=True)
                        for root in splits or [src]])
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)


def prepare(spec: dict[str, Any]) -> None:
    """Import what the loader needs, before the epoch is timed (torch alone takes seconds)."""
    for module in IMPORTS[spec["loader"]]:
        importlib.import_module(module)


def epoch(spec: dict[str, Any]) -> dict[str, Any]:
    """One epoch (after :func:`prepare`): samples, seconds to the first batch, and a check
    of what was loaded."""
    t0 = time.perf_counter()
    first = None
    n, total = 0, 0.0
    for x in _batches(spec):
        if first is None:
            first = time.perf_counter() - t0
        n += len(x)
        total += float(x[0].mean())  # touch the data
    if n == 0:
        raise RuntimeError("the loader yielded no sample")
    return {"n": n, "first_batch_seconds": first, "checksum": total}


def build_store(src: str, out: str, size: int) -> str:
    """The store the loaders read: one default ingest of ``src`` (untimed)."""
    import xraybatch

    if os.path.exists(out):
        shutil.rmtree(out)
    xraybatch.ingest(src, out, size=size)
    return out
