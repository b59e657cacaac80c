"""Near-duplicate benchmark: planted altered copies, xraybatch against imagededup and cleanvision.

    python benchmarks/dups.py [SRC] [--out DIR] [--per-kind 10] [--peers] [--sizes 100000,1000000]
                              [--pipeline 1000000]

1. **Set**: every image of SRC (default: the shared Kermany sample) is copied as it is, in
   its own split; ``--per-kind`` originals per alteration kind get an altered copy planted
   in another split (train <-> test): JPEG re-encoded at quality 20, downscaled 2x,
   brightness/contrast, gamma 0.7, Gaussian noise, PNG, cropped 3-4 % per side, shifted by
   4 %, rotated by 3 degrees. ``truth.csv`` lists the planted pairs.
2. **Tools** on the same files, one run: xraybatch (ingest, then ``dups``), imagededup PHash
   and DHash at several Hamming distances, cleanvision near + exact duplicates (``--peers``;
   they need ``pip install imagededup cleanvision``). Each is scored per alteration kind:
   planted pairs found, and other pairs reported (pairs byte-identical in SRC itself count
   as found, never as other). A tool that reports groups is credited with every pair of a
   group.
3. **Search alone** at ``--sizes`` synthetic fingerprints (each size in a fresh process:
   time and peak RSS of candidate search, and the verification cost per pair).
4. **The whole search** at ``--pipeline`` sizes (each in a fresh process): candidates,
   prefilter and verification of synthetic codes whose rows carry real films' thumbnails
   (:func:`pipeline_alone`); time per step, peak RSS, recall of the planted copies.
5. **Fingerprint cost**: CPU per image of the fingerprint against the chunk task's own read,
   decode, resize and histogram of the same image (serial, interleaved).

Writes OUT/dups.json and prints Markdown tables (benchmarks/README.md, "Near-duplicates").
``--quick`` is a smoke test (2 per kind, no peers, 20,000 fingerprints searched, 5,000 through
the whole search).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[1]))
SAMPLE = HERE.parents[2] / "shared/data/chest_xray_sample"
KINDS = ("jpeg_q20", "downscale", "brightness_contrast", "gamma", "noise", "png", "crop",
         "shift", "rotate")
IMAGES = {".jpeg", ".jpg", ".png"}
OTHER_SPLIT = {"train": "test", "test": "train", "val": "train"}


def alter(image: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[str, bytes]:
    """One altered copy of a full-size grayscale image: (extension, file bytes).

    Examples
    --------
    >>> ext, data = alter(np.full((64, 80), 100, np.uint8), "rotate", np.random.default_rng(0))
    >>> ext, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE).shape
    ('.jpeg', (64, 80))
    """
    h, w = image.shape
    if kind == "jpeg_q20":
        return ".jpeg", _jpeg(image, 20)
    if kind == "png":
        return ".png", cv2.imencode(".png", image)[1].tobytes()
    if kind == "downscale":
        out = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    elif kind == "brightness_contrast":
        out = np.clip(image.astype(np.float32) * 0.85 + 25, 0, 255).astype(np.uint8)
    elif kind == "gamma":
        out = (255 * (image / 255.0) ** 0.7).round().astype(np.uint8)
    elif kind == "noise":
        out = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    elif kind == "crop":
        out = image[int(0.04 * h):h - int(0.02 * h), int(0.02 * w):w - int(0.04 * w)]
    elif kind == "shift":
        move = np.float32([[1, 0, 0.04 * w], [0, 1, -0.03 * h]])
        out = cv2.warpAffine(image, move, (w, h), borderValue=0)
    elif kind == "rotate":
        out = cv2.warpAffine(image, cv2.getRotationMatrix2D((w / 2, h / 2), 3.0, 1.0), (w, h),
                             borderValue=0)
    else:
        raise ValueError(f"unknown alteration {kind!r}")
    return ".jpeg", _jpeg(out, 90)


def _jpeg(image: np.ndarray, quality: int) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def build(src: Path, root: Path, per_kind: int, seed: int = 0) -> pd.DataFrame:
    """Copy SRC to ROOT and plant altered copies; the planted pairs (relative paths, kind)."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGES)
    if root.exists():
        shutil.rmtree(root)
    for f in files:
        (root / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, root / f.relative_to(src))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(files), size=min(len(files), per_kind * len(KINDS)), replace=False)
    rows = []
    for i, kind in zip(chosen, itertools.cycle(KINDS)):
        rel = files[i].relative_to(src)
        split = rel.parts[0] if rel.parts[0] in OTHER_SPLIT else "train"
        ext, data = alter(cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE), kind, rng)
        copy = Path(OTHER_SPLIT.get(split, "test"), *rel.parts[1:-1], f"{rel.stem}_{kind}{ext}")
        (root / copy).parent.mkdir(parents=True, exist_ok=True)
        (root / copy).write_bytes(data)
        rows.append({"original": str(rel), "copy": str(copy), "kind": kind})
    truth = pd.DataFrame(rows)
    truth.to_csv(root.parent / "truth.csv", index=False)
    return truth


