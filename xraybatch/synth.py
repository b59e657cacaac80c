"""Synthetic, Kermany-shaped chest X-ray folders for tests, benchmarks and the demo.

The public chest X-ray set of Kermany et al. (2018) is laid out as
``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``. :func:`synth_dataset` writes a
folder of the same shape, with the same file-name patterns, class mix, size spread and
quirks (a few RGB JPEGs, a few progressive JPEGs, a few images with a side under 256 px),
and JPEG files whose sizes and encoder settings are close to the real ones, so that decode
timings measured on it mean something. :func:`synth_image` draws one image.

The images are drawings, not medical data: a dark background, a bright body with a soft
tissue gradient, darker lung fields with vascular texture, heart, spine, rib arcs and
clavicles; PNEUMONIA images add a dense lobar consolidation (bacterial) or a diffuse patchy
haze (viral); all get a spatially correlated film grain.

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

__all__ = ["KINDS", "SPLITS", "synth_dataset", "synth_image"]

#: The three image kinds; BACTERIA and VIRUS are written to the PNEUMONIA folders.
KINDS: tuple[str, ...] = ("NORMAL", "BACTERIA", "VIRUS")
#: Split folder names, as in the Kermany release.
SPLITS: tuple[str, ...] = ("train", "val", "test")
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
# Amplitudes (grey-level std) of the noise correlated over 8, 4, 2 and 1 px, calibrated so
# that file sizes match the real sample's (NORMAL ~0.26 B/px at quality 100, PNEUMONIA
# ~0.08 B/px at quality 75).
_GRAIN: dict[str, tuple[float, float, float, float]] = {
    "NORMAL": (4.5, 2.4, 0.4, 0.0),
    "BACTERIA": (5.5, 3.8, 2.8, 1.1),
    "VIRUS": (6.5, 4.4, 3.2, 1.3),
}
# Side of the low-resolution canvas the anatomy is drawn on before upscaling.
_CANVAS = 400
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


# --------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------


def _pt(x: float, y: float) -> tuple[int, int]:
    return (round(x * _ONE), round(y * _ONE))


def _ellipse(
    shape: tuple[int, int],
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float = 0.0,
) -> np.ndarray:
    """Filled float32 ellipse mask (0/1) on a canvas of ``shape``."""
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, _pt(*center), _pt(max(axes[0], 0.5), max(axes[1], 0.5)), angle,
                0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
    return mask


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones are done on a downsampled copy (same look, much faster)."""
    sigma = max(float(sigma), 0.3)
    k = int(sigma // 3)
    if k < 2:
        return cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    h, w = a.shape
    small = cv2.resize(a, (-(-w // k), -(-h // k)), interpolation=cv2.INTER_AREA)
    # Area down- and linear up-sampling blur by about 0.6 k themselves.
    small = cv2.GaussianBlur(small, (0, 0), math.sqrt(sigma**2 - 0.36 * k * k) / k,
                             borderType=cv2.BORDER_REFLECT)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std noise smoothed over about ``sigma`` canvas pixels."""
    k = max(1, int(sigma // 2))  # drawn at 1/k resolution, then upscaled
    h, w = -(-shape[0] // k), -(-shape[1] // k)
    n = cv2.GaussianBlur(rng.random((h, w), np.float32), (0, 0), max(sigma / k, 0.5),
                         borderType=cv2.BORDER_REFLECT)
    mean, std = cv2.meanStdDev(n)
    n = (n - float(mean[0, 0])) / max(float(std[0, 0]), 1e-6)
    if k > 1:
        n = cv2.resize(n, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return n


def _polyline(
    layer: np.ndarray, xs: np.ndarray, ys: np.ndarray, thickness: float, value: float
) -> None:
    pts = np.stack([xs * _ONE, ys * _ONE], axis=1).round().astype(np.int32)
    cv2.polylines(layer, [pts], False, value, max(1, round(thickness)), cv2.LINE_AA, _SHIFT)


def synth_image(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """Draw one X-ray-like 8-bit grayscale chest image.

    The anatomy (body, lungs, heart, spine, ribs, clavicles and, for PNEUMONIA kinds, the
    opacity) is drawn on a canvas of at most 400 px and upscaled; film grain is then added
    at full resolution. The result depends only on ``rng``'s state and the arguments.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; it is advanced by the call.
    height, width : int
        Size of the image in pixels (each at least 1).
    kind : {'NORMAL', 'BACTERIA', 'VIRUS'}
        NORMAL lungs are clear; BACTERIA adds a dense lobar consolidation in one lung;
        VIRUS adds a diffuse patchy interstitial haze in both lungs.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array of shape ``(height, width)``.

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`KINDS` or a size is below 1.

    Examples
    --------
    >>> import numpy as np
    >>> img = synth_image(np.random.default_rng(0), 240, 300, "VIRUS")
    >>> img.shape, img.dtype
    ((240, 300), dtype('uint8'))
    >>> bool((synth_image(np.random.default_rng(0), 240, 300, "VIRUS") == img).all())
    True
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")

    f = min(1.0, _CANVAS / max(height, width))
    H, W = max(8, round(height * f)), max(8, round(width * f))
    shape = (H, W)
    u = rng.uniform  # shorthand

    # Background: dark, with a slight gradient.
    yy = np.linspace(0.0, 1.0, H, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, W, dtype=np.float32)[None, :]
    bg = u(-10, 30)  # the darkest films clip to 0
    img = bg + u(-10, 10) * xx + u(-10, 10) * yy + np.zeros(shape, np.float32)

    # Patient geometry, in canvas pixels.
    cx = W * (0.5 + u(-0.04, 0.04))
    body_w = W * u(0.40, 0.50)  # half width of the thorax
    top = H * u(-0.02, 0.10)  # shoulder line
    dia = H * u(0.70, 0.84)  # top of the diaphragm domes

    # Body / soft tissue: torso, neck, shoulders, arms; denser towards the middle.
    body = _ellipse(shape, (cx, H * 0.62), (body_w, H * 0.62), u(-4, 4))
    body = np.maximum(body, _ellipse(shape, (cx, top), (W * u(0.08, 0.12), H * 0.2)))
    body = np.maximum(body, _ellipse(shape, (cx, top + H * 0.1), (body_w * 1.1, H * 0.12)))
    for side in (-1, 1):
        if u() < 0.6:
            ax = cx + side * (body_w + W * u(0.0, 0.05))
            body = np.maximum(body, _ellipse(shape, (ax, H * u(0.2, 0.5)), (W * 0.07, H * 0.5),
                                             side * u(0, 12)))
    body = _blur(body, W * 0.012)
    centre = np.exp(-(((xx - cx / W) / 0.35) ** 2)).astype(np.float32)
    img += body * (u(95, 120) - bg + u(25, 45) * centre)

    # Abdomen: two domes under the diaphragm, denser than the chest.
    abdomen = np.zeros(shape, np.float32)
    for side in (-1, 1):
        dome = dia + H * (0.03 if side > 0 else 0.0)  # the liver side sits a little higher
        c = (cx + side * body_w * 0.45, dome + H * 0.35)
        cv2.ellipse(abdomen, _pt(*c), _pt(body_w * 0.65, H * 0.35), 0, 0, 360, 1.0, -1,
                    cv2.LINE_AA, _SHIFT)
    abdomen = _blur(abdomen, H * 0.012)
    img += abdomen * body * u(35, 55)

    # Lung fields: two tilted ellipses, cut by the domes, heart and mediastinum.
    lungs = np.zeros(shape, np.float32)
    lung_h = (dia - top) * u(0.42, 0.48)
    lung_cy = top + (dia - top) * 0.58
    lung_x = {}
    for side in (-1, 1):
        lung_x[side] = cx + side * body_w * u(0.44, 0.52)
        ax = (body_w * u(0.40, 0.46), lung_h)
        lungs = np.maximum(lungs, _ellipse(shape, (lung_x[side], lung_cy), ax, side * u(2, 8)))
    heart = _ellipse(shape, (cx + W * u(0.03, 0.07), dia - H * u(0.08, 0.12)),
                     (W * u(0.13, 0.17), H * u(0.13, 0.17)), u(-35, -20))
    medi = np.zeros(shape, np.float32)
    half = W * u(0.05, 0.07)
    cv2.rectangle(medi, _pt(cx - half, 0), _pt(cx + half, H), 1.0, -1, cv2.LINE_8, _SHIFT)
    lungs *= 1.0 - np.maximum(np.maximum(heart * u(0.8, 0.95), medi), abdomen)
    lungs = _blur(lungs, W * 0.008)
    hilum = np.exp(-(((xx - cx / W) / 0.2) ** 2)).astype(np.float32)
    vessels = _smooth_noise(rng, shape, W * 0.005) * 0.6 + _smooth_noise(rng, shape, W * 0.015)
    lung_dark = u(60, 85)
    img -= lungs * lung_dark * (1.0 - 0.3 * hilum + 0.07 * vessels)

    # Opacities.
    if kind == "BACTERIA":
        side = 1 if u() < 0.5 else -1
        bx = lung_x[side] + W * u(-0.05, 0.05)
        by = lung_cy + lung_h * u(-0.3, 0.5)
        blob = np.zeros(shape, np.float32)
        for _ in range(int(rng.integers(3, 7))):
            c = (bx + W * u(-0.06, 0.06), by + H * u(-0.07, 0.07))
            cv2.ellipse(blob, _pt(*c), _pt(W * u(0.04, 0.10), H * u(0.04, 0.10)), u(0, 180),
                        0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
        blob = _blur(blob, W * u(0.015, 0.03))
        blob *= 1.0 + 0.3 * _smooth_noise(rng, shape, W * 0.008)
        img += np.clip(blob, 0, 1.2) * (lungs * lung_dark * u(0.8, 1.0) + u(5, 20))
        img += lungs * lung_dark * u(0.05, 0.15)  # mild general haze
    elif kind == "VIRUS":
        patches = np.clip(_smooth_noise(rng, shape, W * 0.012) + u(0.0, 0.5), 0, None)
        reticular = np.clip(_smooth_noise(rng, shape, W * 0.004), 0, None)
        haze = (0.5 * patches + 0.35 * reticular) * (0.5 + 0.5 * hilum)
        img += lungs * lung_dark * np.clip(haze * u(0.35, 0.55), 0, 0.85)

    # Bones: spine with vertebrae, posterior and anterior rib arcs, clavicles.
    bones = np.zeros(shape, np.float32)
    period = H * u(0.040, 0.055)
    vert = 0.8 + 0.2 * np.cos(2 * np.pi * (yy * H / period - u(0, 1))).astype(np.float32)
    spine = np.zeros(shape, np.float32)
    sw = W * u(0.03, 0.04)
    cv2.rectangle(spine, _pt(cx - sw, 0), _pt(cx + sw, H), 1.0, -1, cv2.LINE_8, _SHIFT)
    bones += spine * vert * u(0.3, 0.5)
    n_ribs = int(rng.integers(9, 11))
    step = (dia - top) * 0.92 / n_ribs
    rib_t = step * u(0.40, 0.50)
    t = np.linspace(0.0, 1.0, 24)
    for side in (-1, 1):
        for i in range(n_ribs):
            y0 = top + H * 0.05 + i * step
            span = body_w * u(0.80, 0.92) * (0.75 + 0.25 * min(1.0, i / 3))
            # Posterior rib: out from the spine, rising slightly, then curving down.
            xs = cx + side * (sw + span * t)
            ys = y0 - step * 0.6 * np.sin(np.pi * t * 0.7) + step * 3.0 * t**2.5
            _polyline(bones, xs, ys, rib_t, u(0.45, 0.6))
            # Anterior rib: fainter, from the side down towards the middle.
            xs2 = cx + side * (sw + span * (1.0 - 0.65 * t))
            ys2 = y0 + step * (1.8 + 1.6 * t - 0.6 * t**2)
            _polyline(bones, xs2, ys2, rib_t * 0.8, u(0.2, 0.3))
    for side in (-1, 1):
        xs = cx + side * (W * 0.04 + body_w * 0.85 * t)
        ys = top + H * u(0.06, 0.10) - H * 0.05 * t + H * 0.012 * np.sin(2 * np.pi * t)
        _polyline(bones, xs, ys, step * u(0.35, 0.45), 1.0)
    bones = _blur(bones, W * 0.0025) * body * (1.0 - 0.7 * abdomen)
    img += bones * u(50, 70)

    # Contrast and exposure jitter, then upscale to the output size.
    img = (img - 120.0) * u(1.0, 1.2) + 122.0 + u(-8, 8)
    if (height, width) != (H, W):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)

    # Film grain and mottle: uniform noise drawn at 1/8, 1/4, 1/2 and full resolution and
    # upscaled, so it is correlated over about 8, 4, 2 and 1 px (uniform noise is several
    # times cheaper to draw than Gaussian noise and looks the same once summed).
    jitter = u(0.85, 1.15) * math.sqrt(12.0)  # amplitudes are per unit std of U(0, 1)
    for factor, amp in zip((8, 4, 2, 1), _GRAIN[kind], strict=True):
        if amp <= 0:
            continue
        gh, gw = -(-height // factor), -(-width // factor)
        noise = rng.random((gh, gw), np.float32)
        if factor > 1:
            noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
        img = cv2.scaleAdd(noise, amp * jitter, img)
        img -= amp * jitter * 0.5  # re-centre
    np.maximum(img, 0.0, out=img)
    out = cv2.convertScaleAbs(img)  # rounds and saturates to uint8

    # Side marker ("R") as on most real films.
    if u() < 0.6:
        fs = max(height, width) / 900.0
        org = (round(width * u(0.02, 0.08)), round(height * u(0.08, 0.2)))
        cv2.putText(out, "R", org, cv2.FONT_HERSHEY_SIMPLEX, fs, round(u(200, 250)),
                    max(1, round(2 * fs)), cv2.LINE_AA)
    return out


# --------------------------------------------------------------------------------------
# A dataset
# --------------------------------------------------------------------------------------


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
