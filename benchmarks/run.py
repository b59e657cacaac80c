"""Loader benchmark: xraybatch against the tutorial loop and the decode-only limit.

    python benchmarks/run.py [SRC] [--repeat 3] [--sweep scaling,memory] [--out DIR]

SRC is a folder of images in class folders (e.g. ../shared/data/chest_xray_sample); without
it a synthetic Kermany-shaped set is generated (``xraybatch.synth_dataset``). Every
measurement runs in a fresh Python process (imports and the folder scan are not timed);
configurations are interleaved and repeated and the median is reported. Results go to
OUT/results.json, OUT/results.md (the Markdown pasted into benchmarks/README.md) and
OUT/benchmark.png (when matplotlib is installed). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import report

HERE = Path(__file__).resolve().parent
SWEEPS = ("modes", "scaling", "memory", "loaders", "chunk", "order", "codec", "write",
          "cvthreads", "layout", "store")
SCHEDULERS = ("threads", "processes", "distributed")
#: Serial per-stage profiles: (label, decode mode, interpolation).
PROFILES = (("default", "fast", "auto"), ("exact linear", "exact", "linear"))


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked (reported in one line)."""


# --- measuring one configuration in a fresh process --------------------------------------------


class _RssSampler(threading.Thread):
    """Peak of the summed RSS of a process and all its descendants, sampled periodically."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.psutil, self.root, self.interval = psutil, psutil.Process(pid), interval
        self.peak, self.stop = 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except self.psutil.Error:
                return
            for p in procs:
                with contextlib.suppress(self.psutil.Error):  # a worker that just exited
                    total += p.memory_info().rss
            self.peak = max(self.peak, total)
            self.stop.wait(self.interval)


def measure(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one workload in a new process group; return its result plus the peak tree RSS."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-c", "import workloads; workloads.main()", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    sampler = None
    try:
        sampler = _RssSampler(proc.pid)
        sampler.start()
    except ImportError:
        pass
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # timeout or Ctrl-C: take the whole process group down
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        if sampler is not None:
            sampler.stop.set()
            sampler.join()
    if proc.returncode != 0:
        last = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"error": last}
    result = json.loads(out.strip().splitlines()[-1])
    # The sampler can miss a short spike; the kernel's high-water mark of the main process
    # cannot, so the peak is never reported below it.
    sampled = sampler.peak if sampler is not None else 0
    result["peak_rss"] = max(sampled, result["maxrss_self"])
    result["rss_method"] = "tree-sampled" if sampler is not None else "main-process-only"
    return result


def interleaved(specs: dict[str, dict], repeat: int, timeout: float,
                log=print) -> dict[str, list[dict]]:
    """Run every spec ``repeat`` times, round-robin, starting one later each round."""
    names = list(specs)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(repeat):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            result = measure(specs[name], timeout)
            runs[name].append(result)
            log(f"  [{r + 1}/{repeat}] {name:<34} " + (
                f"{result['seconds']:7.3f} s" if "seconds" in result
                else f"FAILED: {result['error']}"))
    return runs


def summarize(runs: list[dict]) -> dict[str, Any]:
    """Median time of the successful runs; the run closest to it supplies the details."""
    ok = [r for r in runs if "seconds" in r]
    if not ok:
        return {"error": runs[-1].get("error", "no run") if runs else "no run"}
    seconds = statistics.median(r["seconds"] for r in ok)
    typical = min(ok, key=lambda r: abs(r["seconds"] - seconds))
    times = [r["seconds"] for r in ok]
    cpu = statistics.median(r["cpu_seconds"] for r in ok)
    return {**typical, "seconds": seconds, "times": times, "cpu_seconds": cpu,
            "cpu_ms_per_image": 1000 * cpu / max(typical["n"], 1),
            "cores_busy": statistics.median(r["cpu_seconds"] / r["seconds"] for r in ok),
            "background_cores": statistics.median(r["background_cores"] for r in ok),
            "spread": (max(times) - min(times)) / seconds if seconds else 0.0,
            "peak_rss": max(r["peak_rss"] for r in ok),
            "images_per_second": typical["n"] / seconds,
            "mb_per_second": typical["input_bytes"] / 1e6 / seconds,
            "failed_runs": len(runs) - len(ok)}


# --- configurations ---------------------------------------------------------------------------


def base_spec(args: argparse.Namespace, src: str, kind: str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "src": src, "size": args.size, "workers": args.workers,
            "interpolation": args.interpolation, "tmp": args.tmp, **extra}


def ingest_spec(args, src: str, mode: str, scheduler: str = "threads", **extra) -> dict:
    return base_spec(args, src, "ingest", mode=mode, scheduler=scheduler,
                     chunk=args.chunk, **extra)


def main_configs(args: argparse.Namespace, src: str) -> dict[str, dict]:
    """The first benchmark: the tutorial loop, a Pool of it, the decode-only limit, the
    default ingest on each scheduler, and the tutorial's own array through xraybatch."""
    w = args.workers
    specs = {"tutorial loop (serial)": base_spec(args, src, "tutorial", workers=1),
             f"multiprocessing.Pool ({w})": base_spec(args, src, "pool"),
             f"decode-only limit ({w})": base_spec(args, src, "decode_limit")}
    for scheduler in args.schedulers:
        specs[f"xraybatch default, {scheduler} ({w})"] = {
            **ingest_spec(args, src, "fast", scheduler), "interpolation": "auto"}
    specs[f"xraybatch exact linear, threads ({w})"] = {
        **ingest_spec(args, src, "exact"), "interpolation": "linear"}
    return specs