def natural_pairs(root: Path) -> set[frozenset[str]]:
    """Pairs of byte-identical files already in the set (found, never counted as other)."""
    import hashlib

    by_hash: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            by_hash.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(
                str(p.relative_to(root)))
    return {frozenset(pair) for same in by_hash.values() if len(same) > 1
            for pair in itertools.combinations(same, 2)}


def same_content(truth: pd.DataFrame, natural: set[frozenset[str]]) -> dict[str, int]:
    """Path -> group of the images that are the same film (planted copies, byte-identical
    files, and so the copy of one of two identical files and the other file)."""
    group: dict[str, int] = {}
    for pair in [*natural, *map(frozenset, zip(truth.original, truth["copy"], strict=True))]:
        ids = {group[p] for p in pair if p in group}
        new = min(ids) if ids else len(group) + 1_000_000
        for path, g in list(group.items()):
            if g in ids:
                group[path] = new
        for p in pair:
            group[p] = new
    return group


def score(pairs: set[frozenset[str]], truth: pd.DataFrame, natural: set[frozenset[str]],
          n_images: int) -> dict:
    """Planted pairs found per kind, and other pairs (per 1,000 images too): a pair of two
    images of the same film (:func:`same_content`) is never counted as other."""
    planted = {frozenset((o, c)): k for o, c, k in zip(truth.original, truth["copy"], truth.kind,
                                                       strict=True)}
    found = {k: 0 for k in KINDS}
    for pair, kind in planted.items():
        found[kind] += pair in pairs
    group = same_content(truth, natural)
    other = sum(1 for a, b in map(tuple, pairs) if a not in group or group[a] != group.get(b))
    per_kind = truth.kind.value_counts().to_dict()
    return {"found": sum(found.values()), "planted": len(planted),
            "recall": sum(found.values()) / max(1, len(planted)),
            "per_kind": {k: f"{found[k]}/{per_kind.get(k, 0)}" for k in KINDS},
            "other": other, "other_per_1000": 1000 * other / n_images}


def _group_pairs(groups: list[list[str]]) -> set[frozenset[str]]:
    return {frozenset(p) for g in groups for p in itertools.combinations(sorted(set(g)), 2)}


# --- the tools ------------------------------------------------------------------------------


def run_xraybatch(root: Path, work: Path, thresholds: list[float]) -> list[dict]:
    """Ingest (fingerprints included) and dups; one row per threshold."""
    import xraybatch
    from xraybatch import dups

    out = work / "dups.zarr"
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    xraybatch.ingest(root, out, labels="folder")
    ingest_s = time.perf_counter() - t0
    ds = xraybatch.open(out)
    t0 = time.perf_counter()
    pairs = dups.near_duplicate_pairs(ds, dups.FLOOR, keep=False)
    search_s = time.perf_counter() - t0
    paths = ds.paths
    rows = []
    for t in thresholds:
        kept = pairs[pairs.score >= t]
        rows.append({"tool": f"xraybatch dups, threshold {t:.2f}" + (
            " (default)" if t == dups.DEFAULT_THRESHOLD else ""),
            "pairs": {frozenset((paths[a], paths[b])) for a, b in zip(kept.a, kept.b,
                                                                     strict=True)},
            "seconds": search_s, "ingest_seconds": ingest_s})
    return rows


