"""Scale benchmark: does the client's memory and time per image stay flat as the set grows?

    python benchmarks/scale.py [--sizes 5000,50000] [--repeat 2] [--rows 1000000] [--quick]

On tiny synthetic images (64 x 64 JPEGs, so that the run measures the pipeline and not the
decoder) it runs ingest, stats and report at each size, each in a fresh Python process
(imports not timed), interleaved over the repeats, and records the wall time per image and
the process's peak RSS (``ru_maxrss``: threads scheduler, so the client is the process).
Then it times the plan and graph of a table of ``--rows`` rows (NIH layout; the files need
not exist): reading and mapping the table, the store layout, and one Dask task per chunk.
``--quick`` is a smoke test (500 and 5,000 images, 100,000 rows, one repeat).
Results: OUT/scale.json and a Markdown table on stdout (see benchmarks/README.md, "Scale").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
STEPS = ("ingest", "stats", "report")
IMAGE = 64
CLASSES = ("NORMAL", "PNEUMONIA")


def make_images(root: Path, n: int, seed: int = 0) -> None:
    """``root/{train,test}/{NORMAL,PNEUMONIA}/img_NNNNNNN.jpeg``: n distinct 64 x 64 JPEGs."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (IMAGE, IMAGE)).astype(np.int16)
    for i in range(n):
        folder = root / ("train" if i % 5 else "test") / CLASSES[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        image = np.clip(base + (i % 97) - 48 + rng.integers(-8, 9, (IMAGE, IMAGE)), 0, 255)
        ok, buf = cv2.imencode(".jpeg", image.astype(np.uint8))
        (folder / f"img_{i:07d}.jpeg").write_bytes(buf.tobytes())


def make_table(path: Path, rows: int) -> None:
    """A Data_Entry_2017.csv-shaped table of ``rows`` rows naming files that do not exist."""
    findings = ("Atelectasis", "Effusion|Infiltration", "No Finding", "Mass|Nodule|Edema")
    with open(path, "w") as f:
        f.write("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
                "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n")
        for i in range(rows):
            f.write(f"{i // 4:08d}_{i % 4:03d}.png,{findings[i % 4]},{i % 4},{i // 4},50,M,PA,"
                    "2500,2048,0.143,0.143\n")


# --- one measurement, in a fresh process -----------------------------------------------------


def child(step: str, src: str, out: str) -> dict:
    import xraybatch
    from xraybatch import store
    from xraybatch.options import DEFAULT_CHUNK
    from xraybatch.scan import scan
    from xraybatch.tasks import build_tasks

    rss0 = _peak_rss()
    t0 = time.perf_counter()
    n = None
    if step == "ingest":
        n = xraybatch.ingest(src, out, size=IMAGE, overwrite=True).n_images
    elif step == "stats":
        ds = xraybatch.open(out)
        n = ds.stats()["images"]
    elif step == "report":
        n = xraybatch.write_report(out, out + "-report", overwrite=True).n_images
    elif step == "plan":  # src is the table; out a scratch store
        found = scan(None, files=src, columns=_nih())
        t_scan = time.perf_counter() - t0
        ref = store.StoreRef(out)
        group = store.create(ref, found.manifest, size=IMAGE, chunk=DEFAULT_CHUNK,
                             classes=found.classes, splits=found.splits, attrs={},
                             overwrite=True, findings=found.findings)
        t_store = time.perf_counter() - t0 - t_scan
        chunks = list(range(store.n_chunks(len(found.manifest), DEFAULT_CHUNK)))
        tasks = build_tasks(ref, found.source, found.manifest.path.tolist(), chunks,
                            DEFAULT_CHUNK, weights=found.manifest.bytes.tolist(), size=IMAGE,
                            interpolation="area", decode="fast", max_pixels=10**8,
                            source_options={})
        n = len(found.manifest)
        return {"n": n, "seconds": time.perf_counter() - t0, "scan_s": t_scan,
                "store_s": t_store, "tasks": len(tasks), "classes": len(group.attrs["classes"]),
                "peak_rss": _peak_rss(), "rss_after_imports": rss0}
    return {"n": n, "seconds": time.perf_counter() - t0, "peak_rss": _peak_rss(),
            "rss_after_imports": rss0}


def _nih():
    from xraybatch.sources.tables import PRESETS

    return PRESETS["nih"]


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure(step: str, src: Path, out: Path) -> dict:
    run = subprocess.run([sys.executable, str(HERE), "--child", step, str(src), str(out)],
                         capture_output=True, text=True, timeout=900)
    if run.returncode:
        raise SystemExit(f"scale.py: {step} on {src} failed:\n{run.stderr}")
    return json.loads(run.stdout.splitlines()[-1])


# --- the benchmark ---------------------------------------------------------------------------


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}; "
            f"load average at the start {load} (1, 5, 15 min)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="example: python benchmarks/scale.py --quick")
    p.add_argument("--sizes", default="5000,50000", help="image counts (default: 5000,50000)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repeats (default: 2)")
    p.add_argument("--rows", type=int, default=1_000_000,
                   help="table rows for the plan and graph (default: 1,000,000)")
    p.add_argument("--quick", action="store_true", help="smoke test: 500,5000 / 100,000 rows")
    p.add_argument("--plan-only", action="store_true", help="only the table plan and graph")
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    sizes = [500, 5000] if args.quick else [int(s) for s in args.sizes.split(",")]
    sizes = [] if args.plan_only else sizes
    rows = 100_000 if args.quick else args.rows
    repeat = 1 if args.quick else args.repeat
    work = Path(args.out or tempfile.mkdtemp(prefix="xraybatch-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "sizes": sizes, "rows": rows, "runs": []}
    try:
        for n in sizes:
            if not (work / f"src{n}").exists():  # written aside, so never half a set
                make_images(work / f"partial{n}", n)
                (work / f"partial{n}").rename(work / f"src{n}")
        for r in range(repeat):  # interleaved: every size in every round
            for n in sizes:
                for step in STEPS:
                    m = measure(step, work / f"src{n}", work / f"out{n}.zarr")
                    results["runs"].append({"round": r, "size": n, "step": step, **m})
                    print(f"round {r} {step:<6} {n:>7,} images: {m['seconds']:7.2f} s, "
                          f"peak RSS {m['peak_rss'] / 2**20:6.0f} MB", file=sys.stderr)
        table = work / "table" / "Data_Entry_2017.csv"  # alone: the root lists nothing
        table.parent.mkdir(exist_ok=True)
        make_table(table, rows)
        plan = measure("plan", table, work / "plan.zarr")
        results["plan"] = plan
        print(f"plan {rows:,} rows: {plan}", file=sys.stderr)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    (Path(args.out or ".") / "scale.json").write_text(json.dumps(results, indent=1))
    print(markdown(results) if sizes else f"Machine: {results['machine']}.\n\n{plan_line(results)}")
    return 0


def markdown(results: dict) -> str:
    sizes = results["sizes"]
    lo, hi = sizes[0], sizes[-1]
    lines = [f"Machine: {results['machine']}.", "",
             f"| step | ms/image at {lo:,} | ms/image at {hi:,} | ratio | peak RSS at {lo:,} "
             f"| peak RSS at {hi:,} | growth |", "|---|--:|--:|--:|--:|--:|--:|"]
    for step in STEPS:
        def med(n, key, step=step):
            return statistics.median(r[key] for r in results["runs"]
                                     if r["step"] == step and r["size"] == n)
        t_lo, t_hi = med(lo, "seconds") / lo * 1e3, med(hi, "seconds") / hi * 1e3
        m_lo, m_hi = med(lo, "peak_rss") / 2**20, med(hi, "peak_rss") / 2**20
        lines.append(f"| {step} | {t_lo:.3f} | {t_hi:.3f} | {t_hi / t_lo:.2f} | {m_lo:.0f} MB "
                     f"| {m_hi:.0f} MB | {m_hi - m_lo:+.0f} MB |")
    return "\n".join([*lines, "", plan_line(results)])


def plan_line(results: dict) -> str:
    plan = results["plan"]
    return (f"Plan and graph for a {results['rows']:,}-row table (NIH layout): "
            f"{plan['seconds']:.1f} s (table read and mapped {plan['scan_s']:.1f} s, store "
            f"layout {plan['store_s']:.1f} s, {plan['tasks']:,} chunk tasks), peak RSS "
            f"{plan['peak_rss'] / 2**20:.0f} MB.")


if __name__ == "__main__":
    sys.exit(main())
