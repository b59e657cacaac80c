"""Turn the results of ``run.py`` into Markdown tables and a plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

STAGES = ("read", "hash", "header", "decode", "resize", "hist", "write")
MB = 1e6


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _db(x: float | None) -> str:
    return "identical" if x is None else f"{x:.1f} dB"


def _find(rows: list[dict], prefix: str) -> dict | None:
    return next((r for r in rows if r["config"].startswith(prefix) and "error" not in r), None)


def main_table(results: dict) -> str:
    rows = results["main"]
    tut, pool = _find(rows, "tutorial loop"), _find(rows, "multiprocessing.Pool")
    lim = _find(rows, "decode-only limit")
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["config"], "failed: " + r["error"]] + [""] * 12)
            continue
        sched = r.get("schedule", {})
        setup = f" (+{r['setup_seconds']:.1f} s start)" if r.get("setup_seconds", 0) > 0.05 \
            else ""
        out.append([
            r["config"], f"{r['images_per_second']:.0f}{setup}", f"{r['mb_per_second']:.1f}",
            f"{tut['seconds'] / r['seconds']:.2f}x" if tut else "",
            f"{pool['seconds'] / r['seconds']:.2f}x" if pool else "",
            f"{lim['seconds'] / r['seconds']:.2f}" if lim else "",
            f"{r['cpu_ms_per_image']:.2f}", f"{r['cores_busy']:.2f}",
            f"{r['background_cores']:.2f}",
            f"{r['peak_rss'] / MB:.0f}", _pct(sched.get("sched_overhead")),
            _pct(sched.get("tail_fraction")), f"{100 * r['spread']:.0f}%", r["check"]])
    return _table(["configuration", "images/s", "JPEG MB/s", "vs tutorial", "vs Pool",
                   "of decode limit", "CPU ms/image", "cores busy", "other load", "peak RSS MB",
                   "sched. overhead", "end idle", "spread", "output"], out)


def profile_table(results: dict) -> str:
    prof = results["profile"]
    labels = list(prof)
    rows = []
    totals = {m: sum(p["stages"].values()) for m, p in prof.items()}
    for stage in STAGES:
        row = [stage]
        for label in labels:
            s = prof[label]["stages"][stage]
            row += [f"{1000 * s / prof[label]['n']:.3f}", _pct(s / totals[label])]
        rows.append(row)
    rows.append(["**total**"] + [x for m in labels for x in
                                 (f"**{1000 * totals[m] / prof[m]['n']:.3f}**", "100%")])
    header = ["stage (serial, 1 thread)"]
    for label in labels:
        header += [f"{label} ms/image", "share"]
    text = _table(header, rows)
    first = prof[labels[0]]["per_class"]
    by_class = [[c, v["n"]] + [f"{1000 * prof[m]['per_class'][c]['seconds'] / v['n']:.2f}"
                               for m in labels]
                for c, v in first.items()]
    return text + "\n\n" + _table(["class", "images"] + [f"{m} ms/image (read..hist)"
                                                         for m in labels], by_class)


def quality_table(results: dict) -> str:
    q = results["quality"]
    per = q["per_image"]
    names = {"auto": "default (DCT-scaled decode + auto: bilinear after a reduced decode)",
             "fast": f"fast + {results['settings']['interpolation']}",
             "tutorial": "tutorial (full decode + bilinear)"}
    rows = []
    for key, label in names.items():
        values = [p[f"{key}_psnr"] for p in per if p.get(f"{key}_psnr") is not None]
        rows.append([label, _db(q[f"{key}_psnr"]), _db(min(values)) if values else "identical",
                     _db(statistics.median(values)) if values else "identical",
                     q[f"{key}_maxdiff"]])
    return _table(["against exact decode + INTER_AREA", "overall PSNR", "worst image",
                   "median image", "max abs diff"], rows)


def _ratio(a: dict | None, b: dict | None) -> float | None:
    """How many times faster ``a`` ran than ``b`` (None if either is missing)."""
    return b["seconds"] / a["seconds"] if a and b else None


def targets(results: dict) -> list[list[str]]:
    """The issue's targets, evaluated on the default scheduler (threads)."""
    rows = results["main"]
    tut, lim = _find(rows, "tutorial loop"), _find(rows, "decode-only limit")
    pool = _find(rows, "multiprocessing.Pool")
    default = _find(rows, "xraybatch default, threads")
    linear = _find(rows, "xraybatch exact linear, threads")
    out = []

    def add(name: str, value: float | None, goal: float, fmt: str, lower: bool = False):
        if value is None:
            out.append([name, "not measured", f"{fmt.format(goal)}", ""])
            return
        met = value <= goal if lower else value >= goal
        out.append([name, fmt.format(value), ("<= " if lower else ">= ") + fmt.format(goal),
                    "met" if met else "**missed**"])

    add("default ingest / decode-only limit", _ratio(default, lim), 0.85, "{:.2f}")
    add("default ingest / tutorial loop", _ratio(default, tut), 1.8, "{:.2f}x")
    add("default ingest / multiprocessing.Pool", _ratio(default, pool), 1.05, "{:.2f}x")
    add("exact linear ingest / multiprocessing.Pool", _ratio(linear, pool), 0.95, "{:.2f}x")
    quality = results["quality"]["auto_psnr"]
    if quality is None:  # no image was decoded at a reduced scale
        out.append(["default quality, overall PSNR vs exact area", "identical", ">= 40.0 dB",
                    "met"])
    else:
        add("default quality, overall PSNR vs exact area", quality, 40, "{:.1f} dB")
    loaders = {r["config"]: r for r in results["sweeps"].get("loaders", []) if "error" not in r}
    folder = loaders.get("torchvision ImageFolder, workers 2")
    store = [r for name, r in loaders.items() if name.startswith("xraybatch torch")]
    if folder and store:
        best = max(store, key=lambda r: r["images_per_second"])
        add(f"epoch from the store ({best['config']}) / ImageFolder",
            best["images_per_second"] / folder["images_per_second"], 10, "{:.1f}x")
    scaling = results["sweeps"].get("scaling")
    if scaling:
        s = {r["config"]: r for r in scaling if "error" not in r}
        one, two = s.get("default threads (1)"), s.get("default threads (2)")
        add("throughput gain per added core, 1 -> 2 workers (default)",
            one["seconds"] / two["seconds"] - 1 if one and two else None, 0.9, "{:.2f}")
        l1, l2 = s.get("decode-only limit (1)"), s.get("decode-only limit (2)")
        if l1 and l2:  # what the machine itself gives: the same for pure decoding
            out.append(["(same for the decode-only limit, for reference)",
                        f"{l1['seconds'] / l2['seconds'] - 1:.2f}", "", ""])
    memory = [r for r in results["sweeps"].get("memory", [])
              if r["config"].startswith("xraybatch") and "error" not in r]
    if len(memory) > 1:
        rss = [r["peak_rss"] for r in memory]
        add(f"peak RSS growth, {memory[0]['n']} -> {memory[-1]['n']} images",
            max(rss) / min(rss) - 1, 0.2, "{:.0%}", lower=True)
    if default:
        add("scheduling overhead (graph build + dispatch) / run, default threads",
            default["schedule"]["sched_overhead"], 0.02, "{:.1%}", lower=True)
    return out