def expected_digest(spec: dict, refs: dict[str, str], interpolation: str) -> tuple[str, str]:
    """Which serial reference a configuration must reproduce, and its digest."""
    if spec["kind"] in ("tutorial", "pool"):
        return "tutorial", refs["tutorial"]
    if spec["interpolation"] == "auto":
        return ("auto", refs["auto"]) if spec["mode"] == "fast" else ("area", refs["area"])
    if spec["mode"] == "fast":
        return "fast", refs["fast"]
    if spec["interpolation"] != interpolation:  # exact linear
        return "tutorial", refs["tutorial"]
    return "exact", refs["exact"]


def check(spec: dict, result: dict, refs: dict[str, str], interpolation: str) -> str:
    if spec["kind"] not in ("tutorial", "pool", "ingest") or "digest" not in result:
        return "n/a"
    name, digest = expected_digest(spec, refs, interpolation)
    return f"= {name} ref" if result["digest"] == digest else f"MISMATCH vs {name} ref"


# --- sweeps -----------------------------------------------------------------------------------


def tuning_specs(sweep: str, args, src: str) -> dict[str, dict]:
    """The variants of one tuning sweep; the first one is the baseline of its ratios."""
    fast = ingest_spec(args, src, "fast")
    if sweep == "modes":  # the explicit decode modes with --interpolation (area)
        return {f"{m} {args.interpolation}, threads ({args.workers})": ingest_spec(args, src, m)
                for m in ("fast", "exact")}
    if sweep == "scaling":
        specs = {}
        for k in range(1, args.workers + 1):
            specs[f"default threads ({k})"] = {**fast, "interpolation": "auto", "workers": k}
            specs[f"exact linear threads ({k})"] = {**ingest_spec(args, src, "exact"),
                                                    "interpolation": "linear", "workers": k}
            specs[f"decode-only limit ({k})"] = base_spec(args, src, "decode_limit", workers=k)
        return specs
    if sweep == "chunk":
        return {f"chunk {c}{', index order' if o else ''}": {**fast, "chunk": c, "order": o}
                for c in args.chunks for o in (None, "index")}
    if sweep == "order":
        return {f"{m}, {o or 'heaviest first'}": {**ingest_spec(args, src, m), "order": o}
                for m in ("fast", "exact") for o in (None, "index")}
    if sweep == "codec":
        return {c: {**fast, "codec": c} for c in args.codecs}
    if sweep == "write":
        return {w: {**fast, "writer": w} for w in ("empty-check", "product", "gather")}
    if sweep == "cvthreads":
        return {f"fast, cv threads {c or 1}": {**fast, "cv_threads": c} for c in (None, 2)}
    if sweep == "layout":
        w = args.workers
        return {"threads": fast, "processes": ingest_spec(args, src, "fast", "processes"),
                f"distributed {w}x1 thread": ingest_spec(args, src, "fast", "distributed"),
                f"distributed 1x{w} threads": {**ingest_spec(args, src, "fast", "distributed"),
                                               "threads_per_worker": w}}
    raise BenchError(f"unknown sweep {sweep!r}; choose from {', '.join(SWEEPS)}")


def memory_sweep(args, out: Path, log=print) -> list[dict]:
    """Peak RSS of the default ingest and of the tutorial loop on growing synthetic sets."""
    from xraybatch import synth_dataset

    sizes = sorted(args.memory_sizes)
    big = out / "memory-data" / f"n{sizes[-1]}"
    log(f"memory sweep: generating {sizes[-1]} synthetic images at scale {args.memory_scale}")
    df = synth_dataset(big, n=sizes[-1], seed=1, scale=args.memory_scale)
    rows = []
    for n in sizes:
        folder = big if n == sizes[-1] else _subset(df, big, out / "memory-data" / f"n{n}", n)
        specs = {"xraybatch default, threads": {**ingest_spec(args, str(folder), "fast"),
                                                "interpolation": "auto"},
                 "tutorial loop": base_spec(args, str(folder), "tutorial", workers=1)}
        runs = interleaved(specs, args.memory_repeat, args.timeout, log)
        for name, r in runs.items():
            rows.append({"n": n, "config": name, **summarize(r)})
    return rows


