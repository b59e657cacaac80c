"""The synthetic image model: one X-ray-like chest image, drawn from a random generator.

:func:`synth_image` draws the images of :func:`xraybatch.synth.synth_dataset` and
:func:`xraybatch.synth_dicom.synth_dicom`. They are drawings, not medical data: a dark
background, a bright body with a soft tissue gradient, darker lung fields with vascular
texture, heart, spine, rib arcs and clavicles; PNEUMONIA images add a dense lobar
consolidation (bacterial) or a diffuse patchy haze (viral); all get a spatially correlated
film grain.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = ["KINDS", "synth_image"]

#: The three image kinds: a normal chest, bacterial and viral pneumonia.
KINDS: tuple[str, ...] = ("NORMAL", "BACTERIA", "VIRUS")
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
