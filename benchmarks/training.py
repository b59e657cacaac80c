"""Training-loader benchmark: xraybatch against LitData, WebDataset, plain zarr and ImageFolder.

    python benchmarks/training.py SRC [--replicate 6] [--epochs 4] [--repeat 3] [--out DIR]

On the same images (SRC's files linked ``--replicate`` times), it times writing each format
(xraybatch ingest; LitData ``optimize`` of uint8 arrays decoded and resized as the tutorial
does; WebDataset shards of the same arrays), then, each run in a fresh process and the runs
interleaved, ``--epochs`` shuffled epochs of every loader, with batches of 32 uint8 images
``size`` x ``size`` and ``num_workers`` 0 and 2: samples/s of the first epoch (which includes
building the dataset and loader and starting the workers) and of the later ones, and the
time to the first batch. Medians over ``--repeat`` runs; the machine's load beside them.
``--long N`` adds a store of >= N images (SRC linked more times) and compares XrayLoader's
first epoch with 0 and 2 workers on it. Competitors that are not installed are left out with
one line each (``pip install litdata webdataset torchvision``). Results: OUT/training.json and
OUT/training.md (pasted into benchmarks/README.md, "Training loaders against LitData").
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
#: Loader name -> (kind, workers). zarr: the main process only (the baseline of the target).
LOADERS = {
    "xraybatch XrayLoader (batched), workers 0": ("xrb_batched", 0),
    "xraybatch XrayLoader (batched), workers 2": ("xrb_batched", 2),
    "xraybatch XrayDataset (map-style) + ChunkShuffleSampler, workers 0": ("xrb_map", 0),
    "xraybatch XrayDataset (map-style) + ChunkShuffleSampler, workers 2": ("xrb_map", 2),
    "xraybatch XrayDataset + ChunkShuffleSampler + collate, workers 0": ("xrb_map_np", 0),
    "xraybatch XrayDataset + ChunkShuffleSampler + collate, workers 2": ("xrb_map_np", 2),
    "zarr, whole chunks sliced into batches (unsharded copy), workers 0": ("zarr", 0),
    "zarr, whole shards of the xraybatch store sliced into batches, workers 0":
        ("zarr_shards", 0),
    "LitData StreamingDataset + StreamingDataLoader, workers 0": ("litdata", 0),
    "LitData StreamingDataset + StreamingDataLoader, workers 2": ("litdata", 2),
    "WebDataset shards + WebLoader, workers 0": ("wds", 0),
    "WebDataset shards + WebLoader, workers 2": ("wds", 2),
    "torchvision ImageFolder (JPEG decode + resize), workers 2": ("imagefolder", 2),
}
NEEDS = {"litdata": "litdata", "wds": "webdataset", "imagefolder": "torchvision"}
#: Imported before the clock starts (torch alone takes seconds).
IMPORTS = {"xrb_batched": ("xraybatch.torch_dataset",),
           "xrb_map": ("xraybatch.torch_dataset", "torch.utils.data"),
           "xrb_map_np": ("xraybatch.torch_dataset", "torch.utils.data"), "zarr": ("zarr",),
           "zarr_shards": ("zarr",),
           "litdata": ("litdata",), "wds": ("webdataset",),
           "imagefolder": ("torch.utils.data", "torchvision.datasets", "torchvision.transforms")}


def files(src: str) -> list[tuple[str, int]]:
    """(path, class index) of every image under SRC's class folders (split/class/file)."""
    paths = sorted(glob.glob(os.path.join(src, "*", "*", "*")))
    classes = sorted({Path(p).parent.name for p in paths})
    return [(p, classes.index(Path(p).parent.name)) for p in paths]


def decode(item: tuple[str, int], size: int = 256) -> dict[str, Any]:
    """The tutorial's decode: grayscale, bilinear resize to size x size, uint8."""
    import cv2

    path, label = item
    image = cv2.resize(cv2.imread(path, cv2.IMREAD_GRAYSCALE), (size, size),
                       interpolation=cv2.INTER_LINEAR)
    return {"image": image, "label": label}


# --- writing ----------------------------------------------------------------------------


