"""Append benchmark: ingest 90% of a folder, append the other 10%; against a fresh ingest of
the same 10% alone and a full re-ingest of the union; ``stats`` after the append (from the
stored partials) against a fresh ``stats`` (every histogram read).

    python benchmarks/append.py [SRC] [--n 496] [--fraction 0.1] [--repeat 5] [--size 256]
                                [--workers 2]

SRC is a folder of JPEGs (default: ../shared/data/chest_xray_sample, else a synthetic set);
its files are replicated (byte copies under new names) to ``--n`` images in a temporary
folder. A seeded ``--fraction`` of them (spread over every split and class) is held back for
the append. Each round makes a fresh copy of the 90% store (not timed), then times, in a
rotated order: the append, an ingest of the held-back files alone into a new store, a full
ingest of the union, ``stats`` of the appended store and ``stats`` of the same store with its
partials ignored. Medians of ``--repeat`` rounds and their ratios are printed as Markdown
(benchmarks/README.md, section "Append"), with the machine and its load average. The
appended store is checked equal to the fresh ingest of the union (rows reordered). The
temporary folder is removed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import xraybatch

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parents[1] / "shared/data/chest_xray_sample"
CONFIGS = ("append 10%", "ingest 10% alone", "ingest union", "open store",
           "stats after append", "stats fresh")


def replicate(src: Path | None, n: int, root: Path) -> Path:
    """``n`` images under ``root/data``: the files of ``src`` copied round-robin, copy k
    named ``NAME_rK.ext`` in the same split/class folder (kermany3 names are kept)."""
    if src is None and DEFAULT_SRC.is_dir():
        src = DEFAULT_SRC
    if src is None:
        src = root / "synth"
        xraybatch.synth_dataset(src, n=min(n, 240), seed=0, workers=1)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    data = root / "data"
    for i in range(n):
        path = files[i % len(files)]
        rel = path.relative_to(src)
        target = data / rel.with_name(f"{rel.stem}_r{i // len(files)}{rel.suffix}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return data


def hold_back(data: Path, fraction: float, away: Path, seed: int = 0) -> list[Path]:
    """Move a seeded ``fraction`` of the files to ``away`` (same relative paths)."""
    files = sorted(data.rglob("*.jpeg"))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(files), max(1, round(fraction * len(files))), replace=False))
    moved = []
    for i in chosen:
        target = away / files[i].relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(files[i], target)
        moved.append(target)
    return moved


def put_back(away: Path, data: Path) -> None:
    for p in sorted(away.rglob("*.jpeg")):
        p.replace(data / p.relative_to(away))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _stats_pair(out: Path) -> dict[str, float]:
    """``stats`` of an open store from its partials, and with them ignored (every histogram
    and patient id read, as before partials existed); opening it is timed apart."""
    t0 = time.perf_counter()
    ds = xraybatch.open(str(out))
    opened = time.perf_counter() - t0
    after = _timed(ds.stats)
    ds.stats_partials = lambda: None
    fresh = _timed(ds.stats)
    return {"open store": opened, "stats after append": after, "stats fresh": fresh}


def stats_scale(n: int, root: Path, repeat: int) -> dict[str, float]:
    """Medians of :func:`_stats_pair` on a synthetic store of ``n`` small images, 10% of them
    appended (the statistics read the same per-image arrays whatever the image size)."""
    data = root / "stats_src"
    xraybatch.synth_dataset(data, n=n, seed=1, scale=0.08, workers=2)
    hold_back(data, 0.1, root / "stats_away")
    out = root / "stats.zarr"
    xraybatch.ingest(data, out, size=32, labels="kermany3", progress=False)
    put_back(root / "stats_away", data)
    xraybatch.ingest(data, out, size=32, labels="kermany3", append=True, progress=False)
    runs = [_stats_pair(out) for _ in range(repeat)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def _check(appended: Path, union: Path) -> str:
    """The appended store equals the fresh ingest of the union, rows reordered."""
    a, f = xraybatch.open(str(appended)), xraybatch.open(str(union))
    order = pd.Series(range(len(f)), index=f.array("path")[:])[a.array("path")[:]].to_numpy()
    same = (np.array_equal(a.read_images(slice(None)), f.read_images(order))
            and np.array_equal(a.array("hist")[:], f.array("hist")[:][order])
            and a.stats() == f.stats())
    return "= union" if same else "DIFFERS"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", nargs="?", type=Path)
    ap.add_argument("--n", type=int, default=496)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--stats-n", type=int, default=0,
                    help="also compare stats on a synthetic store of this many small images")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="xrb-append-") as tmp:
        root = Path(tmp)
        data = replicate(args.src, args.n, root)
        held = hold_back(data, args.fraction, root / "alone")
        kw = dict(size=args.size, labels="kermany3", workers=args.workers, progress=False)
        base = root / "base.zarr"
        xraybatch.ingest(data, base, **kw)
        put_back(root / "alone", data)
        shutil.copytree(data, root / "alone_src")  # the 10% alone, same relative paths
        alone_src = root / "alone_src"
        keep = {p.relative_to(root / "alone").as_posix() for p in held}
        for p in sorted(alone_src.rglob("*.jpeg")):
            if p.relative_to(alone_src).as_posix() not in keep:
                p.unlink()
        times: dict[str, list[float]] = {c: [] for c in CONFIGS}
        check = ""
        out, alone, union = root / "out.zarr", root / "alone.zarr", root / "union.zarr"
        runs = {
            "append 10%": lambda: xraybatch.ingest(data, out, append=True, **kw),
            "ingest 10% alone": lambda: xraybatch.ingest(alone_src, alone, **kw),
            "ingest union": lambda: xraybatch.ingest(data, union, **kw),
        }
        _timed(lambda: xraybatch.open(str(base)).stats())  # imports and caches warm
        for r in range(args.repeat):
            for p in (out, alone, union):
                shutil.rmtree(p, ignore_errors=True)
            shutil.copytree(base, out)
            order = list(runs)[r % 3:] + list(runs)[:r % 3]
            for name in order:
                times[name].append(_timed(runs[name]))
            for name, seconds in _stats_pair(out).items():
                times[name].append(seconds)
            if r == 0:
                check = _check(out, union)
        n_new = len(held)
        n_all, chunk = len(xraybatch.open(str(out))), xraybatch.open(str(out)).chunk
        scale = stats_scale(args.stats_n, root, args.repeat) if args.stats_n else None
    med = {c: statistics.median(v) for c, v in times.items()}
    load_after = os.getloadavg()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.system()} {platform.release()}; load average before "
          f"{load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(f"{n_all} images ({n_new} appended), size {args.size}, {args.workers} workers, "
          f"{args.repeat} rounds, chunk {chunk}; "
          f"check: {check}\n")
    print("| configuration | median s | images/s | ratio |")
    print("|---|---|---|---|")
    ratios = {"append 10%": f"{med['append 10%'] / med['ingest 10% alone']:.2f}x alone, "
                            f"{100 * med['append 10%'] / med['ingest union']:.1f}% of union",
              "stats after append": f"{100 * med['stats after append'] / med['stats fresh']:.1f}%"
                                    " of fresh"}
    for c in CONFIGS:
        n = n_new if c in ("append 10%", "ingest 10% alone") else n_all
        rate = f"{n / med[c]:.0f}" if c.startswith(("append", "ingest")) else ""
        print(f"| {c} | {med[c]:.3f} | {rate} | {ratios.get(c, '')} |")
    print("\nevery round, s: " + "; ".join(f"{c} " + " ".join(f"{t:.2f}" for t in v)
                                          for c, v in times.items()))
    if scale:
        print(f"\nstats on a synthetic store of {args.stats_n} images (10% appended), "
              f"medians of {args.repeat}: open {scale['open store']:.3f} s, after append "
              f"{scale['stats after append']:.3f} s, fresh {scale['stats fresh']:.3f} s "
              f"({100 * scale['stats after append'] / scale['stats fresh']:.1f}% of fresh)")


if __name__ == "__main__":
    main()
