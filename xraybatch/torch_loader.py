"""PyTorch batched path: whole uint8 batches for training (:class:`XrayLoader`).

Needs the optional ``torch`` extra (``pip install 'xraybatch[torch]'``); the public import
path stays :mod:`xraybatch.torch_dataset` (``from xraybatch.torch_dataset import XrayLoader``),
which also holds the :class:`~xraybatch.torch_dataset.XrayDataset` it reads.

A seeded, resumable chunk shuffle (:class:`ChunkBatchSampler`) picks each batch's rows in the
main process; the batch is read where it is needed (the main process or a worker) with one
zarr read per chunk and one copy per image, straight into a uint8 tensor (in shared memory in
a worker, so that it crosses to the main process without a copy). Scaling to float is one
operation of the training step (:func:`to_float`), on the GPU when the batch is there.
"""

from __future__ import annotations

import mmap
import multiprocessing
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

try:
    import torch
    from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
except ImportError:
    raise ImportError("xraybatch.torch_loader needs PyTorch: "
                      "pip install 'xraybatch[torch]'") from None

from .torch_dataset import SCALES, XrayDataset, _chunk_groups, _window_order


def to_float(batch: torch.Tensor, scale: str = "unit") -> torch.Tensor:
    """A uint8 batch -> float32, scaled, on the batch's device (run it in the training step).

    The same values as :func:`~xraybatch.torch_dataset.scale_images` (a true division: a 0-d
    divisor on the batch's device, which CUDA does not turn into a multiplication by 1/255).

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


class _Item(list):
    """Sample indices of one or more consecutive batches, read and sent as one block."""

    def __init__(self, batches: list[np.ndarray], epoch: int) -> None:
        super().__init__(np.concatenate(batches).tolist())
        self.sizes, self.epoch = [len(b) for b in batches], epoch
        self.slot: int | None = None  # the shared-memory slot a worker writes it into


class ChunkBatchSampler(Sampler[list[int]]):
    """Batches of a seeded chunk shuffle, the same for any number of workers, resumable.

    Epoch ``e`` of seed ``s``: the chunk shuffle of
    :class:`~xraybatch.torch_dataset.ChunkShuffleSampler` cut into batches of ``batch_size``,
    dealt into ``streams`` consecutive runs of (almost) equal length; each run is cut into
    blocks of 1, 2, 4, ... up to ``block`` batches, and the epoch takes one block of each run
    in turn. A ``DataLoader`` worker reads a whole block and sends
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
        self._last: tuple[int, list[list[np.ndarray]]] | None = None

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Make the next iteration epoch ``epoch``, starting after its first ``skip`` batches."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def blocks(self, epoch: int) -> list[list[np.ndarray]]:
        """The batches of ``epoch`` (sample indices) in order, grouped in blocks (the last
        epoch's are kept: the loader and the sampler both ask for them)."""
        if self._last is not None and self._last[0] == epoch:
            return self._last[1]
        self._last = (epoch, self._blocks(epoch))
        return self._last[1]

    def _blocks(self, epoch: int) -> list[list[np.ndarray]]:
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

    Made by the main process before the workers start (forked workers inherit one anonymous
    shared mapping, spawned ones receive torch's segments once), so no block pays for a new
    shared segment (an allocation, and a page fault per 4 KiB on both sides: more than
    reading the images).
    The main process hands a free slot out with each block and wraps the filled slot as the
    batches it yields, without a copy; the slot is free again once every tensor of the block
    is gone (a finalizer on the array the tensors keep alive). Only the main process tracks
    the states. No free slot (batches kept longer than the pool allows): the worker returns
    the block in a new segment of its own, as ``DataLoader`` does.
    """

    def __init__(self, count: int, nbytes: int, forked: bool) -> None:
        self.forked = forked
        if forked:  # one anonymous shared mapping: free to make (torch's segments ~4 ms/16 MB)
            self.mapping = mmap.mmap(-1, count * nbytes)
            whole = np.frombuffer(self.mapping, np.uint8)
            self.tensors = [torch.from_numpy(whole[k * nbytes:(k + 1) * nbytes])
                            for k in range(count)]
        else:  # spawned workers receive torch's segments (by file descriptor) once
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


def _start_method(context: Any) -> str:
    """How ``DataLoader`` will start its workers, given its ``multiprocessing_context``."""
    if isinstance(context, str):
        return context
    if context is not None:
        return context.get_start_method()
    return multiprocessing.get_start_method(allow_none=True) or \
        multiprocessing.get_all_start_methods()[0]


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
        self._pool: _SlotPool | None = None  # made when workers start (see _slots)
        # Blocks in flight, the one being yielded and a few the training step holds.
        self._pool_size = ((prefetch_factor or 2) * num_workers + 4,
                           block * batch_size * dataset.size ** 2)
        super().__init__(_Batches(dataset, None),
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
        sampler, epoch = self.batch_sampler, self.epoch
        head = self._head()
        sampler.set_epoch(epoch, self.batches_done + len(head))
        pool, s = self._slots(), self.dataset.dataset.size
        if pool is not None:
            pool.mark_stale()
        blocks = super().__iter__()  # persistent workers finish the stale blocks here
        if pool is not None:
            pool.reclaim()
        for indices in head:  # read here while the workers start (they skip it)
            self.batches_done += 1
            yield self.dataset.dataset.read_batch(indices, epoch, pin_memory=self._pin)
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

    def _slots(self) -> _SlotPool | None:
        """The workers' shared-memory slots, made for the start method the workers about to
        start will use (an anonymous mapping is shared by forking only; the start method
        may change between the loader's making and its iteration)."""
        if self.num_workers == 0:
            return None
        starting = not (self.persistent_workers and self._iterator is not None)
        forked = _start_method(self.multiprocessing_context) == "fork"
        if self._pool is None or (starting and self._pool.forked != forked):
            self._pool = _SlotPool(*self._pool_size, forked)
            self.batch_sampler.pool = self._pool
            self.dataset.slots = self._pool.tensors
        return self._pool

    def _head(self) -> list[np.ndarray]:
        """The batch this process reads itself: the next one, when this iteration starts
        the workers (~0.15 s on 2 cores, while one batch takes a few ms), else none."""
        if self.num_workers == 0 or self.batches_done >= len(self) or (
                self.persistent_workers and self._iterator is not None):
            return []
        return [self.batch_sampler.batches(self.epoch)[self.batches_done]]

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