def run_imagededup(root: Path, distances: list[int]) -> list[dict]:
    from imagededup.methods import DHash, PHash

    rows = []
    for method in (PHash, DHash):
        hasher = method(verbose=False)
        t0 = time.perf_counter()
        encodings = hasher.encode_images(image_dir=str(root), recursive=True)
        encode_s = time.perf_counter() - t0
        for d in distances:
            t1 = time.perf_counter()
            found = hasher.find_duplicates(encoding_map=encodings, max_distance_threshold=d)
            pairs = {frozenset((a, b)) for a, bs in found.items() for b in bs}
            rows.append({"tool": f"imagededup {method.__name__}, distance {d}" + (
                " (its default)" if d == 10 else ""), "pairs": pairs,
                "seconds": encode_s + time.perf_counter() - t1})
    return rows


def run_cleanvision(root: Path) -> list[dict]:
    from cleanvision import Imagelab

    t0 = time.perf_counter()
    lab = Imagelab(data_path=str(root), verbose=False)
    lab.find_issues({"near_duplicates": {}, "exact_duplicates": {}}, verbose=False)
    sets = [[str(Path(p).relative_to(root)) for p in s]
            for kind in ("near_duplicates", "exact_duplicates") for s in lab.info[kind]["sets"]]
    return [{"tool": "cleanvision near + exact duplicates", "pairs": _group_pairs(sets),
             "seconds": time.perf_counter() - t0}]


# --- search alone ---------------------------------------------------------------------------