def write(fmt: str, src: str, out: str, size: int) -> None:
    if os.path.exists(out):
        shutil.rmtree(out)
    if fmt == "xraybatch":
        import xraybatch

        xraybatch.ingest(src, out, size=size)
    elif fmt == "litdata":
        from functools import partial

        import litdata

        litdata.optimize(fn=partial(decode, size=size), inputs=files(src), output_dir=out,
                         num_workers=2, chunk_bytes="64MB")
    elif fmt == "wds":
        from multiprocessing import Pool

        import webdataset as wds

        os.makedirs(out)
        with Pool(2) as pool, wds.ShardWriter(os.path.join(out, "shard-%05d.tar"),
                                             maxcount=256, verbose=0) as sink:
            for i, s in enumerate(pool.imap(decode, files(src), chunksize=8)):
                sink.write({"__key__": f"{i:07d}", "npy": s["image"], "cls": s["label"]})
    else:
        raise ValueError(fmt)


# --- reading ----------------------------------------------------------------------------


def make_loader(spec: dict[str, Any]):
    """An iterable of epochs: each call of iter() is one shuffled epoch of uint8 batches."""
    kind, w, b, path = spec["loader"], spec["workers"], spec["batch"], spec["path"]
    persistent = {"persistent_workers": w > 0}
    if kind == "xrb_batched":
        from xraybatch.torch_dataset import XrayDataset, XrayLoader

        return XrayLoader(XrayDataset(path, dtype="uint8"), batch_size=b, num_workers=w)
    if kind in ("xrb_map", "xrb_map_np"):
        from torch.utils.data import DataLoader

        from xraybatch.torch_dataset import ChunkShuffleSampler, XrayDataset, collate

        ds = XrayDataset(path, dtype="uint8")
        extra = {"collate_fn": collate} if kind == "xrb_map_np" else {}
        return DataLoader(ds, batch_size=b, sampler=ChunkShuffleSampler(ds, seed=0),
                          num_workers=w, **persistent, **extra)
    if kind in ("zarr", "zarr_shards"):
        return _ZarrChunks(path, b)
    if kind == "litdata":
        import litdata

        ds = litdata.StreamingDataset(input_dir=path, shuffle=True, seed=0)
        return litdata.StreamingDataLoader(ds, batch_size=b, num_workers=w, **persistent)
    if kind == "wds":
        import webdataset as wds

        urls = sorted(glob.glob(os.path.join(path, "shard-*.tar")))
        ds = (wds.WebDataset(urls, shardshuffle=len(urls), seed=0, empty_check=False)
              .shuffle(1000).decode().to_tuple("npy", "cls").batched(b))
        return wds.WebLoader(ds, batch_size=None, num_workers=w, **persistent)
    if kind == "imagefolder":
        from torch.utils.data import ConcatDataset, DataLoader
        from torchvision import datasets, transforms

        tf = transforms.Compose([transforms.Grayscale(), transforms.Resize((spec["size"],) * 2),
                                 transforms.PILToTensor()])
        roots = sorted(glob.glob(os.path.join(path, "*")))
        ds = ConcatDataset([datasets.ImageFolder(r, transform=tf, allow_empty=True)
                            for r in roots])
        return DataLoader(ds, batch_size=b, shuffle=True, num_workers=w, **persistent)
    raise ValueError(kind)


