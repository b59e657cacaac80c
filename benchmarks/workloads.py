"""The measured workloads. Each measurement runs in a fresh process started by ``run.py``.

A child process reads a JSON spec from its command line, runs one workload and prints one
JSON line: the wall time of the timed region, what it read, a digest of the array it
produced (so the parent can check it against a serial reference) and, for xraybatch
ingest, a scheduling breakdown from timestamps taken inside every chunk task.

Workloads (``spec["kind"]``):

``tutorial``      the tutorial's serial loop: ``cv2.imread(GRAYSCALE)`` + ``cv2.resize``
                  (default bilinear) appended to a list, then ``np.array``.
``pool``          the same per-file function through a plain ``multiprocessing.Pool.map``.
``decode_limit``  read the bytes, parse the header, DCT-scaled decode: nothing else
                  (no resize, hash, histogram or write), on a thread pool of ``workers``.
``ingest``        ``xraybatch.ingest`` with a decode mode and a scheduler.
``reference``     serial, untimed: digests of the reference arrays and fast-vs-exact quality.
``profile``       serial, one thread: where the time goes per stage of the ingest pipeline.
``timeline``      one default ingest with timers on its phases and stages (``timeline.py``).
``loader``        one training epoch through one loader (``loaders.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import math
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
from meter import Meter  # a sibling script: benchmarks/ is on sys.path

import xraybatch
from xraybatch import build, decode, store, tasks

# The package exports the function ``ingest``, which hides the module of the same name.
ingest_mod = importlib.import_module("xraybatch.ingest")

_RUN_CHUNK = tasks.run_chunk  # the real task function, before any instrumentation
#: The ingest stages that the instrumented runs wrap: (module, name) as the callers see them.
_STAGES = {"build_tasks": build, "compute": build, "run_chunk": tasks, "scan": ingest_mod}
_CV_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
               4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
_CV_INTER = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}


# --- the source files ------------------------------------------------------------------------


def source_files(src: str, limit: int | None = None) -> tuple[list[str], list[int], list[str]]:
    """Absolute paths, sizes and class names in the order xraybatch stores them.

    Every workload gets the same order, so every output array can be compared byte for byte.
    ``limit`` keeps an evenly spaced subset (for the profile of a large folder).
    """
    manifest = xraybatch.scan(src, "folder").manifest
    if limit and len(manifest) > limit:
        manifest = manifest.iloc[np.linspace(0, len(manifest) - 1, limit).astype(int)]
    root = os.path.abspath(src)
    return ([os.path.join(root, p) for p in manifest.path], manifest.bytes.tolist(),
            manifest.class_name.tolist())


def _digest(blocks) -> str:
    """SHA-256 of a sequence of uint8 arrays, as if they were concatenated into one array."""
    h = hashlib.sha256()
    for block in blocks:
        h.update(np.ascontiguousarray(block).tobytes())
    return h.hexdigest()


# --- the tutorial loop and its plain parallel version ------------------------------------------


def tutorial_one(path: str, size: int) -> np.ndarray:
    """One file as the tutorial loads it (an unreadable file becomes zeros, as in the store)."""
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is None:
        return np.zeros((size, size), np.uint8)
    return cv2.resize(image, (size, size))


def tutorial(paths: list[str], size: int) -> np.ndarray:
    images = []
    for path in paths:
        images.append(tutorial_one(path, size))
    return np.array(images)


def pool(paths: list[str], size: int, workers: int) -> np.ndarray:
    with multiprocessing.Pool(workers) as p:
        return np.array(p.map(functools.partial(tutorial_one, size=size), paths))


# --- the decode-only limit --------------------------------------------------------------------


def _decode_only(path: str, size: int) -> int:
    data = decode.read_bytes(path)
    header = decode.read_header(data)
    return decode.decode_gray(data, header, decode.dct_scale(header, size)).size


def decode_limit(paths: list[str], size: int, workers: int) -> int:
    """Decoded pixels; threads suffice because OpenCV releases the GIL while decoding."""
    with ThreadPoolExecutor(workers) as ex:
        return sum(ex.map(functools.partial(_decode_only, size=size), paths))


# --- xraybatch ingest, instrumented -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TimedReport(tasks.ChunkReport):
    """A chunk report plus when and where the task ran (wall clock, same on every worker)."""

    started: float = 0.0
    ended: float = 0.0
    worker: str = ""


def timed_run_chunk(task: tasks.ChunkTask, cv_threads: int | None = None,
                    writer: str | None = None) -> TimedReport:
    """``run_chunk`` with timestamps; the tuning sweeps can replace its OpenCV thread count
    (``cv2.setNumThreads(1)``) and its store writer (see :data:`WRITERS`)."""
    started = time.time()
    if cv_threads is None and writer is None:
        report = _RUN_CHUNK(task)
    else:
        cv2.setNumThreads(cv_threads or 1)
        images, hist, records, report = tasks.process_chunk(task)
        WRITERS[writer or "product"](task, images, hist, records)
    return TimedReport(**dataclasses.asdict(report), started=started, ended=time.time(),
                       worker=f"{os.getpid()}-{threading.get_ident()}")


def _write_product(task, images, hist, records) -> None:
    store.write_chunk(store.open_for_chunks(task.ref), task.index, task.start, images, hist,
                      records)


def _write_gather(task, images, hist, records) -> None:
    """Every array through zarr's own ``setitem`` (its asynchronous codec pipeline),
    concurrently in one event-loop trip: the writer before ``xraybatch.zarrio``."""
    import asyncio

    import zarr.api.asynchronous as za
    from zarr.core.sync import sync

    names = ["images", "hist", *store.RECORD_ARRAYS]
    values = [images, hist, *(records[n] for n in store.RECORD_ARRAYS)]
    region = slice(task.start, task.start + len(images))

    async def write() -> None:
        group = await za.open_group(task.ref.local_path, mode="r+", zarr_format=3)
        arrays = await asyncio.gather(*(group.getitem(n) for n in names))
        arrays = [a.with_config({"write_empty_chunks": True}) for a in arrays]
        await asyncio.gather(*(a.setitem(region, v) for a, v in zip(arrays, values,
                                                                    strict=True)))
        done = await group.getitem("chunk_done")
        await done.setitem(task.index, True)  # last, as in store.write_chunk

    sync(write())


def _write_checked(task, images, hist, records) -> None:
    """One array at a time through zarr, with its default test for all-fill chunks."""
    group = store.open_for_chunks(task.ref)
    stop = task.start + len(images)
    for name, value in (("images", images), ("hist", hist), *records.items()):
        group[name].with_config({"write_empty_chunks": False})[task.start:stop] = value
    group["chunk_done"][task.index] = True


#: Store writers compared by the ``write`` sweep.
WRITERS = {"product": _write_product, "empty-check": _write_checked, "gather": _write_gather}


def _codec(name: str):
    """The compressor of the pixels named in the tuning sweeps (None: uncompressed)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "none":
        return None
    if name.startswith("zstd"):
        return ZstdCodec(level=int(name[4:]))
    if name.startswith("blosc-lz4"):
        return BloscCodec(cname="lz4", clevel=int(name[9:] or 5), shuffle="noshuffle")
    raise ValueError(f"unknown codec {name!r}")


