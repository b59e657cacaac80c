"""Benchmark ``xraybatch split`` on a synthetic million-row store, beside scikit-learn.

The store is made cheaply: :func:`xraybatch.store.create` writes what a scan knows (paths,
labels, the scan's split, patient ids) and no image is written (8 x 8, all fill), then it is
marked complete. Patients have 1-10 images (geometric, mean ~2.5), a fifth of the images have
no patient id, the scan's split leaks patients (each image drawn 80/10/10 on its own), and
classes are 60/25/15 by patient. Each run is a fresh process running ``xraybatch split`` as
the command line does (imports included): wall time and peak RSS, configurations
interleaved, medians reported. ``--by content`` reads near-duplicate groups made with the
store (1% of the images copies of another, any patient's) in place of ``xraybatch.dups``: a
store without images has no fingerprints, so the near-duplicate search itself is not timed
here (its own benchmark is the dups one).

Beside it, what users write instead, on the same arrays read from the same store:
scikit-learn's ``GroupShuffleSplit`` (twice: test, then val out of the rest) and
``StratifiedGroupKFold(10)`` (one fold test, one val), timed in this process. For every
method: patients and near-duplicate groups in more than one split, the largest miss of a
split's share of images against its ratio, and the largest miss of a class's share in a split
against the whole, in percentage points. scikit-learn is optional (``pip install
scikit-learn``).

Usage::

    python benchmarks/split.py                 # 1,000,000 rows, 3 rounds
    python benchmarks/split.py --n 100000 --rounds 1 --no-sklearn
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scale import machine

from xraybatch import store
from xraybatch.location import StoreRef

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ["NORMAL", "BACTERIA", "VIRUS"]
CONFIGS = {
    "patient": ["--by", "patient"],
    "patient, stratified": ["--by", "patient", "--stratify"],
    "patient, keep test": ["--by", "patient", "--keep", "test"],
    "patient and content, stratified": ["--by", "patient,content", "--stratify"],
}
#: Near-duplicate groups of the synthetic store, read by the child runs in place of
#: xraybatch.dups (a store without images has no fingerprints).
CONTENT = "content.npy"


def synthetic_manifest(n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of a leaky Kermany-like manifest (see the module docstring)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.geometric(0.4, n), 10)
    patient = np.repeat(np.arange(n), sizes)[:n]
    label = rng.choice(3, patient.max() + 1, p=[0.6, 0.25, 0.15])[patient]
    ids = np.char.add("person", patient.astype(str)).astype(object)
    ids[rng.random(n) < 0.2] = ""
    split = rng.choice(np.array(["train", "val", "test"]), n, p=[0.8, 0.1, 0.1])
    return pd.DataFrame({
        "path": [f"{s}/{CLASSES[c]}/{i}_{k}.jpeg" for k, (s, c, i) in
                 enumerate(zip(split, label, ids, strict=True))],
        "split": split, "label": label.astype(np.int16), "bytes": np.full(n, 1000),
        "patient_id": ids})


def make_store(out: Path, n: int) -> np.ndarray:
    """The synthetic store (scan arrays written, no image, marked complete) and its
    near-duplicate groups, also saved beside it: 1% of the images are copies of another
    image, of any patient (so groups chain patients together)."""
    manifest = synthetic_manifest(n)
    group = store.create(StoreRef(str(out)), manifest, size=8, chunk=128, classes=CLASSES,
                         splits=["train", "val", "test"], attrs={"source": "synthetic"})
    store.mark_complete(group, {"n_images": n})
    rng = np.random.default_rng(1)
    content = np.arange(n)
    copies = rng.choice(n, n // 100, replace=False)
    content[copies] = rng.integers(0, n, len(copies))
    np.save(out.parent / CONTENT, content)
    return content


def child(argv: list[str]) -> int:
    """``xraybatch split ARGS`` in this process as the command line runs it, with the
    near-duplicate groups of :data:`CONTENT` in place of ``xraybatch.dups``; prints the time
    in ``main()`` and the peak RSS."""
    from xraybatch import splits
    from xraybatch.cli import main as cli_main

    content = np.load(Path(argv[1]).parent / CONTENT)
    splits.content_groups = lambda ds, threshold=None: content
    t = time.perf_counter()
    code = cli_main(argv)
    print("BENCH", code, time.perf_counter() - t,
          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return code


def run_cli(out: Path, args: list[str]) -> dict:
    """One ``xraybatch split`` in a fresh process (:func:`child`): wall seconds and peak
    RSS (MB)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", "split", str(out), *args,
                           "--json"],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), os.environ.get("PYTHONPATH", "")])}, check=True)
    wall = time.perf_counter() - t0
    line = [x for x in done.stdout.splitlines() if x.startswith("BENCH")][-1].split()
    summary = json.loads(done.stdout[:done.stdout.rindex("BENCH")])
    return {"seconds": wall, "in_main": float(line[2]), "rss_mb": int(line[3]) / 1024,
            "summary": summary}


