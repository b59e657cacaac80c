"""The benchmark suite keeps working: run it end to end on a tiny synthetic set.

Nothing here is timed: the suite's numbers are checked for presence and consistency, and
every configuration's output array must equal its serial OpenCV reference.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xraybatch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """The benchmark modules (a folder of scripts, not a package)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return (importlib.import_module("run"), importlib.import_module("workloads"),
            importlib.import_module("report"))


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One run of the whole suite with every sweep that ``--sweep`` offers for free."""
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "out"
    cmd = [sys.executable, str(BENCH / "run.py"), "--synth", "24", "--synth-scale", "0.15",
           "--size", "64", "--repeat", "1", "--workers", "2", "--sweep", "modes,scaling,memory",
           "--memory-sizes", "12,24", "--memory-scale", "0.08", "--out", str(out),
           "--tmp", str(tmp), "--timeout", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return out, proc


def test_suite_runs_and_checks_every_output(suite_run) -> None:
    out, proc = suite_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    main = {r["config"]: r for r in results["main"]}
    expected = {"tutorial loop (serial)", "multiprocessing.Pool (2)", "decode-only limit (2)",
                "xraybatch default, threads (2)", "xraybatch default, processes (2)",
                "xraybatch default, distributed (2)", "xraybatch exact linear, threads (2)"}
    assert set(main) == expected
    for name, row in main.items():
        assert "error" not in row, (name, row.get("error"))
        assert row["n"] == 24 and row["images_per_second"] > 0 and row["peak_rss"] > 0
        if name.startswith("decode-only"):
            assert row["check"] == "n/a"
        else:  # the same bytes as the serial cv2 reference of its kind
            assert row["check"].startswith("= "), (name, row["check"])
    for scheduler in ("threads", "processes", "distributed"):
        assert main[f"xraybatch default, {scheduler} (2)"]["check"] == "= auto ref"
    assert main["xraybatch exact linear, threads (2)"]["check"] == "= tutorial ref"
    modes = {r["config"]: r["check"] for r in results["sweeps"]["modes"]}
    assert modes == {"fast area, threads (2)": "= fast ref",
                     "exact area, threads (2)": "= exact ref"}
    schedule = main["xraybatch default, distributed (2)"]["schedule"]
    assert schedule["tasks"] >= 1 and schedule["task_seconds"] > 0
    assert main["xraybatch default, distributed (2)"]["setup_seconds"] > 0
    # The RSS of worker processes is counted: a cluster (a scheduler, two nannies, two
    # workers) weighs more than one process running threads.
    assert (main["xraybatch default, distributed (2)"]["peak_rss"]
            > 2 * main["xraybatch default, threads (2)"]["peak_rss"])


def test_suite_reports_profile_quality_and_sweeps(suite_run) -> None:
    out, proc = suite_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    for label in ("default", "exact linear"):
        stages = results["profile"][label]["stages"]
        assert set(stages) == {"read", "hash", "header", "decode", "resize", "hist", "write"}
        assert all(v > 0 for v in stages.values())
    timeline = results["timeline"]
    assert timeline["n"] == 24 and timeline["n_tasks"] >= 1
    assert {"scan", "create", "plan", "tasks", "summarise", "mark complete"} <= \
        set(timeline["phases"])
    assert timeline["stages"]["decode"] > 0 and timeline["stages"]["write"] > 0
    assert timeline["calls"]["decode"] == 24 and timeline["cores"]
    quality = results["quality"]
    assert len(quality["per_image"]) == 24 and quality["tutorial_psnr"] is not None
    assert quality["auto_psnr"] is not None
    scaling = {r["config"] for r in results["sweeps"]["scaling"]}
    assert {"default threads (1)", "default threads (2)", "decode-only limit (2)"} <= scaling
    memory = results["sweeps"]["memory"]
    assert sorted({r["n"] for r in memory}) == [12, 24]
    assert all("peak_rss" in r for r in memory)
    md = (out / "results.md").read_text()
    for title in ("### Throughput", "### Targets", "### Where the time goes", "### Scheduling",
                  "### Timeline of one default ingest", "### Quality", "### Sweep: modes",
                  "### Sweep: scaling", "### Sweep: memory"):
        assert title in md
    assert md in proc.stdout  # the Markdown to paste is printed as well
    pytest.importorskip("matplotlib")
    assert (out / "benchmark.png").stat().st_size > 0


def test_suite_leaves_no_store_or_data_behind(suite_run) -> None:
    out, _ = suite_run
    tmp = out.parent
    assert not list(tmp.glob("xb-bench-*")) and not list(tmp.glob("xb-prof-*"))
    assert not list(tmp.glob("xb-timeline-*"))
    assert not (out / "memory-data").exists()


def test_check_detects_a_different_array(bench) -> None:
    run, _, _ = bench
    refs = {"tutorial": "t", "exact": "e", "fast": "f"}
    fast = {"kind": "ingest", "mode": "fast", "interpolation": "area"}
    exact_linear = {"kind": "ingest", "mode": "exact", "interpolation": "linear"}
    assert run.check(fast, {"digest": "f"}, refs, "area") == "= fast ref"
    assert run.check(fast, {"digest": "e"}, refs, "area") == "MISMATCH vs fast ref"
    assert run.check(exact_linear, {"digest": "t"}, refs, "area") == "= tutorial ref"
    assert run.check({"kind": "pool"}, {"digest": "x"}, refs, "area") == "MISMATCH vs tutorial ref"
    default = {"kind": "ingest", "mode": "fast", "interpolation": "auto"}
    refs.update(auto="a", area="e")
    assert run.check(default, {"digest": "a"}, refs, "area") == "= auto ref"
    assert run.check(default, {"digest": "f"}, refs, "area") == "MISMATCH vs auto ref"
    assert run.check({"kind": "decode_limit"}, {"digest": None}, refs, "area") == "n/a"


def test_schedule_splits_worker_time(bench) -> None:
    _, workloads, _ = bench

    def task(worker: str, start: float, end: float):
        return workloads.TimedReport(0, 1, (), 0, end - start, started=start, ended=end,
                                     worker=worker)

    # Two workers for 10 s: a runs 0-4 and 4-8, b runs 1-5 and then waits for a.
    reports = [task("a", 0, 4), task("a", 4, 8), task("b", 1, 5)]
    s = workloads._schedule(reports, workers=2, window=(0.0, 10.0), graph=0.5, wall=12.5)
    assert s["task_seconds"] == 12 and s["tail_seconds"] == pytest.approx(3 / 2)
    # 20 worker-seconds = 12 in tasks + 3 idle at the end (b) + 5 dispatch (b's late start,
    # and both workers after the last task until compute returned).
    assert s["dispatch_seconds"] == pytest.approx(5 / 2)
    assert s["sched_overhead"] == pytest.approx((0.5 + 2.5) / 12.5)


def test_failed_measurement_is_one_line(bench, tmp_path: Path) -> None:
    run, _, _ = bench
    result = run.measure({"kind": "nonsense", "src": str(tmp_path), "size": 32}, timeout=60)
    assert "error" in result and "\n" not in result["error"]


def test_cli_refuses_a_used_output_folder(bench, tmp_path: Path, capsys) -> None:
    run, _, _ = bench
    (tmp_path / "old.txt").write_text("keep me")
    assert run.main([str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "old.txt").read_text() == "keep me"
    assert run.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2


def test_ingest_starts_the_heaviest_chunk_first(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """Load balance: the chunks with the most bytes to decode run first (one worker)."""
    import dask

    from xraybatch import tasks
    from xraybatch.store import StoreRef

    ran: list[int] = []
    monkeypatch.setattr(tasks, "run_chunk", lambda task: ran.append(task.index))
    weights = [1, 1, 9, 9, 5, 5, 2, 2, 7, 7, 3, 3, 8, 8, 4, 4, 6, 6, 1, 1, 2, 2, 3, 3]  # 12 x 2
    paths = [f"f{i}.jpeg" for i in range(len(weights))]
    graph = tasks.build_tasks(StoreRef(str(tmp_path / "x.zarr")), str(tmp_path), paths,
                              list(range(12)), 2, weights=weights, size=32,
                              interpolation="area", decode="fast", max_pixels=10**6)
    dask.compute(*graph, scheduler="threads", num_workers=1)
    chunk_weight = [weights[2 * i] + weights[2 * i + 1] for i in range(12)]
    assert [chunk_weight[i] for i in ran] == sorted(chunk_weight, reverse=True)


def test_loaders_read_every_sample(bench, synth_small: Path, tmp_path: Path) -> None:
    """The store loaders without torch (xarray/dask, zarr): one epoch yields every image."""
    import loaders

    store = loaders.build_store(str(synth_small), str(tmp_path / "l.zarr"), 32)
    images = xraybatch.open(store).read_images(slice(None)).astype(np.float64) / 255
    specs = loaders.specs({"src": str(synth_small), "size": 32}, store, with_torch=False)
    assert set(specs) == {"xarray/dask, chunk-shuffled", "zarr, chunk-shuffled"}
    for spec in specs.values():
        result = loaders.epoch({**spec, "batch": 7})
        assert result["n"] == len(images) and result["first_batch_seconds"] >= 0
        # The first pixel of every batch is summed: a permutation of chunks and rows.
        assert 0 < result["checksum"] <= images.mean(axis=(1, 2)).sum()


def test_loaders_say_what_to_install(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import loaders

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchvision" else real(name, *a))
    hint = loaders.missing_torch()
    assert hint is not None and "\n" not in hint and "pip install" in hint
    assert "torchvision missing" in hint


def test_training_benchmark_smoke(bench, synth_small: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/training.py: two epochs of the xraybatch and zarr loaders, in-process."""
    pytest.importorskip("torch", reason="needs torch (test extra)")
    training = importlib.import_module("training")
    store = str(tmp_path / "t.zarr")
    xraybatch.ingest(synth_small, store, size=32, chunk=8, scheduler="sync")
    ds = xraybatch.open(store)
    n = len(ds)
    assert ds.valid.all()  # the zarr loader reads every row, the others the valid ones
    for kind in ("xrb_batched", "xrb_map", "xrb_map_np", "zarr"):
        spec = {"loader": kind, "workers": 0, "batch": 7, "epochs": 2, "path": store,
                "size": 32}
        result = training.run(spec)
        assert [e["n"] for e in result["epochs"]] == [n, n], kind
        assert all(e["seconds"] > 0 and e["first"] >= 0 for e in result["epochs"])
    assert len(training.files(str(synth_small))) == n
    summary = training.summarize_reads([result], n)
    assert summary["first_epoch_sps"] > 0 and summary["later_epoch_sps"] > 0
