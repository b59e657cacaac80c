"""Schedulers: run a list of Dask tasks locally or on a cluster, with progress.

The tasks of ingest and append (:mod:`.tasks`), verify and the near-duplicate search all
run through :func:`compute`, so every command supports the same schedulers. On a cluster
the tasks are submitted a few per worker thread at a time, so the client and the scheduler
hold O(threads) futures whatever the dataset size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import cv2
import dask
import dask.local
import dask.multiprocessing
import dask.threaded

from .progress import Progress, dask_callback

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
_LOCAL_GET = {"threads": dask.threaded.get, "processes": dask.multiprocessing.get,
              "sync": dask.local.get_sync}
#: Chunk tasks in flight per worker thread on a cluster: enough to keep every thread busy
#: while results come back, few enough that the scheduler and client hold O(threads) tasks.
IN_FLIGHT_PER_THREAD = 4


class SchedulerError(RuntimeError):
    """The distributed scheduler cannot be reached (reported in one line)."""


@contextmanager
def opencv_threads_kept() -> Iterator[None]:
    """Restore OpenCV's thread count after tasks that set it to one in this process."""
    threads = cv2.getNumThreads()
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def compute(tasks: list, scheduler: Any = "threads", workers: int | None = None,
            progress: bool = False, retries: int = 2, images: int = 0,
            label: str = "ingest") -> list[Any]:
    """Run the tasks on a local scheduler (a name) or a ``distributed.Client``.

    ``images`` (how many the tasks hold) is the total that ``progress`` counts towards,
    from the ``n`` of each task's result; ``label`` names the command on its lines.
    """
    if not tasks:
        return []
    with Progress(label=label).start(images) if progress else nullcontext() as bar:
        if isinstance(scheduler, str):
            keys = {task.key for task in tasks}
            count = dask_callback(bar, _images_done, keys) if bar else nullcontext()
            with count:  # the function, not its name: a name makes dask import distributed
                return list(dask.compute(*tasks, scheduler=_LOCAL_GET[scheduler],
                                         num_workers=workers))
        return _gather(scheduler, tasks, retries, bar)


def _images_done(result: Any) -> int:
    """Images of a finished chunk task (ingest, verify), for the progress display."""
    return int(getattr(result, "n", 0))


def _gather(client: Any, tasks: list, retries: int, bar: Progress | None) -> list[Any]:
    """Run the tasks on a cluster, heaviest first, a bounded number in flight; advance ``bar``.

    Submitting every task at once makes the scheduler and the client hold one future per
    chunk; a window of a few tasks per worker thread keeps both flat for any dataset size.
    """
    from distributed import KilledWorker, as_completed

    window = max(8, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))
    waiting = reversed(tasks)  # build_tasks puts the heaviest chunks last
    reports: list[Any] = []
    try:
        running = as_completed(client.compute(list(itertools.islice(waiting, window)),
                                              retries=retries))
        for future in running:
            reports.append(future.result())  # a task's error is raised at once
            future.release()
            if bar:
                bar.advance(_images_done(reports[-1]))
            for task in itertools.islice(waiting, 1):
                running.add(client.compute(task, retries=retries))
        return reports
    except KilledWorker as e:  # the scheduler gave up after allowed-failures worker deaths
        raise SchedulerError(f"workers kept dying while running a chunk task ({e}); "
                             "the store is incomplete: fix the workers and --resume") from None


@contextmanager
def connected(scheduler: Any) -> Iterator[Any]:
    """A local scheduler name or a ``distributed.Client``; a client opened here is closed."""
    if not isinstance(scheduler, str) or scheduler in LOCAL_SCHEDULERS:
        yield scheduler
        return
    client = _connect(scheduler)
    try:
        yield client
    finally:
        client.close()


def _connect(address: str):
    from distributed import Client

    if "://" not in address and ":" not in address:
        raise ValueError(f"unknown scheduler {address!r}: use threads, processes, sync or a "
                         "scheduler address such as tcp://HOST:8786")
    try:
        return Client(address, timeout=dask.config.get("distributed.comm.timeouts.connect"))
    except OSError as e:  # also the TimeoutError of an address nobody listens on
        raise SchedulerError(f"cannot reach the Dask scheduler at {address}: {e}") from None