class _ZarrChunks:
    """Plain zarr: whole chunk files (shards, for a sharded array) in a random order, rows
    shuffled, sliced into uint8 batches."""

    def __init__(self, path: str, batch: int) -> None:
        import zarr

        self.images = zarr.open_array(path, path="images", mode="r")
        self.batch, self.rng = batch, np.random.default_rng(0)

    def __iter__(self):
        n, c = self.images.shape[0], (self.images.shards or self.images.chunks)[0]
        for k in self.rng.permutation(-(-n // c)):
            block = self.images[k * c:min((k + 1) * c, n)]
            block = block[self.rng.permutation(len(block))]
            for a in range(0, len(block), self.batch):
                yield block[a:a + self.batch], None


def unsharded_copy(store: str, dest: str) -> None:
    """The store's images as plain zarr reads them fastest: one chunk file per 128 images
    (not sharded), the same CRC-32C codec (the baseline of the issue's 0.9x target)."""
    import zarr
    from zarr.codecs import Crc32cCodec

    images = zarr.open_array(store, path="images", mode="r")
    rows = (images.shards or images.chunks)[0]
    copy = zarr.create_array(dest, name="images", shape=images.shape, dtype=images.dtype,
                             chunks=(rows, *images.shape[1:]), compressors=Crc32cCodec(),
                             fill_value=0, overwrite=True)
    for a in range(0, images.shape[0], rows):
        copy[a:a + rows] = images[a:a + rows]


def batch_images(batch: Any) -> Any:
    if isinstance(batch, dict):
        return batch["image"]
    return batch[0]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Epochs of one loader: per epoch samples, seconds, seconds to the first batch."""
    import importlib

    import torch

    for module in IMPORTS[spec["loader"]]:
        importlib.import_module(module)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    loader = make_loader(spec)
    epochs = []
    for e in range(spec["epochs"]):
        start = t0 if e == 0 else time.perf_counter()
        first, n = None, 0
        for batch in loader:
            images = batch_images(batch)
            if first is None:
                first = time.perf_counter() - start
            assert images.dtype in (np.uint8, torch.uint8), images.dtype
            n += len(images)
            int(images[0].reshape(-1)[0])  # touch the data
        epochs.append({"n": n, "seconds": time.perf_counter() - start, "first": first})
    del loader
    return {"epochs": epochs, "load": [load0, os.getloadavg()[0]]}


def measure(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(HERE.parent), os.environ.get("PYTHONPATH", "")])})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _one(spec: dict[str, Any]) -> None:
    if spec["kind"] == "write":
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        write(spec["format"], spec["src"], spec["path"], spec["size"])
        print(json.dumps({"seconds": time.perf_counter() - t0,
                          "load": [load0, os.getloadavg()[0]]}))
    else:
        print(json.dumps(run(spec)))


# --- the run ----------------------------------------------------------------------------


def available(kind: str) -> bool:
    module = NEEDS.get(kind)
    return module is None or importlib.util.find_spec(module) is not None


def summarize_reads(runs: list[dict], n: int) -> dict[str, Any]:
    ok = [r for r in runs if "epochs" in r]
    if not ok:
        return {"error": runs[0].get("error", "no run")}
    med = statistics.median
    first = [r["epochs"][0] for r in ok]
    later = [e for r in ok for e in r["epochs"][1:]]
    return {"runs": len(ok), "n": n,
            "first_epoch_sps": med(e["n"] / e["seconds"] for e in first),
            "later_epoch_sps": med(e["n"] / e["seconds"] for e in later) if later else None,
            "first_batch_s": med(e["first"] for e in first),
            "later_first_batch_s": med(e["first"] for e in later) if later else None,
            "load": med(x for r in ok for x in r["load"])}


def table(results: dict[str, Any]) -> str:
    lines = [f"Machine: {results['machine']}; load average {results['load_start']:.2f} at the "
             f"start, {results['load_end']:.2f} at the end; {results['n']} images "
             f"{results['size']} x {results['size']}, batches of {results['batch']} uint8, "
             f"{results['epochs']} epochs per run, median of {results['repeat']} runs.", "",
             "| format | write s | images/s written |", "|---|--:|--:|"]
    for fmt, w in results["writes"].items():
        lines.append(f"| {fmt} | {w['seconds']:.2f} | {results['n'] / w['seconds']:.0f} |"
                     if "seconds" in w else f"| {fmt} | {w['error']} | |")
    lines += ["", "| loader | first epoch samples/s | later epochs samples/s | first batch s "
              "(first epoch) | first batch s (later) | load |", "|---|--:|--:|--:|--:|--:|"]
    for name, r in results["reads"].items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | |")
            continue
        later = f"{r['later_epoch_sps']:,.0f}" if r["later_epoch_sps"] else ""
        lfb = f"{r['later_first_batch_s']:.3f}" if r["later_first_batch_s"] is not None else ""
        lines.append(f"| {name} | {r['first_epoch_sps']:,.0f} | {later} | "
                     f"{r['first_batch_s']:.3f} | {lfb} | {r['load']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", nargs="?")
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--replicate", type=int, default=6)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--write-repeat", type=int, default=1)
    p.add_argument("--only", default="", help="comma-separated loader kinds to run")
    p.add_argument("--long", type=int, default=0, help="also a store of >= LONG images")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--out", default="bench-training")
    args = p.parse_args(argv)
    if args.one:
        _one(json.loads(args.one))
        return 0
    if not args.src:
        p.error("SRC is required")
    # This repository's xraybatch (as the measured subprocesses get through PYTHONPATH),
    # not one installed in the competitors' venv: the long run ingests here.
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    from run import machine, replicate, warm_cache

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = str(out / "data")
    if not os.path.isdir(data):
        replicate(args.src, data, args.replicate)
    warm_cache(data)
    n = len(files(data))
    m = machine()
    results: dict[str, Any] = {
        "machine": f"{m['cores']} cores, {m['cpu']}, Python {m['python']}", "n": n,
        "size": args.size, "batch": args.batch, "epochs": args.epochs, "repeat": args.repeat,
        "load_start": os.getloadavg()[0], "writes": {}, "reads": {}}
    paths = {"xraybatch": str(out / "x.zarr"), "litdata": str(out / "litdata"),
             "wds": str(out / "wds")}
    kinds = set(args.only.split(",")) if args.only else None
    formats = [f for f in paths if available(f) and (kinds is None or f in kinds
                                                     or f == "xraybatch")]
    writes: dict[str, list] = {f: [] for f in formats}
    for r in range(args.write_repeat):  # interleaved; the last write of each stays
        for fmt in formats:
            spec = {"kind": "write", "format": fmt, "src": data, "path": paths[fmt],
                    "size": args.size}
            writes[fmt].append(measure(spec, args.timeout))
            print(f"write {fmt} ({r + 1}): {writes[fmt][-1]}", flush=True)
    results["writes"] = {f: ({"seconds": statistics.median(w["seconds"] for w in ws if
                                                             "seconds" in w)}
                             if any("seconds" in w for w in ws) else ws[0])
                         for f, ws in writes.items()}
    unsharded_copy(paths["xraybatch"], str(out / "plain.zarr"))
    where = {"xrb_batched": paths["xraybatch"], "xrb_map": paths["xraybatch"],
             "xrb_map_np": paths["xraybatch"], "zarr": str(out / "plain.zarr"),
             "zarr_shards": paths["xraybatch"], "litdata": paths["litdata"],
             "wds": paths["wds"], "imagefolder": data}
    specs = {}
    for name, (kind, w) in LOADERS.items():
        if kinds is not None and kind not in kinds:
            continue
        if not available(kind):
            print(f"{name}: {NEEDS[kind]} not installed, left out", flush=True)
            continue
        epochs = 2 if kind == "imagefolder" else args.epochs  # ~100x slower: 2 epochs
        specs[name] = {"kind": "read", "loader": kind, "workers": w, "batch": args.batch,
                       "epochs": epochs, "path": where[kind], "size": args.size}
    runs: dict[str, list] = {name: [] for name in specs}
    for r in range(args.repeat):
        for name, spec in specs.items():
            if spec["loader"] == "imagefolder" and r > 0:
                continue  # 10+ s an epoch: one run
            runs[name].append(measure(spec, args.timeout))
            res = runs[name][-1]
            brief = ([round(e["n"] / e["seconds"]) for e in res["epochs"]]
                     + [f"first batch {res['epochs'][0]['first']:.4f} s"]
                     if "epochs" in res else res)
            print(f"round {r + 1} {name}: {brief}", flush=True)
    results["reads"] = {name: summarize_reads(rs, n) for name, rs in runs.items()}
    results["runs"] = runs  # round by round
    if args.long:
        results["long"] = long_run(args, out)
    results["load_end"] = os.getloadavg()[0]
    (out / "training.json").write_text(json.dumps(results, indent=1))
    text = table(results)
    if args.long:
        text += "\n" + long_table(results["long"])
    (out / "training.md").write_text(text)
    print(text)
    return 0


def long_run(args, out: Path) -> dict[str, Any]:
    """XrayLoader's first (and second) epoch on >= args.long images, workers 0 and 2."""
    from run import replicate

    import xraybatch

    k = -(-args.long // len(files(args.src)))
    data = str(out / f"data-x{k}")
    if not os.path.isdir(data):
        replicate(args.src, data, k)
    store = str(out / f"long-x{k}.zarr")
    if not os.path.exists(store):
        xraybatch.ingest(data, store, size=args.size)
    n = len(xraybatch.open(store))
    specs = {f"XrayLoader, workers {w}": {"kind": "read", "loader": "xrb_batched", "workers": w,
                                          "batch": args.batch, "epochs": 2, "path": store,
                                          "size": args.size} for w in (0, 2)}
    runs: dict[str, list] = {name: [] for name in specs}
    for r in range(args.repeat):
        for name, spec in specs.items():
            runs[name].append(measure(spec, args.timeout))
            print(f"long round {r + 1} {name}: {runs[name][-1]}", flush=True)
    return {name: summarize_reads(rs, n) for name, rs in runs.items()}


def long_table(long: dict[str, Any]) -> str:
    lines = ["| loader (long epoch) | images | first epoch samples/s | second epoch samples/s "
             "| first batch s | load |", "|---|--:|--:|--:|--:|--:|"]
    for name, r in long.items():
        if "error" in r:
            lines.append(f"| {name} | {r['error']} | | | | |")
            continue
        lines.append(f"| {name} | {r['n']:,} | {r['first_epoch_sps']:,.0f} | "
                     f"{r['later_epoch_sps']:,.0f} | {r['first_batch_s']:.3f} | {r['load']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