def loaders_table(rows: list[dict]) -> str:
    folder = next((r for r in rows if r["config"].startswith("torchvision")
                   and "error" not in r), None)
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["config"], "skipped: " + r["error"], "", "", "", "", ""])
            continue
        out.append([r["config"], f"{r['images_per_second']:.0f}",
                    f"{folder['seconds'] / r['seconds']:.1f}x" if folder else "",
                    f"{r['first_batch_seconds']:.2f}", f"{r['seconds']:.2f}",
                    f"{r['cores_busy']:.2f}", f"{r['peak_rss'] / MB:.0f}"])
    return _table(["loader (one epoch, batches of 32 float32)", "samples/s", "vs ImageFolder",
                   "first batch s", "epoch s", "cores busy", "peak RSS MB"], out)


def timeline_section(t: dict) -> str:
    if "error" in t:
        return f"timeline failed: {t['error']}"
    import timeline

    return timeline.markdown(t)


def schedule_table(results: dict) -> str:
    rows = []
    for r in results["main"]:
        s = r.get("schedule")
        if not s:
            continue
        rows.append([r["config"], s["tasks"], f"{r['seconds']:.3f}", f"{s['compute_seconds']:.3f}",
                     f"{r['seconds'] - s['compute_seconds'] - s['graph_seconds']:.3f}",
                     f"{1000 * s['graph_seconds']:.1f}", f"{s['dispatch_seconds']:.3f}",
                     f"{s['tail_seconds']:.3f}", f"{s['task_seconds']:.3f}",
                     f"{s['task_seconds_max']:.3f}"])
    return _table(["configuration", "tasks", "run s", "compute s", "scan+store s", "graph build ms",
                   "dispatch s", "end idle s", "sum of task s", "longest task s"], rows)


def sweep_table(name: str, rows: list[dict]) -> str:
    if name == "store":
        return _table(["images array layout", "write CPU ms/image", "read all ms/image",
                       "read one image ms", "size vs raw", "files"],
                      [[r["layout"], f"{r['write_ms_per_image']:.3f}",
                        f"{r['read_all_ms_per_image']:.3f}", f"{r['read_one_ms']:.2f}",
                        f"{r['bytes'] / r['raw_bytes']:.3f}", r["files"]] for r in rows])
    if name == "loaders":
        return loaders_table(rows)
    if name == "memory":
        return _table(["images", "configuration", "images/s", "peak RSS MB"],
                      [[r["n"], r["config"], f"{r.get('images_per_second', 0):.0f}",
                        f"{r['peak_rss'] / MB:.0f}" if "peak_rss" in r else r.get("error")]
                       for r in rows])
    base = next((r for r in rows if "error" not in r), None)
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["config"], "failed: " + r["error"]] + [""] * 7)
            continue
        s = r.get("schedule", {})
        out.append([r["config"], f"{r['images_per_second']:.0f}",
                    f"{base['seconds'] / r['seconds']:.2f}", f"{r['cpu_ms_per_image']:.2f}",
                    f"{r['cpu_seconds'] / base['cpu_seconds']:.2f}", f"{r['peak_rss'] / MB:.0f}",
                    _pct(s.get("tail_fraction")), f"{r.get('store_bytes', 0) / MB:.1f}"
                    if r.get("store_bytes") else "", r["check"]])
    return _table(["variant", "images/s", "speed vs first", "CPU ms/image", "CPU vs first",
                   "peak RSS MB", "end idle", "store MB", "output"], out)