def loaders_sweep(args, src: str, out: Path, log=print) -> list[dict]:
    """One training epoch per loader, interleaved (see loaders.py)."""
    import loaders

    hint = loaders.missing_torch()
    if hint:
        log(hint)
    store = loaders.build_store(src, str(out / "loaders.zarr"), args.size)
    try:
        specs = loaders.specs(base_spec(args, src, "loader"), store, hint is None)
        runs = interleaved(specs, args.repeat, args.timeout, log)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    rows = []
    for name, spec in specs.items():
        row = {"config": name, "spec": spec, **summarize(runs[name])}
        if "error" not in row:
            row["first_batch_seconds"] = statistics.median(
                r["first_batch_seconds"] for r in runs[name] if "seconds" in r)
        rows.append(row)
    return rows + ([{"config": "torch loaders", "error": hint}] if hint else [])


def _subset(df, src: Path, dst: Path, n: int) -> Path:
    """An evenly spaced subset of a synthetic folder, as hard links (no copies)."""
    if dst.exists():
        shutil.rmtree(dst)
    step = len(df) / n
    for i in range(n):
        rel = df.path.iloc[int(i * step)]
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(src / rel, dst / rel)
    return dst


# --- the run ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cv2
    import dask
    import numpy
    import zarr

    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "load_avg_start": os.getloadavg(),
            "versions": {"numpy": numpy.__version__, "opencv": cv2.__version__,
                         "zarr": zarr.__version__, "dask": dask.__version__},
            "date": dt.datetime.now().isoformat(timespec="seconds")}


def replicate(src: str, dst: str, k: int) -> str:
    """A folder with every file of ``src`` linked ``k`` times (same split/class folders).

    A 248-image sample makes 2 chunks of 128: too few tasks for load balance to mean what it
    means on the 5,856-image dataset, and fixed costs weigh 10x more. Copies ``r1-...``,
    ``r2-...`` decode exactly like the originals.
    """
    for d, _, files in os.walk(src):
        rel = os.path.relpath(d, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for f in files:
            for i in range(k):
                os.symlink(os.path.join(d, f), os.path.join(dst, rel, f"r{i}-{f}"))
    return dst


def warm_cache(src: str) -> int:
    """Read every file once so that no configuration pays for the first (cold) read."""
    total = 0
    for d, _, files in os.walk(src):
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                total += len(fh.read())
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n  python benchmarks/run.py ../shared/data/chest_xray_sample\n"
               "  python benchmarks/run.py --synth 500 --sweep scaling,memory\n"
               "  python benchmarks/run.py SRC --sweep chunk,order,codec --repeat 5")
    p.add_argument("src", nargs="?", help="folder of images (default: a synthetic set)")
    p.add_argument("--replicate", type=int, default=1, metavar="K",
                   help="use every file of SRC K times (symlinks), for a run long enough "
                        "that fixed costs and the last chunks weigh as on a full dataset (1)")
    p.add_argument("--out", help="results folder (default: benchmarks/results/<date-time>)")
    p.add_argument("--synth", type=int, default=240, help="synthetic images without SRC (240)")
    p.add_argument("--synth-scale", type=float, default=1.0,
                   help="synthetic image size factor (default 1.0: Kermany-like sizes)")
    p.add_argument("--size", type=int, default=256, help="output side in pixels (256)")
    p.add_argument("--interpolation", choices=("area", "linear"), default="area")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="workers for the parallel configurations (default: all cores)")
    p.add_argument("--chunk", type=int, help="images per chunk (default: xraybatch's)")
    p.add_argument("--repeat", type=int, default=3, help="runs per configuration (median; 3)")
    p.add_argument("--schedulers", default=",".join(SCHEDULERS),
                   help="xraybatch schedulers to measure (default: all three)")
    p.add_argument("--sweep", default="", help=f"extra sweeps, comma-separated: {SWEEPS}")
    p.add_argument("--memory-sizes", default="1000,5000,20000",
                   help="synthetic set sizes of the memory sweep")
    p.add_argument("--memory-scale", type=float, default=0.1,
                   help="synthetic image scale of the memory sweep (0.1)")
    p.add_argument("--memory-repeat", type=int, default=1)
    p.add_argument("--chunks", default="16,32,64,128", help="chunk sizes of the chunk sweep")
    p.add_argument("--codecs", default="none,zstd1,zstd3,blosc-lz4",
                   help="compressors of the images array in the codec sweep")
    p.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    p.add_argument("--tmp", help="folder for the temporary stores (default: system temp)")
    args = p.parse_args(argv)
    args.schedulers = [s for s in args.schedulers.split(",") if s]
    args.sweeps = [s for s in args.sweep.split(",") if s]
    args.memory_sizes = [int(x) for x in args.memory_sizes.split(",")]
    args.chunks = [int(x) for x in args.chunks.split(",")]
    args.codecs = [c for c in args.codecs.split(",") if c]
    for s in args.schedulers:
        if s not in SCHEDULERS:
            p.error(f"unknown scheduler {s!r}; choose from {', '.join(SCHEDULERS)}")
    for s in args.sweeps:
        if s not in SWEEPS:
            p.error(f"unknown sweep {s!r}; choose from {', '.join(SWEEPS)}")
    if args.workers < 1 or args.repeat < 1:
        p.error("--workers and --repeat must be at least 1")
    return args