def quality(split: np.ndarray, names: list[str], patient: np.ndarray, content: np.ndarray,
            label: np.ndarray, ratios: dict[str, float]) -> dict:
    """Patients and near-duplicate groups in several splits, the largest share miss (pp)
    and the largest class-share miss (pp)."""
    known = patient != ""
    frame = pd.DataFrame({"p": patient[known], "s": split[known]})
    leaked = int((frame.groupby("p").s.nunique() > 1).sum())
    copies = pd.Series(split).groupby(content).nunique()
    share = {s: float(np.mean(split == i)) for i, s in enumerate(names)}
    whole = np.bincount(label, minlength=3) / len(label)
    class_miss = max(float(np.abs(np.bincount(label[split == i], minlength=3)
                                  / max((split == i).sum(), 1) - whole).max())
                     for i, s in enumerate(names) if ratios.get(s, 0) > 0)
    return {"leaked_patients": leaked, "leaked_duplicates": int((copies > 1).sum()),
            "share_miss_pp": 100 * max(abs(share[s] - r) for s, r in ratios.items()),
            "class_miss_pp": 100 * class_miss}


def sklearn_runs(patient: np.ndarray, label: np.ndarray, stratified_max: int
                 ) -> dict[str, dict]:
    """scikit-learn's group splitters on the same rows (train/val/test 0.8/0.1/0.1);
    ``StratifiedGroupKFold`` (a Python loop over groups) only up to ``stratified_max`` rows."""
    try:
        from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold
    except ImportError:
        return {}
    groups = patient.copy()
    alone = groups == ""
    groups[alone] = np.char.add("row", np.flatnonzero(alone).astype(str))
    codes = pd.factorize(groups)[0]
    out = {}
    rows = np.arange(len(codes))
    t = time.perf_counter()
    rest, test = next(GroupShuffleSplit(1, test_size=0.1, random_state=0).split(rows, groups=codes))
    train, val = next(GroupShuffleSplit(1, test_size=1 / 9, random_state=0).split(
        rest, groups=codes[rest]))
    split = np.zeros(len(codes), np.int8)
    split[rest[val]], split[test] = 1, 2
    out["scikit-learn GroupShuffleSplit x2"] = {"seconds": time.perf_counter() - t,
                                                "split": split}
    if len(codes) > stratified_max:
        return out
    t = time.perf_counter()
    folds = StratifiedGroupKFold(10, shuffle=True, random_state=0).split(rows, label, codes)
    split = np.zeros(len(codes), np.int8)
    for k, (_, held) in enumerate(folds):
        if k < 2:
            split[held] = 2 - k  # fold 0 test, fold 1 val
    out["scikit-learn StratifiedGroupKFold(10)"] = {"seconds": time.perf_counter() - t,
                                                    "split": split}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="rows (default: 1,000,000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every configuration")
    p.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    p.add_argument("--sklearn-stratified-max", type=int, default=200_000,
                   help="largest store StratifiedGroupKFold runs on (64 s at 100k rows)")
    args = p.parse_args(argv)
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "split.zarr"
        t = time.perf_counter()
        content = make_store(out, args.n)
        print(f"synthetic store of {args.n:,} rows made in {time.perf_counter() - t:.1f} s")
        ds = store.XrayStore(str(out))
        patient, label = ds.patient_ids(), ds.labels.astype(np.int64)
        ratios = {"train": 0.8, "val": 0.1, "test": 0.1}
        print(f"scan's split: {quality(ds.split, ds.splits, patient, content, label, ratios)}")
        results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
        checked: dict[str, dict] = {}
        for _ in range(args.rounds):  # interleaved
            for name, extra in CONFIGS.items():
                results[name].append(run_cli(out, extra))
                if name not in checked:  # (--keep test keeps the previous run's test)
                    now = store.XrayStore(str(out))
                    checked[name] = quality(now.split, now.splits, patient, content, label,
                                            ratios)
        rows = [{"method": f"xraybatch split {' '.join(CONFIGS[name])}",
                 "seconds": statistics.median(r["seconds"] for r in runs),
                 "in main()": statistics.median(r["in_main"] for r in runs),
                 "peak RSS MB": max(r["rss_mb"] for r in runs), **checked[name]}
                for name, runs in results.items()]
        if not args.no_sklearn:
            for name, r in sklearn_runs(patient, label, args.sklearn_stratified_max).items():
                rows.append({"method": name, "seconds": r["seconds"],
                             "in main()": float("nan"), "peak RSS MB": float("nan"),
                             **quality(r["split"], ["train", "val", "test"], patient, content,
                                       label, ratios)})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    print(f"load after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(child(sys.argv[2:]) if sys.argv[1:2] == ["--child"] else main())