def synthetic_codes(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n SimHash codes shaped like X-ray fingerprints, and the planted pairs (a, b, bits
    flipped): 1 % of the rows are near copies of another row.

    Real chest films share their layout, so their codes are correlated: each code is the
    SimHash of a shared direction plus a random one, mixed so that two codes differ in
    ~19-25 of 64 bits on average, as the real sample's do; a planted copy flips 2-12 bits.
    """
    from xraybatch import fingerprint

    rng = np.random.default_rng(seed)
    codes = np.zeros((n, fingerprint.N_CODES), np.uint64)
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for k, spread in zip(range(fingerprint.N_CODES), (1.2, 0.8, 0.8), strict=False):
        shared = rng.standard_normal(64) * spread
        for start in range(0, n, 100_000):
            stop = min(n, start + 100_000)
            x = (shared + rng.standard_normal((stop - start, 64))) > 0
            codes[start:stop, k] = (x * bits).sum(axis=1, dtype=np.uint64)
    planted = rng.choice(n, size=n // 100, replace=False)
    sources = (planted + rng.integers(1, n, len(planted))) % n  # never the row itself
    flips = rng.integers(2, 13, len(planted))
    for p, s, f in zip(planted, sources, flips, strict=True):
        mask = np.uint64(0)
        for b in rng.choice(64, size=f, replace=False):
            mask |= bits[b]
        codes[p] = codes[s] ^ mask
    return codes, np.column_stack([np.minimum(planted, sources), np.maximum(planted, sources),
                                   flips])


def search_alone(n: int) -> dict:
    """Candidate search over n synthetic codes, in this process (call in a fresh one)."""
    from xraybatch.dups_candidates import candidate_pairs

    codes, planted = synthetic_codes(n)
    t0 = time.perf_counter()
    pairs = candidate_pairs(codes)
    seconds = time.perf_counter() - t0
    found = set(map(tuple, pairs.tolist()))
    hits = np.array([(a, b) in found for a, b, _ in planted.tolist()])
    few = planted[:, 2] <= 6
    return {"n": n, "seconds": seconds, "candidates": len(pairs),
            "planted_in_candidates": float(hits.mean()),
            "planted_2_6_bits": float(hits[few].mean()),
            "planted_7_12_bits": float(hits[~few].mean()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _real_pool(store: str, truth_csv: str
               ) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Thumbnails of the benchmark's store: the films of SRC first, then the originals and
    copies of its planted pairs; the content (film) of each; the number of films; the
    (original, copy) indices of each planted pair."""
    import xraybatch

    ds = xraybatch.open(store)
    thumbs = ds.fingerprint_thumbs(np.arange(len(ds)))
    paths = list(ds.paths)
    truth = pd.read_csv(truth_csv)
    row = {p: i for i, p in enumerate(paths)}
    copies = {row[c] for c in truth["copy"]}
    films = [i for i in range(len(ds)) if i not in copies and ds.valid[i]]
    pairs = np.array([[row[o], row[c]] for o, c in zip(truth.original, truth["copy"],
                                                        strict=True)])
    pool = np.concatenate([thumbs[films], thumbs[pairs[:, 0]], thumbs[pairs[:, 1]]])
    # Films with identical thumbnails (the sample's byte-identical pair) are one content.
    same = np.unique(thumbs[films].reshape(len(films), -1), axis=0, return_inverse=True)[1]
    of_film = same.ravel()[np.searchsorted(films, pairs[:, 0])]
    content = np.concatenate([same.ravel(), of_film, of_film])
    k, m = len(films), len(pairs)
    return pool, content, k, np.column_stack([k + np.arange(m), k + m + np.arange(m)])


def pipeline_alone(n: int, store: str, truth_csv: str, workers: int = 2) -> dict:
    """``near_duplicate_pairs``' steps on n synthetic fingerprints, in this process (call in a
    fresh one): candidate search on :func:`synthetic_codes`, prefilter descriptors of every
    candidate row, prefilter scores, ``align_scores`` of the survivors (``workers`` threads,
    as the Dask threads scheduler runs the tasks; the store reads are not part of it).

    Each row's thumbnail is one of the real films of the benchmark's store (row i: film
    i mod films), and each planted pair of codes gets the thumbnails of one of the real
    planted (original, altered copy) pairs, so that the prefilter and the verification see
    real films: different films for almost every candidate pair, real copies for the
    planted ones. Pairs of two rows given the same film are counted apart.
    """
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from xraybatch import dups, fingerprint
    from xraybatch.dups_candidates import candidate_pairs, sorted_unique
    from xraybatch.dups_scoring import BLOCK, DESCRIBE_ROWS, prefilter_keep

    cv2.setNumThreads(1)
    pool, content, n_films, real_pairs = _real_pool(store, truth_csv)
    codes, planted = synthetic_codes(n)
    film = np.arange(n) % n_films
    taken = np.zeros(n, bool)
    used = []
    for k, (a, b, _) in enumerate(planted.tolist()):
        if taken[a] or taken[b]:
            continue  # a row in two planted pairs keeps its first film
        film[a], film[b] = real_pairs[k % len(real_pairs)]
        taken[a] = taken[b] = True
        used.append((a, b))
    used = np.array(used)
    times: dict[str, list[float]] = {}

    def timed(name: str, fn, *args):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*args)
        times[name] = [time.perf_counter() - t0, time.process_time() - c0]
        return out

    def describe(rows: np.ndarray) -> np.ndarray:
        parts = [rows[i:i + DESCRIBE_ROWS] for i in range(0, len(rows), DESCRIBE_ROWS)]
        with ThreadPoolExecutor(workers) as ex:
            return np.concatenate(list(ex.map(
                lambda r: fingerprint.spectrum_descriptors(pool[film[r]]), parts)))

    def verify(pairs: np.ndarray) -> np.ndarray:
        blocks = [pairs[i:i + BLOCK] for i in range(0, len(pairs), BLOCK)]
        with ThreadPoolExecutor(workers) as ex:
            return np.concatenate([np.zeros(0)] + list(ex.map(
                lambda p: fingerprint.align_scores(pool[film[p[:, 0]]], pool[film[p[:, 1]]]),
                blocks)))

    candidates = timed("candidates", candidate_pairs, codes)
    rows = sorted_unique(candidates.ravel())
    described = timed("descriptors", describe, rows)
    keep = timed("prefilter", prefilter_keep, described, np.searchsorted(rows, candidates),
                 workers)
    del described
    survivors = candidates[keep]
    scores = timed("verification", verify, survivors)
    reported = survivors[scores >= dups.DEFAULT_THRESHOLD]
    key = candidates[:, 0] * n + candidates[:, 1]
    planted_key = used[:, 0] * n + used[:, 1]
    in_candidates = np.isin(planted_key, key)
    passed = np.isin(planted_key, survivors[:, 0] * n + survivors[:, 1])
    found = np.isin(planted_key, reported[:, 0] * n + reported[:, 1])
    same_film = content[film[reported[:, 0]]] == content[film[reported[:, 1]]]
    other = ~np.isin(reported[:, 0] * n + reported[:, 1], planted_key) & ~same_film
    return {"n": n, "workers": workers, "candidates": len(candidates),
            "candidates_same_film": int((content[film[candidates[:, 0]]]
                                         == content[film[candidates[:, 1]]]).sum()),
            "verified": len(survivors), "reported": len(reported),
            "reported_same_film": int(same_film.sum()), "reported_other": int(other.sum()),
            "planted": len(used), "planted_in_candidates": float(in_candidates.mean()),
            "planted_past_prefilter": float(passed.mean()), "planted_found": float(found.mean()),
            "planted_found_of_candidates": float(found[in_candidates].mean()),
            "seconds": {k: v[0] for k, v in times.items()},
            "cpu_seconds": {k: v[1] for k, v in times.items()},
            "total_seconds": sum(v[0] for v in times.values()),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "load": os.getloadavg()}


