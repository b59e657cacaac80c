"""Synthetic, Kermany-shaped chest X-ray folders for tests, benchmarks and the demo.

The public chest X-ray set of Kermany et al. (2018) is laid out as
``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. :func:`synth_dataset` writes a
folder of the same shape, with the same file-name patterns, class mix, size spread and
quirks (a few RGB JPEGs, a few progressive JPEGs, a few images with a side under 256 px),
and JPEG files whose sizes and encoder settings are close to the real ones, so that decode
timings measured on it mean something. The images are drawn by
:func:`xraybatch.phantom.synth_image`.

Encoder settings follow the real sample: NORMAL files are mostly quality 100 (hence their
~600 KB average), PNEUMONIA files mostly quality 75 (~85 KB), a few of both near 88.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .phantom import KINDS, synth_image

__all__ = ["SPLITS", "synth_dataset"]

#: Split folder names, as in the Kermany release.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Class folders, as in the Kermany release: BACTERIA and VIRUS images go to PNEUMONIA.
CLASS_DIRS: tuple[str, ...] = ("NORMAL", "PNEUMONIA")
#: Written into every synthetic folder: only a folder that has it may be overwritten.
MARKER = ".xraybatch-synth"

# Fractions as in Kermany train (1,341 NORMAL, 2,530 bacteria, 1,345 virus of 5,216).
_KIND_FRACTIONS = (0.26, 0.48, 0.26)
_SPLIT_FRACTIONS = (0.85, 0.05, 0.10)
_RGB_FRACTION = 0.02
_PROGRESSIVE_FRACTION = 0.03
_SMALL_FRACTION = 0.02
_MIN_SIDE = 32
# Files a synthetic set may hold (JPEG here, DICOM from xraybatch.synth_dicom).
_OWN_SUFFIXES = (".jpeg", ".jpg", ".dcm")
_COLUMNS = ("path", "split", "kind", "height", "width", "channels", "progressive", "bytes")


@dataclass(frozen=True)
class _Task:
    """Everything one worker needs to write one file (picklable)."""

    path: str  # absolute
    kind: str
    height: int
    width: int
    channels: int
    progressive: bool
    quality: int
    seed: np.random.SeedSequence


def _render(task: _Task) -> int:
    """Draw, encode and write one image; return the number of bytes written."""
    img = synth_image(np.random.default_rng(task.seed), task.height, task.width, task.kind)
    if task.channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, task.quality,
              cv2.IMWRITE_JPEG_PROGRESSIVE, int(task.progressive)]
    ok, buf = cv2.imencode(".jpg", img, params)
    if not ok:  # pragma: no cover - cv2 only fails here on invalid parameters
        raise RuntimeError(f"JPEG encoding failed for {task.path}")
    data = buf.tobytes()
    with open(task.path, "wb") as fh:
        fh.write(data)
    return len(data)


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _apportion(total: int, fractions: Iterable[float]) -> list[int]:
    """Split ``total`` into integer parts proportional to ``fractions`` (largest remainder)."""
    fr = np.asarray(list(fractions), dtype=float)
    raw = total * fr / fr.sum()
    parts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - parts), kind="stable")[: total - parts.sum()]:
        parts[i] += 1
    return [int(p) for p in parts]


def _kind_counts(size: int) -> list[int]:
    """NORMAL/BACTERIA/VIRUS counts for one split, with both folders non-empty if size >= 2."""
    counts = _apportion(size, _KIND_FRACTIONS)
    if size >= 2 and counts[0] == 0:
        counts[0], counts[1] = 1, counts[1] - 1
    if size >= 2 and counts[1] + counts[2] == 0:
        counts[0], counts[1] = counts[0] - 1, 1
    if size >= 3 and counts[2] == 0 and counts[1] >= 2:
        counts[1], counts[2] = counts[1] - 1, 1
    return counts


def _split_counts(n: int) -> list[int]:
    counts = _apportion(n, _SPLIT_FRACTIONS)
    if n >= 30:  # every split folder gets both classes
        for i in (1, 2):
            while counts[i] < 2:
                counts[i] += 1
                counts[0] -= 1
    return counts


def _size(rng: np.random.Generator, kind: str, small: bool) -> tuple[int, int]:
    """Full-scale (height, width) like Kermany's: NORMAL larger, a few tiny PNEUMONIA."""
    if small:
        w = int(rng.integers(400, 560))
        return min(250, round(w * rng.uniform(0.30, 0.46))), w
    if kind == "NORMAL":
        w = float(np.clip(1630 * math.exp(rng.normal(0, 0.2)), 1000, 2900))
        ar = float(np.clip(rng.normal(0.84, 0.09), 0.62, 1.08))
    else:
        median = 1150 if kind == "BACTERIA" else 1250
        w = float(np.clip(median * math.exp(rng.normal(0, 0.25)), 480, 2800))
        ar = float(np.clip(rng.normal(0.68, 0.11), 0.42, 1.0))
    h = min(2500, max(280, round(w * ar)))
    return h, round(w)