class _Instrument:
    """Wrap the ingest stages (module globals) to time them; patches this process only."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.times: dict[str, float] = {}
        self.window = (0.0, 0.0)
        self.spec = spec

    def __enter__(self) -> _Instrument:
        self.saved = {name: getattr(module, name) for name, module in _STAGES.items()}
        self.saved_codec = store.layout.IMAGES_COMPRESSORS
        spec, saved = self.spec, self.saved

        def build_tasks(ref, root, paths, chunks, chunk, **params):
            t0 = time.perf_counter()
            if spec.get("order") == "index":  # no weights: keys, hence the order, by index
                params.pop("weights", None)
            graph = saved["build_tasks"](ref, root, paths, chunks, chunk, **params)
            self.times["graph"] = time.perf_counter() - t0
            return graph

        def compute(*args, **kwargs):
            t0 = time.time()
            try:
                return saved["compute"](*args, **kwargs)
            finally:
                self.window = (t0, time.time())

        def scan(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return saved["scan"](*args, **kwargs)
            finally:
                self.times["scan"] = time.perf_counter() - t0

        build.build_tasks, build.compute, ingest_mod.scan = build_tasks, compute, scan
        tasks.run_chunk = functools.partial(timed_run_chunk, cv_threads=spec.get(
            "cv_threads"), writer=spec.get("writer"))
        if spec.get("codec"):  # the pixels' codec (the other arrays keep Zstd 1)
            store.layout.IMAGES_COMPRESSORS = _codec(spec["codec"])
        return self

    def __exit__(self, *exc) -> None:
        for name, value in self.saved.items():
            setattr(_STAGES[name], name, value)
        store.layout.IMAGES_COMPRESSORS = self.saved_codec


def _schedule(reports: list[TimedReport], workers: int, window: tuple[float, float],
              graph: float, wall: float) -> dict[str, float]:
    """Split the compute window into task time, dispatch overhead and end-of-run idle.

    ``workers x window`` = task time + dispatch (start-up, gaps between tasks, gathering)
    + tail (a worker idle after its last task while another still runs: load imbalance).
    """
    c0, c1 = window
    last_end: dict[str, float] = {}
    for r in reports:
        last_end[r.worker] = max(last_end.get(r.worker, c0), r.ended)
    end = max(last_end.values(), default=c1)
    busy = sum(r.ended - r.started for r in reports)
    tail = sum(end - e for e in last_end.values()) + max(0, workers - len(last_end)) * (end - c0)
    dispatch = workers * (c1 - c0) - busy - tail
    return {"tasks": len(reports), "task_seconds": busy, "compute_seconds": c1 - c0,
            "graph_seconds": graph, "dispatch_seconds": dispatch / workers,
            "tail_seconds": tail / workers,
            "sched_overhead": (graph + dispatch / workers) / wall,
            "tail_fraction": tail / workers / wall,
            "task_seconds_max": max((r.ended - r.started for r in reports), default=0.0)}


def _store_digest(out: str) -> tuple[str, int]:
    group = store.StoreRef(out).open("r")
    images, chunk = group["images"], int(group.attrs["chunk"])
    blocks = (images[a:b] for a, b in store.chunk_bounds(images.shape[0], chunk))
    return _digest(blocks), int(group["valid"][:].sum())


def run_ingest(spec: dict[str, Any]) -> dict[str, Any]:
    workers = spec["workers"]
    out = os.path.join(tempfile.mkdtemp(prefix="xb-bench-", dir=spec.get("tmp")), "out.zarr")
    # Imports are not timed, including the ones dask defers to the first compute
    # (``distributed``, ~0.5 s, even for the threads scheduler).
    for module in ("distributed", "dask.diagnostics", "dask.multiprocessing"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    cluster = client = None
    try:
        t0 = time.perf_counter()
        scheduler: Any = spec["scheduler"]
        if scheduler == "distributed":
            import logging

            from distributed import Client, LocalCluster

            tpw = spec.get("threads_per_worker", 1)
            cluster = LocalCluster(n_workers=max(1, workers // tpw), threads_per_worker=tpw,
                                   processes=True, host="127.0.0.1", dashboard_address=None,
                                   silence_logs=logging.ERROR)
            scheduler = client = Client(cluster)
            # A long-lived cluster has its imports done: warm the workers up (not timed).
            client.run(importlib.import_module, "workloads")
        setup = time.perf_counter() - t0
        params = dict(size=spec["size"], labels="folder", interpolation=spec["interpolation"],
                      decode_mode=spec["mode"], scheduler=scheduler, workers=workers)
        if spec.get("chunk"):
            params["chunk"] = spec["chunk"]
        with _Instrument(spec) as inst, Meter() as meter:
            result = xraybatch.ingest(spec["src"], out, **params)
        digest, n_valid = _store_digest(out)
        return {**meter.result(), "n": result.n_images, "input_bytes": result.bytes_read,
                "setup_seconds": setup, "digest": digest, "n_valid": n_valid,
                "schedule": _schedule(result.reports, workers, inst.window,
                                      inst.times["graph"], meter.seconds),
                "scan_seconds": inst.times["scan"],
                "store_bytes": _du(out)}
    finally:
        if client is not None:
            client.close()
            cluster.close()
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


# --- references and quality (untimed) ---------------------------------------------------------


def reduced_reference(path: str, full: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """The reduced-decode reference, from OpenCV alone: the largest libjpeg scale 1/2..1/8
    whose output keeps both sides >= size (``full`` is the full decode), and the scale."""
    scale = 1
    with open(path, "rb") as f:
        if f.read(3) == b"\xff\xd8\xff":
            scale = next((s for s in (8, 4, 2) if min(-(-full.shape[0] // s),
                                                     -(-full.shape[1] // s)) >= size), 1)
    return (full if scale == 1 else cv2.imread(path, _CV_REDUCED[scale])), scale


def resize_reference(image: np.ndarray, scale: int, size: int,
                     interpolation: str) -> np.ndarray:
    """The resize (``auto``: bilinear after a reduced decode less than 4x ``size`` on its
    longer side, else area)."""
    if interpolation == "auto":
        interpolation = "linear" if scale > 1 and max(image.shape) < 4 * size else "area"
    return cv2.resize(image, (size, size), interpolation=_CV_INTER[interpolation])


_KINDS = ("tutorial", "exact", "fast", "auto", "area")
_COMPARED = ("fast", "auto", "tutorial")  # each against "area" (full decode + INTER_AREA)


def _reference_one(path: str, size: int, interpolation: str) -> tuple[dict, dict]:
    """Every reference output of one file (zeros if OpenCV cannot read it), and the
    squared error, PSNR and max |diff| of the compared ones."""
    full = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if full is None:
        images = dict.fromkeys(_KINDS, np.zeros((size, size), np.uint8))
    else:
        reduced, scale = reduced_reference(path, full, size)
        images = {"tutorial": cv2.resize(full, (size, size)),
                  "exact": cv2.resize(full, (size, size),
                                      interpolation=_CV_INTER[interpolation]),
                  "area": cv2.resize(full, (size, size), interpolation=cv2.INTER_AREA),
                  "fast": resize_reference(reduced, scale, size, interpolation),
                  "auto": resize_reference(reduced, scale, size, "auto")}
    row = {}
    for name in _COMPARED:
        diff = images[name].astype(np.int32) - images["area"]
        row[f"{name}_mse"] = float(np.mean(diff.astype(np.float64) ** 2))
        row[f"{name}_psnr"] = psnr(row[f"{name}_mse"])
        row[f"{name}_maxdiff"] = int(np.abs(diff).max())
    return images, row


def reference(paths: list[str], size: int, interpolation: str) -> dict[str, Any]:
    """Serial cv2 references for every output, and the quality of fast mode (with
    ``interpolation``), of the default (fast, auto) and of the tutorial against a full
    decode + INTER_AREA."""
    hashes = {k: hashlib.sha256() for k in _KINDS}
    per_image = []
    sq = dict.fromkeys(_COMPARED, 0.0)
    maxdiff = dict.fromkeys(_COMPARED, 0)
    links: dict[str, tuple[dict, dict]] = {}
    for path in paths:
        real = os.path.realpath(path)
        images, row = links.get(real) or _reference_one(path, size, interpolation)
        if real != path:  # a link (--replicate): its target is decoded once
            links[real] = images, row
        for name in _KINDS:
            hashes[name].update(images[name].tobytes())
        for name in _COMPARED:
            sq[name] += row[f"{name}_mse"]
            maxdiff[name] = max(maxdiff[name], row[f"{name}_maxdiff"])
        per_image.append({"path": path, **{k: v for k, v in row.items()
                                           if not k.endswith("_mse")}})
    n = max(len(paths), 1)
    quality = {"per_image": per_image}
    for name in _COMPARED:
        quality[f"{name}_psnr"] = psnr(sq[name] / n)
        quality[f"{name}_maxdiff"] = maxdiff[name]
    return {"digests": {k: h.hexdigest() for k, h in hashes.items()}, "quality": quality}


def psnr(mse: float) -> float | None:
    """PSNR in dB for 8-bit images; None (JSON-safe) for identical images."""
    return None if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


# --- where the time goes ----------------------------------------------------------------------


def profile(paths: list[str], classes: list[str], size: int, interpolation: str, mode: str,
            chunk: int, tmp: str | None) -> dict[str, Any]:
    """Serial, one OpenCV thread: seconds per stage summed over the images, and per class."""
    cv2.setNumThreads(1)
    stages = dict.fromkeys(("read", "hash", "header", "decode", "resize", "hist", "write"), 0.0)
    by_class: dict[str, list[float]] = {}

    def timed(stage: str, fn, *args):
        t0 = time.perf_counter()
        value = fn(*args)
        stages[stage] += time.perf_counter() - t0
        return value

    for path, cls in zip(paths, classes, strict=True):
        t_img = time.perf_counter()
        try:
            data = timed("read", decode.read_bytes, path)
            timed("hash", decode.content_hash, data)
            header = timed("header", decode.read_header, data)
            # The decode ingest runs (the reader's, with its damage check).
            pixels = timed("decode", decode.decode_pixels, data, header,
                           decode.Options(size=size, mode=mode))
            method = decode.interpolation_for(interpolation, pixels.scale, pixels.image.shape,
                                              size)
            small = timed("resize", decode.resize, pixels.image, size, method)
            timed("hist", decode.histogram, small)
        except decode.ImageError:
            pass
        by_class.setdefault(cls, []).append(time.perf_counter() - t_img)
    stages["write"] = _write_time(paths, size, interpolation, mode, chunk, tmp)
    return {"n": len(paths), "stages": stages,
            "per_class": {c: {"n": len(v), "seconds": sum(v)} for c, v in by_class.items()}}


def _write_time(paths, size, interpolation, mode, chunk, tmp) -> float:
    """Seconds in ``store.write_chunk`` (compress + zarr + file) for all the chunks."""
    root = tempfile.mkdtemp(prefix="xb-prof-", dir=tmp)
    try:
        import pandas as pd

        ref = store.StoreRef(os.path.join(root, "p.zarr"))
        manifest = pd.DataFrame({"path": paths, "split": "train", "label": 0, "bytes": 0,
                                 "patient_id": ""})
        store.create(ref, manifest, size=size, chunk=chunk, classes=["x"], splits=["train"],
                     attrs={})
        total, group = 0.0, store.open_for_chunks(ref)  # opened once, as by chunk tasks
        for index, (a, b) in enumerate(store.chunk_bounds(len(paths), chunk)):
            task = tasks.ChunkTask(ref, index, a, tuple(paths[a:b]), size, interpolation,
                                   mode, decode.MAX_PIXELS)
            images, hist, records, _ = tasks.process_chunk(task)
            t0 = time.perf_counter()
            store.write_chunk(group, index, a, images, hist, records)
            total += time.perf_counter() - t0
        return total
    finally:
        shutil.rmtree(root, ignore_errors=True)


# --- store layouts ----------------------------------------------------------------------------

#: (name, images per chunk or shard, images per inner chunk or None, compressor)
LAYOUTS = [("chunk 32, zstd 3", 32, None, "zstd3"), ("chunk 32, zstd 1", 32, None, "zstd1"),
           ("chunk 64, zstd 1", 64, None, "zstd1"), ("chunk 64, blosc-lz4", 64, None, "blosc-lz4"),
           ("chunk 64, no compression", 64, None, "none"),
           ("shard 64, inner chunk 1, zstd 1", 64, 1, "zstd1"),
           ("chunk 128, zstd 1", 128, None, "zstd1")]


def store_layouts(paths: list[str], size: int, tmp: str | None, rounds: int = 3) -> list[dict]:
    """The images array alone in each layout: write and read costs (best of ``rounds``)."""
    import zarr

    images = np.stack([decode.process(decode.read_bytes(p), size).image for p in paths])
    rng = np.random.default_rng(0)
    picks = rng.integers(0, len(images), min(64, len(images)))
    rows = []
    for name, chunk, inner, codec in LAYOUTS:
        best = {"write": math.inf, "read_all": math.inf, "read_one": math.inf}
        for _ in range(rounds):
            root = tempfile.mkdtemp(prefix="xb-layout-", dir=tmp)
            try:
                kw = dict(chunks=(inner, size, size), shards=(chunk, size, size)) if inner \
                    else dict(chunks=(chunk, size, size))
                arr = zarr.create_array(os.path.join(root, "a.zarr"), shape=images.shape,
                                        dtype="uint8", compressors=_codec(codec), **kw)
                arr = arr.with_config({"write_empty_chunks": True})
                t0 = time.process_time()
                for a, b in store.chunk_bounds(len(images), chunk):
                    arr[a:b] = images[a:b]
                best["write"] = min(best["write"], time.process_time() - t0)
                t0 = time.perf_counter()
                arr[:]
                best["read_all"] = min(best["read_all"], time.perf_counter() - t0)
                t0 = time.perf_counter()
                for i in picks:
                    arr[int(i)]
                best["read_one"] = min(best["read_one"], (time.perf_counter() - t0) / len(picks))
                nbytes, files = _du(root), sum(len(f) for _, _, f in os.walk(root))
            finally:
                shutil.rmtree(root, ignore_errors=True)
        rows.append({"layout": name, "write_ms_per_image": 1000 * best["write"] / len(images),
                     "read_all_ms_per_image": 1000 * best["read_all"] / len(images),
                     "read_one_ms": 1000 * best["read_one"], "bytes": nbytes, "files": files,
                     "raw_bytes": int(images.nbytes)})
    return rows


# --- the child process ------------------------------------------------------------------------


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one workload described by ``spec``; the timed region excludes imports and the scan."""
    kind, size, workers = spec["kind"], spec["size"], spec.get("workers", 1)
    if kind == "ingest":  # no file list of our own: it would weigh on the measured RSS
        result = run_ingest(spec)
        return {**result, **_maxrss()}
    if kind == "timeline":
        import timeline

        return {**timeline.run(spec["src"], "fast", "auto", workers, size, spec.get("tmp")),
                **_maxrss()}
    if kind == "loader":
        import loaders

        loaders.prepare(spec)  # imports are not timed, as for the other workloads
        with Meter() as meter:
            result = loaders.epoch(spec)
        return {**result, **meter.result(), "input_bytes": 0, **_maxrss()}
    paths, weights, classes = source_files(spec["src"], spec.get("limit"))
    result: dict[str, Any] = {"n": len(paths), "input_bytes": int(sum(weights))}
    if kind == "reference":
        result.update(reference(paths, size, spec["interpolation"]))
    elif kind == "store_layouts":
        result["layouts"] = store_layouts(paths, size, spec.get("tmp"))
    elif kind == "profile":
        result.update(profile(paths, classes, size, spec["interpolation"], spec["mode"],
                              spec["chunk"], spec.get("tmp")))
    else:
        with Meter() as meter:
            if kind == "tutorial":
                out = tutorial(paths, size)
            elif kind == "pool":
                out = pool(paths, size, workers)
            elif kind == "decode_limit":
                out = decode_limit(paths, size, workers)
            else:
                raise ValueError(f"unknown workload {kind!r}")
        result.update(meter.result())
        result["digest"] = _digest([out]) if isinstance(out, np.ndarray) else None
    return {**result, **_maxrss()}


def _maxrss() -> dict[str, int]:
    """Kernel high-water marks of RSS: this process, and its largest reaped child."""
    return {f"maxrss_{who}": resource.getrusage(getattr(resource, f"RUSAGE_{who.upper()}"))
            .ru_maxrss * 1024 for who in ("self", "children")}  # kB on Linux


def main() -> None:
    spec = json.loads(sys.argv[1])
    print(json.dumps(run(spec)), flush=True)


if __name__ == "__main__":
    main()
