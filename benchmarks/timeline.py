"""Timeline of one real ingest: phases, per-task stages and cores busy over time.

    python benchmarks/timeline.py SRC [--decode fast] [--interpolation auto] [--workers 2]

One ``xraybatch.ingest`` (threads scheduler, the default) with its module functions wrapped
by timers, in this process only: the phases (scan, create, plan, tasks, finalise), every
per-image stage inside the tasks (read, hash, header, decode, resize, hist) and the store
write per chunk, each task's start and end per worker thread, and the process's CPU time
sampled every 50 ms (cores busy over time; the machine's other load from ``/proc/stat``).
``run.py`` runs it in a fresh process and puts its tables in the results (``### Timeline``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from typing import Any

from meter import system_busy  # a sibling script: benchmarks/ is on sys.path

import xraybatch
from xraybatch import build, decode, store, tasks

ingest_mod = importlib.import_module("xraybatch.ingest")

#: Per-image stages, as the functions of ``xraybatch.decode`` that ``decode.load`` calls.
STAGES = {"read": "read_bytes", "hash": "content_hash", "header": "read_header",
          "decode": "decode_pixels", "resize": "fit_image", "hist": "histogram"}
#: Phases of ``ingest``, as the functions it calls (module, attribute).
PHASES = {"scan": (ingest_mod, "scan"), "create": (store, "create"),
          "plan": (build, "build_tasks"), "tasks": (build, "compute"),
          "summarise": (build, "_summarize"), "mark complete": (store, "mark_complete")}


class _CpuSampler(threading.Thread):
    """CPU seconds of this process and of the whole machine, every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t = os.times()
            self.samples.append((time.perf_counter(), t.user + t.system, system_busy()))
            self.stop.wait(self.interval)