def _names(rng: np.random.Generator, kinds: list[str]) -> list[str]:
    """Kermany-style unique file names for a list of kinds."""
    n_norm = kinds.count("NORMAL")
    n_pneu = len(kinds) - n_norm
    ims = rng.permutation(np.arange(1, max(800, 2 * n_norm) + 1))[:n_norm]
    imgs = rng.permutation(np.arange(1, max(4800, 2 * n_pneu) + 1))[:n_pneu]
    persons = rng.integers(1, max(1950, n_pneu // 2) + 1, size=n_pneu)
    names: list[str] = []
    i_norm = i_pneu = 0
    for kind in kinds:
        if kind == "NORMAL":
            prefix = "NORMAL2-" if rng.random() < 0.35 else ""
            seq = 1 if rng.random() < 0.9 else int(rng.integers(2, 4))
            names.append(f"{prefix}IM-{ims[i_norm]:04d}-{seq:04d}.jpeg")
            i_norm += 1
        else:
            names.append(f"person{persons[i_pneu]}_{kind.lower()}_{imgs[i_pneu]}.jpeg")
            i_pneu += 1
    return names


def _pick(
    rng: np.random.Generator, pool: np.ndarray, fraction: float, n: int, taken: set[int]
) -> set[int]:
    """Pick ``round(fraction * n)`` indices (at least 1 if n >= 20), avoiding ``taken``."""
    k = round(fraction * n)
    if n >= 20:
        k = max(k, 1)
    free = np.array([i for i in pool if int(i) not in taken], dtype=int)
    if len(free) < k:  # too few to keep the quirks apart
        free = np.asarray(pool, dtype=int)
    k = min(k, len(free))
    picked = {int(i) for i in rng.choice(free, size=k, replace=False)} if k else set()
    taken |= picked
    return picked


def _plan(n: int, seed: int, scale: float) -> pd.DataFrame:
    """Lay out ``n`` images: split, kind, name, size, quirks, encoder settings, seed."""
    plan_seq, *image_seqs = np.random.SeedSequence(seed).spawn(n + 1)
    rng = np.random.default_rng(plan_seq)
    splits: list[str] = []
    kinds: list[str] = []
    for split, size in zip(SPLITS, _split_counts(n), strict=True):
        for kind, count in zip(KINDS, _kind_counts(size), strict=True):
            splits += [split] * count
            kinds += [kind] * count
    kinds_arr = np.array(kinds, dtype=object)
    for split in SPLITS:  # shuffle kinds within a split so file order is mixed
        idx = np.flatnonzero(np.array(splits) == split)
        kinds_arr[idx] = kinds_arr[rng.permutation(idx)]
    kinds = [str(k) for k in kinds_arr]
    names = _names(rng, kinds)

    # Quirks, as in the real data where they all sit in PNEUMONIA.
    pneu = np.flatnonzero(kinds_arr != "NORMAL")
    pool = pneu if len(pneu) else np.arange(n)
    taken: set[int] = set()
    small = _pick(rng, pool, _SMALL_FRACTION, n, taken)
    rgb = _pick(rng, pool, _RGB_FRACTION, n, taken)
    prog = _pick(rng, pool, _PROGRESSIVE_FRACTION, n, taken)

    rows = []
    for i in range(n):
        kind = kinds[i]
        h, w = _size(rng, kind, i in small)
        h = max(_MIN_SIDE, round(h * scale))
        w = max(_MIN_SIDE, round(w * scale))
        # Encoder quality as in the real files: NORMAL 100, PNEUMONIA 75, ~7% near 88.
        q = (100 if kind == "NORMAL" else 75) if rng.random() >= 0.07 else int(rng.integers(87, 89))
        folder = "NORMAL" if kind == "NORMAL" else "PNEUMONIA"
        rows.append({
            "path": f"{splits[i]}/{folder}/{names[i]}",
            "split": splits[i],
            "kind": kind,
            "height": h,
            "width": w,
            "channels": 3 if i in rgb else 1,
            "progressive": i in prog,
            "quality": q,
            "seed": image_seqs[i],
        })
    return pd.DataFrame(rows, columns=[*_COLUMNS[:-1], "quality", "seed"])


def _is_removable(out: Path) -> bool:
    """True if ``out`` was written by :func:`synth_dataset` (it has the marker file) and
    holds nothing else than train/val/test dirs of class dirs of JPEG (or DICOM) files."""
    if not (out / MARKER).is_file():
        return False
    for split in out.iterdir():
        if split.name == MARKER:
            continue
        if split.name not in SPLITS or split.is_symlink() or not split.is_dir():
            return False
        for cls in split.iterdir():
            if cls.is_symlink() or not cls.is_dir():
                return False
            for f in cls.iterdir():
                if f.is_symlink() or not f.is_file() or f.suffix.lower() not in _OWN_SUFFIXES:
                    return False
    return True


def _prepare(out: Path, overwrite: bool) -> None:
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise FileExistsError(f"{out} exists and is not a plain directory")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out} exists and is not empty; pass overwrite=True to replace a synthetic set"
            )
        if not _is_removable(out):
            raise FileExistsError(
                f"refusing to overwrite {out}: it is not a synthetic set written by xraybatch "
                "(no marker file, or other files in it)"
            )
        for split in SPLITS:
            if (out / split).is_dir():
                shutil.rmtree(out / split)
    for split in SPLITS:
        for cls in CLASS_DIRS:
            (out / split / cls).mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by xraybatch synth_dataset; may be overwritten\n")