def verify_cost(n_pairs: int = 400) -> float:
    """Seconds per verified pair (one thread) that needs the whole alignment grid: synthetic
    films against copies of themselves turned by 3 degrees. The worst case: a pair of
    different films mostly stops after the coarse stage, a copy altered only in its pixel
    values after the first."""
    import cv2

    from xraybatch import fingerprint
    from xraybatch.phantom import synth_image

    rng = np.random.default_rng(1)
    films = [synth_image(rng, 256, 256, "NORMAL") for _ in range(40)]
    turn = cv2.getRotationMatrix2D((127.5, 127.5), 3.0, 1.0)
    turned = [cv2.warpAffine(f, turn, (256, 256), borderMode=cv2.BORDER_REFLECT) for f in films]
    thumbs, copies = (np.array([fingerprint.equalized_thumbnail(f) for f in group])
                      for group in (films, turned))
    a = rng.integers(0, 40, n_pairs)
    t0 = time.perf_counter()
    fingerprint.align_scores(thumbs[a], copies[a])
    return (time.perf_counter() - t0) / n_pairs


def fingerprint_cost(src: Path, rounds: int = 5) -> dict:
    """Serial CPU per image of the chunk task's own work (read, SHA-256, decode, resize,
    histogram) and of the fingerprints of the results, in the order the chunk task runs them
    (:func:`xraybatch.tasks.process_chunk`: a chunk of images decoded, then fingerprinted).

    Each image's fastest of ``rounds`` (the least disturbed by other jobs on a shared
    machine), then the mean over the images; the medians over rounds are given too.
    """
    import cv2

    from xraybatch import decode, fingerprint

    cv2.setNumThreads(1)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGES)
    times = np.zeros((rounds, len(files), 2))
    for r in range(rounds):
        for start in range(0, len(files), 128):  # one chunk of the default size at a time
            done = []
            for i in range(start, min(start + 128, len(files))):
                t0 = time.process_time()
                image, _ = decode.load(files[i])
                done.append((i, image, decode.histogram(image)))
                times[r, i, 0] = time.process_time() - t0
            for i, image, hist in done:
                t0 = time.process_time()
                fingerprint.fingerprint(image, hist)
                times[r, i, 1] = time.process_time() - t0
    decode_ms, print_ms = 1e3 * times.min(axis=0).mean(axis=0)
    median = 1e3 * np.median(times.mean(axis=1), axis=0)
    return {"images": len(files), "rounds": rounds, "decode_ms": float(decode_ms),
            "fingerprint_ms": float(print_ms), "ratio": float(print_ms / decode_ms),
            "median_decode_ms": float(median[0]), "median_fingerprint_ms": float(median[1])}


