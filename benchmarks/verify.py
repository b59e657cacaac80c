"""verify's throughput against ingest's, and what the checksums cost ingest.

On the same folder and store, in interleaved rounds (the order rotates every round):

- ingest into a format-1 store (no checksums, as before) and a format-2 store (CRC-32C on
  the pixels, Zstandard frame checksums elsewhere): the cost of the checksums;
- ``verify`` of the format-2 store (every chunk read and checked, every image's histogram
  recomputed: no source file is read or decoded), ``verify --sources`` (every source file
  re-hashed and the source scanned again), and ``verify`` of the format-1 store.

Medians over the rounds and their ratios, with the machine and its load, go to stdout as
markdown and to ``OUT/results.json``.

    python benchmarks/verify.py ../shared/data/chest_xray_sample --replicate 6 --rounds 5
    python benchmarks/verify.py --synth 240 --rounds 3      # no data at hand
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from meter import Meter  # noqa: E402
from run import replicate, warm_cache  # noqa: E402

import xraybatch  # noqa: E402
from xraybatch import store  # noqa: E402

CONFIGS = ("ingest, format 1 (no checksums)", "ingest, format 2 (checksums)",
           "verify, format 2", "verify --sources, format 2", "verify, format 1 (histograms)")


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import zarr

    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "zarr": zarr.__version__, "load_avg_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _ingest(src: str, out: str, size: int, workers: int, checksums: bool) -> int:
    create = store.create
    store.create = functools.partial(create, checksums=checksums)
    try:
        result = xraybatch.ingest(src, out, size=size, workers=workers, overwrite=True,
                                  labels="kermany3")
    finally:
        store.create = create
    return result.n_images


def _verify(out: str, workers: int, sources: bool) -> int:
    result = xraybatch.verify(out, sources=sources, workers=workers)
    if not result.ok:
        raise SystemExit(f"verify found problems in {out}: "
                         f"{[p.line() for p in result.problems[:3]]}")
    return result.images_checked if not sources else result.sources.files_checked


def one(config: str, src: str, tmp: str, size: int, workers: int) -> dict[str, float]:
    """Run ``config`` once; its wall time, CPU time and images/s."""
    f1, f2 = os.path.join(tmp, "f1.zarr"), os.path.join(tmp, "f2.zarr")
    with Meter() as meter:
        if config.startswith("ingest"):
            n = _ingest(src, f2 if "format 2" in config else f1, size, workers,
                        "format 2" in config)
        else:
            n = _verify(f1 if "format 1" in config else f2, workers, "--sources" in config)
    return {**meter.result(), "n": n, "images_per_second": n / meter.seconds}


def codec_cost(store_path: str, tmp: str, repeat: int = 31) -> dict[str, float]:
    """Milliseconds per chunk to encode and to decode (zarrio, as ingest and verify do) the
    first images and hist chunks of ``store_path`` with and without their checksum codec:
    the four variants in turn, ``repeat`` times, medians."""
    import numpy as np
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    from xraybatch import zarrio

    src = zarr.open_group(store_path, mode="r")
    values = {"images": src["images"].blocks[0], "hist": src["hist"].blocks[0]}
    group = zarr.open_group(os.path.join(tmp, "codecs.zarr"), mode="w")
    codecs = {("images", "plain"): None, ("images", "checksum"): Crc32cCodec(),
              ("hist", "plain"): ZstdCodec(level=1),
              ("hist", "checksum"): ZstdCodec(level=1, checksum=True)}
    arrays = {key: group.create_array(f"{key[0]}-{key[1]}", shape=values[key[0]].shape,
                                      chunks=values[key[0]].shape, dtype=values[key[0]].dtype,
                                      compressors=codec)._async_array
              for key, codec in codecs.items()}
    times: dict[str, list[float]] = {}
    for _ in range(repeat):
        for (name, label), array in arrays.items():
            t0 = time.perf_counter()
            _, data = zarrio.encode_chunk(array, 0, values[name])
            t1 = time.perf_counter()
            back = zarrio.decode_chunk(array, (0,) * values[name].ndim, data)
            t2 = time.perf_counter()
            assert np.array_equal(back, values[name])
            times.setdefault(f"{name} {label}: encode ms/chunk", []).append((t1 - t0) * 1e3)
            times.setdefault(f"{name} {label}: decode ms/chunk", []).append((t2 - t1) * 1e3)
    return {**{k: statistics.median(v) for k, v in times.items()},
            "rows per chunk": len(values["images"])}


def run(src: str, tmp: str, rounds: int, size: int, workers: int) -> dict[str, Any]:
    info = machine()
    warm_cache(src)
    for config in CONFIGS[:2]:  # the stores verify reads, and a warm-up of each ingest
        one(config, src, tmp, size, workers)
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for r in range(rounds):
        order = CONFIGS[r % len(CONFIGS):] + CONFIGS[:r % len(CONFIGS)]
        # verify reads the stores the ingests of this round rewrote: ingest first.
        order = sorted(order, key=lambda c: not c.startswith("ingest"))
        for config in order:
            runs[config].append(one(config, src, tmp, size, workers))
    info["load_avg_end"] = os.getloadavg()
    medians = {c: {k: statistics.median(x[k] for x in v) for k in v[0]}
               for c, v in runs.items()}
    ingest2 = medians[CONFIGS[1]]["images_per_second"]
    ratios = {
        "checksum cost (ingest f2 s / f1 s)":
            medians[CONFIGS[1]]["seconds"] / medians[CONFIGS[0]]["seconds"],
        "checksum cost (ingest f2 CPU s / f1 CPU s)":
            medians[CONFIGS[1]]["cpu_seconds"] / medians[CONFIGS[0]]["cpu_seconds"],
        "verify / ingest (images per CPU s)":
            medians[CONFIGS[1]]["cpu_seconds"] / medians[CONFIGS[2]]["cpu_seconds"],
        "verify / ingest (images/s)": medians[CONFIGS[2]]["images_per_second"] / ingest2,
        "verify --sources / ingest (images/s)":
            medians[CONFIGS[3]]["images_per_second"] / ingest2,
    }
    codecs = codec_cost(os.path.join(tmp, "f2.zarr"), tmp)
    return {"machine": info, "rounds": rounds, "size": size, "workers": workers,
            "medians": medians, "ratios": ratios, "codecs": codecs, "runs": runs}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = lambda key: ", ".join(f"{x:.2f}" for x in m[key])  # noqa: E731
    lines = [f"{m['cores']} cores ({m['cpu']}), Python {m['python']}, zarr {m['zarr']}; "
             f"{m['date']}; load average {load('load_avg_start')} at the start, "
             f"{load('load_avg_end')} at the end; median of {results['rounds']} interleaved "
             f"rounds, {results['workers']} workers, size {results['size']}",
             "", "| configuration | images | s | images/s | CPU s | other load (cores) |",
             "|---|--:|--:|--:|--:|--:|"]
    for config, r in results["medians"].items():
        lines.append(f"| {config} | {r['n']:.0f} | {r['seconds']:.2f} | "
                     f"{r['images_per_second']:,.0f} | {r['cpu_seconds']:.2f} | "
                     f"{r['background_cores']:.2f} |")
    lines += ["", *(f"- {name}: {value:.3f}" for name, value in results["ratios"].items())]
    lines += ["", f"Codecs alone, one chunk of {results['codecs']['rows per chunk']:.0f} rows "
              "(ms, median of 31, variants interleaved):", "",
              *(f"- {name}: {value:.3f}" for name, value in results["codecs"].items()
                if name != "rows per chunk")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", nargs="?", help="a Kermany-shaped folder (default: --synth)")
    p.add_argument("--synth", type=int, default=0, help="use N synthetic images instead")
    p.add_argument("--synth-scale", type=float, default=1.0)
    p.add_argument("--replicate", type=int, default=1, help="link every file K times")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="bench-verify", help="folder for results.json")
    p.add_argument("--tmp", default=None, help="folder for the stores (default: a temp dir)")
    args = p.parse_args(argv)
    if not args.src and not args.synth:
        p.error("give SRC or --synth N")
    tmp = tempfile.mkdtemp(prefix="xrb-verify-", dir=args.tmp)
    try:
        src = args.src
        if args.synth:
            src = os.path.join(tmp, "synth")
            xraybatch.synth_dataset(src, n=args.synth, seed=0, scale=args.synth_scale)
        if args.replicate > 1:
            src = replicate(src, os.path.join(tmp, "replicated"), args.replicate)
        results = run(src, tmp, args.rounds, args.size, args.workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    Path(args.out, "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