def synth_dataset(
    out: str | os.PathLike,
    n: int = 240,
    seed: int = 0,
    *,
    scale: float = 1.0,
    workers: int | None = None,
    overwrite: bool = False,
) -> pd.DataFrame:
    """Write a synthetic, Kermany-shaped chest X-ray folder of ``n`` JPEG files.

    The layout is ``out/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` (all six folders are
    created; each holds files when ``n >= 30``). The mix follows Kermany's train split:
    about 26% NORMAL, 48% bacterial and 26% viral pneumonia, spread 85/5/10 over
    train/val/test. File names follow the real patterns (``IM-0115-0001.jpeg``,
    ``NORMAL2-IM-0123-0001.jpeg``, ``person12_bacteria_46.jpeg``,
    ``person1202_virus_2045.jpeg``). As in the real data, about 2% of the files are
    3-channel (grey content), about 3% progressive and about 2% have a side under 256 px
    (at least one of each when ``n >= 20``; all three quirks are put on PNEUMONIA files).
    Sizes and encoder qualities follow the real sample, so at ``scale=1`` NORMAL files
    average about 0.6 MB and PNEUMONIA files about 85 KB.

    Parameters
    ----------
    out : str or os.PathLike
        Folder to write; created if missing. It must be empty unless ``overwrite``.
    n : int, default 240
        Number of images.
    seed : int, default 0
        Seed; the same ``(n, seed, scale)`` always gives byte-identical files, whatever
        ``workers`` is.
    scale : float, default 1.0
        Factor applied to every image's height and width (e.g. 0.25 for fast tests);
        no side is made smaller than 32 px.
    workers : int, optional
        Processes to draw the images with; default ``os.cpu_count()``. ``1`` runs in
        this process.
    overwrite : bool, default False
        Replace the split folders of an existing synthetic set. ``out`` is only cleared
        if it holds nothing but ``train``/``val``/``test`` folders of JPEG files.

    Returns
    -------
    pandas.DataFrame
        One row per file, sorted by path, with columns ``path`` (relative to ``out``,
        POSIX separators), ``split``, ``kind`` (NORMAL/BACTERIA/VIRUS), ``height``,
        ``width``, ``channels`` (1 or 3), ``progressive`` (bool) and ``bytes``.

    Raises
    ------
    FileExistsError
        If ``out`` is not empty and ``overwrite`` is false, or if it holds anything
        besides a synthetic set.
    ValueError
        If ``n`` is negative, ``scale`` is not positive or ``workers`` is below 1.

    Notes
    -----
    With ``workers > 1`` the images are drawn in processes started with the "spawn"
    method (each one single-threaded in OpenCV), so the usual multiprocessing rule
    applies: a script that calls this must do so under ``if __name__ == "__main__":``,
    and code piped to ``python -`` must pass ``workers=1``. At ``scale=1`` one image
    takes about 25 ms to draw and encode on one core (NORMAL ~2.3 MP); at
    ``scale=0.25`` about 8 ms.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     df = synth_dataset(tmp, n=30, seed=1, scale=0.1, workers=1)
    >>> len(df), sorted(df.kind.unique())
    (30, ['BACTERIA', 'NORMAL', 'VIRUS'])
    >>> df.groupby("split").size().to_dict()
    {'test': 3, 'train': 25, 'val': 2}
    """
    n = int(n)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    root = Path(out)
    _prepare(root, overwrite)
    plan = _plan(n, seed, float(scale))
    tasks = [
        _Task(str(root / r.path), r.kind, int(r.height), int(r.width), int(r.channels),
              bool(r.progressive), int(r.quality), r.seed)
        for r in plan.itertuples(index=False)
    ]
    if workers > 1 and n > 1:
        workers = min(workers, n)
        chunk = max(1, n // (workers * 8))
        # "spawn", not fork: in a child forked after OpenCV has started its thread pool,
        # cv2.setNumThreads() hangs (seen with opencv-python 5.0 on Linux).
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            sizes = list(pool.map(_render, tasks, chunksize=chunk))
    else:
        sizes = [_render(t) for t in tasks]
    plan["bytes"] = sizes
    df = plan[list(_COLUMNS)].sort_values("path", ignore_index=True)
    return df.astype({"height": "int64", "width": "int64", "channels": "int64",
                      "progressive": bool, "bytes": "int64"})