def run(args: argparse.Namespace, log=print) -> dict[str, Any]:
    out = Path(args.out or HERE / "results" / dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"{out} is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    if args.chunk is None:
        from xraybatch.options import DEFAULT_CHUNK

        args.chunk = DEFAULT_CHUNK
    info = machine()
    if args.src:
        src = str(Path(args.src).resolve())
        if not Path(src).is_dir():
            raise BenchError(f"no such folder: {args.src}")
    else:
        from xraybatch import synth_dataset

        src = str(out / "data")
        log(f"generating {args.synth} synthetic images in {src}")
        synth_dataset(src, n=args.synth, seed=0, scale=args.synth_scale)
    if args.replicate > 1:
        src = replicate(src, str(out / "data"), args.replicate)
        log(f"replicated {args.src} {args.replicate} times (symlinks) into {src}")
    warm_cache(src)
    results: dict[str, Any] = {"machine": info, "command": _command(), "src": src,
                               "settings": {k: v for k, v in vars(args).items()
                                            if k not in ("out", "src")}}
    log("reference arrays and quality (serial, untimed)")
    ref = measure(base_spec(args, src, "reference"), args.timeout)
    if "error" in ref:
        raise BenchError(f"reference failed: {ref['error']}")
    results["quality"] = ref["quality"]
    results["profile"] = {}
    for label, mode, interpolation in PROFILES:
        log(f"profile ({label}, serial)")
        prof = measure({**base_spec(args, src, "profile", mode=mode, chunk=args.chunk,
                                    limit=1000), "interpolation": interpolation}, args.timeout)
        if "error" in prof:
            raise BenchError(f"profile failed: {prof['error']}")
        results["profile"][label] = prof
    log("timeline of one default ingest")
    results["timeline"] = measure(base_spec(args, src, "timeline"), args.timeout)
    log(f"main table: {args.repeat} interleaved rounds")
    specs = main_configs(args, src)
    runs = interleaved(specs, args.repeat, args.timeout, log)
    rows = [{"config": n, "spec": s, **summarize(runs[n])} for n, s in specs.items()]
    for row in rows:
        row["check"] = check(row["spec"], row, ref["digests"], args.interpolation) \
            if "error" not in row else "failed"
    results["main"] = rows
    results["sweeps"] = {}
    for sweep in args.sweeps:
        log(f"sweep: {sweep}")
        if sweep == "memory":
            results["sweeps"]["memory"] = memory_sweep(args, out, log)
            continue
        if sweep == "loaders":
            results["sweeps"]["loaders"] = loaders_sweep(args, src, out, log)
            continue
        if sweep == "store":  # one serial process: the images array in several layouts
            layouts = measure(base_spec(args, src, "store_layouts", limit=1000), args.timeout)
            if "error" in layouts:
                raise BenchError(f"store layouts failed: {layouts['error']}")
            results["sweeps"]["store"] = layouts["layouts"]
            continue
        specs = tuning_specs(sweep, args, src)
        runs = interleaved(specs, args.repeat, args.timeout, log)
        rows = [{"config": n, "spec": s, **summarize(runs[n])} for n, s in specs.items()]
        for row in rows:
            row["check"] = check(row["spec"], row, ref["digests"], args.interpolation) \
                if "error" not in row else "failed"
        results["sweeps"][sweep] = rows
    info["load_avg_end"] = os.getloadavg()
    shutil.rmtree(out / "memory-data", ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    markdown = report.markdown(results)
    (out / "results.md").write_text(markdown)
    log(markdown)
    log(report.plot(results, out / "benchmark.png"))
    log(f"results: {out}/results.md, results.json")
    return results


def _command() -> str:
    return "python benchmarks/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run(args)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    failed = [r["config"] for r in results["main"] if "error" in r or
              r["check"].startswith("MISMATCH")]
    if failed:
        print(f"failed or mismatched: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