def markdown(results: dict) -> str:
    m = results["machine"]
    main = results["main"]
    n = next((r["n"] for r in main if "n" in r), 0)
    mb = next((r["input_bytes"] for r in main if "input_bytes" in r), 0) / MB
    st = results["settings"]
    parts = [
        f"Machine: {m['cores']} cores, {m['cpu']}; Python {m['python']}, "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f". Date: {m['date']}. Load average at start {m['load_avg_start'][0]:.2f}, "
          f"at end {m.get('load_avg_end', [float('nan')])[0]:.2f}.",
        f"Data: `{results['src']}`: {n} images, {mb:.1f} MB of JPEG. Output "
        f"{st['size']} px, chunk {st['chunk']}, "
        f"{st['workers']} workers. Median of {st['repeat']} interleaved "
        "runs, each in a fresh process (imports and the folder scan not timed; xraybatch "
        "times include scan, store creation, writing and finishing the store).",
        f"Command: `{results['command']}`",
        "### Throughput\n\n" + main_table(results),
        "Peak RSS: largest sum of the RSS of the measuring process and all its descendants "
        "(pool, dask and cluster workers), sampled every 50 ms, never below the main "
        "process's own high-water mark. Shared pages are counted once per process, so it is "
        "an upper bound. CPU: user + system time of that process tree during the run; cores "
        "busy = CPU / wall; other load: cores kept busy by other processes on the machine "
        "meanwhile (from /proc/stat; anything above ~0.1 makes that row's time unreliable). "
        "Distributed: the LocalCluster start-up and the workers' imports are shown apart and "
        "not in images/s (a cluster is long-lived); the processes scheduler starts a new pool "
        "inside every run, and that is timed. spread: (slowest - fastest) / median run.",
        "### Targets (threads scheduler)\n\n" + _table(["target", "measured", "goal", ""],
                                                      targets(results)),
        "### Where the time goes\n\n" + profile_table(results),
        "### Scheduling\n\n" + schedule_table(results)
        + "\n\nscan+store: scanning the folder, creating the store, summarising and "
          "consolidating it (outside compute); "
          "dispatch: worker-time not spent in tasks before the last task ends (start-up, "
          "gaps, gathering), per worker; end idle: workers waiting for the last tasks (load "
          "balance). Task times are measured inside each task.",
        "### Timeline of one default ingest\n\n" + timeline_section(results["timeline"]),
        "### Quality\n\n" + quality_table(results),
    ]
    if any(r.get("rss_method") == "main-process-only" for r in main):
        parts.insert(4, "**psutil is not installed: peak RSS is the main process's alone and "
                        "CPU misses live cluster workers** (pip install 'xraybatch[bench]').")
    for name, rows in results["sweeps"].items():
        parts.append(f"### Sweep: {name}\n\n" + sweep_table(name, rows))
    return "\n\n".join(parts) + "\n"


def plot(results: dict, path: Path) -> str:
    """Write the plot; say what to install when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install 'xraybatch[bench]')"
    sweeps = results["sweeps"]
    panels = 1 + ("scaling" in sweeps) + ("memory" in sweeps)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    ok = [r for r in results["main"] if "error" not in r]
    ax.barh([r["config"] for r in ok], [r["images_per_second"] for r in ok], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlabel("images/s (median)")
    ax.set_title("Throughput")
    k = 1
    if "scaling" in sweeps:
        ax = axes[0][k]
        k += 1
        series: dict[str, list[tuple[int, float]]] = {}
        for r in sweeps["scaling"]:
            if "error" in r:
                continue
            name, w = r["config"].rsplit(" (", 1)
            series.setdefault(name, []).append((int(w.rstrip(")")), r["images_per_second"]))
        for name, pts in series.items():
            ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=name)
        ax.set_xlabel("workers")
        ax.set_ylabel("images/s")
        ax.set_title("Scaling")
        ax.legend()
    if "memory" in sweeps:
        ax = axes[0][k]
        series = {}
        for r in sweeps["memory"]:
            if "peak_rss" in r:
                series.setdefault(r["config"], []).append((r["n"], r["peak_rss"] / MB))
        for name, pts in series.items():
            ax.plot(*zip(*sorted(pts), strict=True), marker="o", label=name)
        ax.set_xscale("log")
        ax.set_xlabel("images")
        ax.set_ylabel("peak RSS (MB)")
        ax.set_title("Memory")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"plot: {path}"