def _timed(record):
    """Wrap a function so that every call ends with ``record(start, end, args)``."""
    def wrap(fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                record(t0, time.perf_counter(), args)
        return timed
    return wrap


class Timeline:
    """Wrap the phase and stage functions with timers (undone on exit)."""

    def __init__(self) -> None:
        self.stage = defaultdict(float)  # stage -> seconds summed over all threads
        self.calls = defaultdict(int)
        self.phases: list[tuple[str, float, float]] = []
        self.tasks: list[tuple[int, float, float, int]] = []  # (chunk, start, end, thread)
        self.lock = threading.Lock()
        self.saved: list[tuple[Any, str, Any]] = []

    def _patch(self, module, name: str, wrapper) -> None:
        original = getattr(module, name)
        self.saved.append((module, name, original))
        setattr(module, name, wrapper(original))

    def _stage(self, stage: str):
        def record(t0: float, t1: float, args: tuple) -> None:
            with self.lock:
                self.stage[stage] += t1 - t0
                self.calls[stage] += 1
        return _timed(record)

    def _phase(self, phase: str):
        return _timed(lambda t0, t1, args: self.phases.append((phase, t0, t1)))

    def _task(self, fn):
        def record(t0: float, t1: float, args: tuple) -> None:
            with self.lock:
                self.tasks.append((args[0].index, t0, t1, threading.get_ident()))
        return _timed(record)(fn)

    def __enter__(self) -> Timeline:
        for stage, name in STAGES.items():
            self._patch(decode, name, self._stage(stage))
        self._patch(store, "write_chunk", self._stage("write"))
        self._patch(tasks, "run_chunk", self._task)
        for phase, (module, name) in PHASES.items():
            self._patch(module, name, self._phase(phase))
        return self

    def __exit__(self, *exc) -> None:
        for module, name, original in reversed(self.saved):
            setattr(module, name, original)


def run(src: str, mode: str, interpolation: str, workers: int, size: int = 256,
        tmp: str | None = None) -> dict[str, Any]:
    out = os.path.join(tempfile.mkdtemp(prefix="xb-timeline-", dir=tmp), "out.zarr")
    sampler = _CpuSampler()
    try:
        importlib.import_module("distributed")  # dask imports it on first compute: untimed
        with Timeline() as tl:
            sampler.start()
            t0 = time.perf_counter()
            result = xraybatch.ingest(src, out, size=size, decode_mode=mode,
                                      interpolation=interpolation, workers=workers)
            t1 = time.perf_counter()
            sampler.stop.set()
            sampler.join()
    finally:
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
    wall = t1 - t0
    n = result.n_images
    phases = defaultdict(float)
    for name, a, b in tl.phases:
        phases[name] += b - a
    # Creation overlaps the first tasks (threads scheduler): "other" is what no phase covers.
    phases["other"] = wall - _covered([(a, b) for _, a, b in tl.phases])
    task_sum = sum(b - a for _, a, b, _ in tl.tasks)
    inside = sum(tl.stage.values())
    stages = {**tl.stage, "task overhead": task_sum - inside}
    threads = {}
    for _, a, b, th in tl.tasks:
        first, last, busy = threads.get(th, (a, b, 0.0))
        threads[th] = (min(first, a), max(last, b), busy + b - a)
    compute = next(((a, b) for name, a, b in tl.phases if name == "tasks"), (t0, t1))
    return {"n": n, "wall": wall, "mode": mode, "interpolation": interpolation,
            "workers": workers, "phases": dict(phases), "stages": stages,
            "calls": dict(tl.calls), "n_tasks": len(tl.tasks),
            "threads": [{"first_start": a - compute[0], "last_end": b - compute[0],
                         "busy": busy} for a, b, busy in threads.values()],
            "compute": compute[1] - compute[0],
            # CPU times tick every 10 ms: bins of at least 0.1 s, at most 20 of them.
            "cores": _cores_over_time(sampler.samples, t0, t1, max(1, min(20, int(wall / 0.1)))),
            "phase_marks": [(name, a - t0, b - t0) for name, a, b in tl.phases]}


def _covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of the intervals."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        total += max(0.0, b - max(a, end))
        end = max(end, b)
    return total


def _cores_over_time(samples, t0: float, t1: float, bins: int) -> list[dict[str, float]]:
    """Cores busy (this process) and other load (the rest of the machine) per time bin."""
    if len(samples) < 2:
        return []
    width = (t1 - t0) / bins
    out = []
    for k in range(bins):
        a, b = t0 + k * width, t0 + (k + 1) * width
        inside = [s for s in samples if a <= s[0] <= b] or [min(samples, key=lambda s:
                                                               abs(s[0] - a))]
        before = max((s for s in samples if s[0] <= a), default=samples[0], key=lambda s: s[0])
        last = inside[-1]
        dt = last[0] - before[0]
        if dt <= 0:
            out.append({"start": a - t0, "cores": 0.0, "other": 0.0})
            continue
        cpu = (last[1] - before[1]) / dt
        out.append({"start": a - t0, "cores": cpu,
                    "other": max(0.0, (last[2] - before[2]) / dt - cpu)})
    return out


def markdown(t: dict[str, Any]) -> str:
    """The timeline as Markdown tables."""
    wall, n = t["wall"], t["n"]
    lines = [f"One ingest of {n} images, decode {t['mode']}, interpolation "
             f"{t['interpolation']}, threads scheduler ({t['workers']} workers): "
             f"{wall:.2f} s, {n / wall:.0f} images/s, {t['n_tasks']} tasks.", "",
             "| phase | seconds | share of run |", "|---|--:|--:|"]
    lines += [f"| {k} | {v:.3f} | {100 * v / wall:.1f}% |" for k, v in t["phases"].items()]
    lines += ["", "Phases may overlap: with the threads scheduler the store is created while "
              "the first tasks decode."]
    total = sum(t["stages"].values())
    lines += ["", "| task stage (all threads) | ms/image | share of task time |", "|---|--:|--:|"]
    lines += [f"| {k} | {1000 * v / n:.3f} | {100 * v / total:.1f}% |"
              for k, v in t["stages"].items()]
    lines += [f"| **tasks in all** | **{1000 * total / n:.3f}** | 100% |", "",
              "| worker thread | first task starts s | last task ends s | busy in tasks s |",
              "|---|--:|--:|--:|"]
    lines += [f"| {i} | {th['first_start']:.3f} | {th['last_end']:.3f} | {th['busy']:.3f} |"
              for i, th in enumerate(t["threads"])]
    lines += ["", f"Tasks window {t['compute']:.3f} s. Cores busy over the run "
              "(this process; other load = the rest of the machine):", "",
              "| from s | cores busy | other load | phase |", "|--:|--:|--:|---|"]
    for b in t["cores"]:
        phase = next((name for name, a, e in t["phase_marks"] if a <= b["start"] < e), "")
        lines.append(f"| {b['start']:.2f} | {b['cores']:.2f} | {b['other']:.2f} | {phase} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python benchmarks/timeline.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python benchmarks/timeline.py ../shared/data/chest_xray_sample")
    p.add_argument("src", help="folder of images")
    p.add_argument("--decode", default="fast", choices=decode.DECODE_MODES)
    p.add_argument("--interpolation", default=None,
                   help="resize filter (default: xraybatch's default)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--size", type=int, default=256, help="output side in pixels (256)")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--tmp", help="folder for the temporary store (default: system temp)")
    args = p.parse_args(argv)
    interpolation = args.interpolation or ingest_mod.ingest.__kwdefaults__["interpolation"]
    t = run(args.src, args.decode, interpolation, args.workers, args.size, args.tmp)
    print(json.dumps(t) if args.json else markdown(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