# --- main -----------------------------------------------------------------------------------


def _machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}; load: {os.getloadavg()}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("src", nargs="?", default=str(SAMPLE))
    p.add_argument("--out", default="/tmp/xraybatch-dups-bench")
    p.add_argument("--per-kind", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peers", action="store_true", help="also run imagededup and cleanvision")
    p.add_argument("--sizes", default="100000,1000000")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--pipeline", default="1000000",
                   help="sizes of the whole search (candidates, prefilter, verification)")
    p.add_argument("--search-only", type=int, help=argparse.SUPPRESS)
    p.add_argument("--pipeline-only", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.search_only:
        print(json.dumps(search_alone(args.search_only)))
        return 0
    if args.pipeline_only:
        n, store, truth_csv = args.pipeline_only
        print(json.dumps(pipeline_alone(int(n), store, truth_csv)))
        return 0
    if args.quick:
        args.per_kind, args.sizes, args.peers, args.pipeline = 2, "20000", False, "5000"
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    root = work / "set"
    truth = build(Path(args.src), root, args.per_kind, args.seed)
    natural = natural_pairs(root)
    n_images = sum(1 for f in root.rglob("*") if f.is_file())
    print(f"set: {n_images} images, {len(truth)} planted copies, {len(natural)} byte-identical "
          f"pairs already in SRC; machine: {_machine()}", flush=True)
    from xraybatch import dups

    runs = run_xraybatch(root, work, sorted({0.6, 0.65, dups.DEFAULT_THRESHOLD, 0.75, 0.8}))
    if args.peers:
        runs += run_imagededup(root, [0, 2, 4, 6, 10])
        runs += run_cleanvision(root)
    table = []
    for run in runs:
        result = score(run["pairs"], truth, natural, n_images)
        table.append({"tool": run["tool"], **result, "seconds": run["seconds"],
                      "images_per_s": n_images / run["seconds"],
                      **({"ingest_seconds": run["ingest_seconds"]} if "ingest_seconds" in run
                         else {})})
    print("\n| tool | planted found | " + " | ".join(KINDS) + " | other pairs | per 1,000 "
          "images | seconds | images/s |")
    print("|---|--:|" + "--:|" * len(KINDS) + "--:|--:|--:|--:|")
    for r in table:
        print(f"| {r['tool']} | {r['found']}/{r['planted']} | "
              + " | ".join(r["per_kind"][k] for k in KINDS)
              + f" | {r['other']} | {r['other_per_1000']:.1f} | {r['seconds']:.1f} | "
              f"{r['images_per_s']:.0f} |")
    search = []
    for n in (int(s) for s in args.sizes.split(",") if s):
        done = subprocess.run([sys.executable, str(HERE), "--search-only", str(n)],
                              capture_output=True, text=True, check=True)
        search.append(json.loads(done.stdout))
        print(f"search alone, {n:,} fingerprints: {search[-1]}", flush=True)
    pipeline = []
    for n in (int(s) for s in args.pipeline.split(",") if s):
        done = subprocess.run([sys.executable, str(HERE), "--pipeline-only", str(n),
                               str(work / "dups.zarr"), str(work / "truth.csv")],
                              capture_output=True, text=True, check=True)
        pipeline.append(json.loads(done.stdout))
        print(f"whole search, {n:,} fingerprints: {pipeline[-1]}", flush=True)
    cost = fingerprint_cost(Path(args.src), 2 if args.quick else 5)
    print(f"fingerprint cost: {cost}", flush=True)
    per_pair = verify_cost()
    print(f"verification: {per_pair * 1e3:.2f} ms per pair (one thread); machine: {_machine()}")
    (work / "dups.json").write_text(json.dumps({
        "machine": _machine(), "n_images": n_images, "planted": len(truth),
        "table": table, "search": search, "pipeline": pipeline,
        "verify_seconds_per_pair": per_pair,
        "fingerprint_cost": cost}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
