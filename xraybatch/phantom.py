"""The synthetic image model: one X-ray-like chest image, drawn from a random generator.

:func:`synth_image` draws the images of :func:`xraybatch.synth.synth_dataset` and
:func:`xraybatch.synth_dicom.synth_dicom`. They are drawings, not medical data: a dark
background, a bright body with a soft tissue gradient, darker lung fields with branching
vessels, heart, spine, rib arcs, clavicles, arms, and an abdomen with bowel gas; PNEUMONIA
images add a dense lobar consolidation (bacterial) or a diffuse patchy haze (viral); all get
a spatially correlated film grain.

Every call draws a new patient, and patients differ as real ones do, not only in where the
same drawing sits: body size against the field of view (infants to school children),
inspiration, lung, heart and mediastinum shapes, rib count, spacing, slope and curvature,
arms up or down, positioning (rotation, scale, offset), exposure, and on some films
burnt-in labels, ECG electrodes, a tube or line and collimator edges. So the near-duplicate
verifier (:func:`xraybatch.fingerprint.align_score`) scores two synthetic patients like two
real ones, far below its threshold (benchmarks/README.md, "Near-duplicates")."""

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
_LABEL_CHARS = "ABCDEFGHKLMNPRSTUVXYZ0123456789 -:"
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return (round(x * _ONE), round(y * _ONE))


def _ellipse(
    canvas: tuple[int, int] | np.ndarray,
    center: tuple[float, float],
    axes: tuple[float, float],
    angle: float = 0.0,
    value: float = 1.0,
) -> np.ndarray:
    """Filled float32 ellipse (``value`` inside, anti-aliased edge), drawn on ``canvas`` or,
    given a shape, on a new zero canvas; returns the canvas."""
    mask = np.zeros(canvas, np.float32) if isinstance(canvas, tuple) else canvas
    cv2.ellipse(mask, _pt(*center), _pt(max(axes[0], 0.5), max(axes[1], 0.5)), angle,
                0, 360, value, -1, cv2.LINE_AA, _SHIFT)
    return mask


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones are done on a downsampled copy (same look, much faster)."""
    sigma = max(float(sigma), 0.3)
    k = int(sigma // 2)
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


def _fixed(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Points (x, y) along the last axis, in cv2's fixed point (``_SHIFT`` bits)."""
    return (np.stack([xs, ys], axis=-1) * _ONE).round().astype(np.int32)


def _polyline(
    layer: np.ndarray, xs: np.ndarray, ys: np.ndarray, thickness: float, value: float
) -> None:
    cv2.polylines(layer, [_fixed(xs, ys)], False, value, max(1, round(thickness)),
                  cv2.LINE_AA, _SHIFT)


def _vessels(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, angle: np.ndarray,
             length: np.ndarray, depth: int) -> dict[int, list[np.ndarray]]:
    """Vessel trees: from each start a wavy segment, then two thinner ones from its end, down
    to depth 1; the polylines (fixed-point) of each depth, one generation at a time."""
    out: dict[int, list[np.ndarray]] = {}
    for d in range(depth, 0, -1):
        turns = angle[:, None] + np.cumsum(rng.normal(0.0, 0.15, (len(x), 6)), axis=1)
        xs = np.c_[x, x[:, None] + np.cumsum(np.cos(turns), axis=1) * (length[:, None] / 6)]
        ys = np.c_[y, y[:, None] + np.cumsum(np.sin(turns), axis=1) * (length[:, None] / 6)]
        out[d] = list(_fixed(xs, ys))
        spread = rng.uniform(0.25, 0.7, (2, len(x))) * np.array([[-1.0], [1.0]])
        x, y = np.tile(xs[:, -1], 2), np.tile(ys[:, -1], 2)
        angle = (turns[:, -1] + spread).ravel()
        length = np.tile(length, 2) * rng.uniform(0.55, 0.8, 2 * len(length))
    return out


def _devices(img: np.ndarray, rng: np.random.Generator, cx: float, body_w: float,
             top: float, dia: float) -> None:
    """Burnt-in labels, ECG electrodes and a tube or line, each on some films only."""
    H, W = img.shape
    u = rng.uniform
    if u() < 0.4:  # ECG electrodes: a bright ring with a denser centre
        for _ in range(int(rng.integers(2, 5))):
            c = _pt(cx + body_w * u(-0.9, 0.9), u(top, dia))
            r = W * u(0.012, 0.022)
            cv2.circle(img, c, round(r * _ONE), u(170, 220), -1, cv2.LINE_AA, _SHIFT)
            cv2.circle(img, c, round(r * 0.4 * _ONE), u(220, 255), -1, cv2.LINE_AA, _SHIFT)
    if u() < 0.25:  # a tube or line down from the neck
        turns = np.pi / 2 + u(-0.3, 0.3) + np.cumsum(rng.normal(0.0, 0.12, 12))
        step = (dia - top) / 10
        xs = cx + W * u(-0.05, 0.05) + np.r_[0.0, np.cumsum(np.cos(turns))] * step
        ys = top - H * 0.05 + np.r_[0.0, np.cumsum(np.sin(turns))] * step
        _polyline(img, xs, ys, W * u(0.004, 0.009), u(190, 240))
    n_labels = int(rng.integers(0, 3))
    if n_labels:  # labels: letters and digits near the top or bottom (putText wants uint8)
        ink = np.zeros((H, W), np.uint8)
        for _ in range(n_labels):
            text = "".join(rng.choice(list(_LABEL_CHARS), int(rng.integers(3, 12))))
            scale = W / 400 * u(0.35, 0.8)
            org = (round(W * u(0.01, 0.6)), round(H * (u(0.04, 0.15) if u() < 0.5 else
                                                           u(0.85, 0.98))))
            cv2.putText(ink, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, 255,
                        max(1, round(2 * scale)), cv2.LINE_AA)
        alpha = ink.astype(np.float32) / 255
        img += alpha * (u(190, 255) - img)

def _collimate(img: np.ndarray, rng: np.random.Generator) -> None:
    """On about half the films, collimator edges: unexposed (bright) or cropped (dark)
    margins of a few percent on some sides, with a soft edge (the penumbra)."""
    if rng.uniform() >= 0.5:
        return
    H, W = img.shape
    value = rng.uniform(140, 200) if rng.uniform() < 0.6 else rng.uniform(0, 30)
    ramp = max(H, W) * 0.035
    margins = rng.uniform(0.01, 0.12, 4) * (rng.uniform(size=4) < 0.5)
    profiles = []
    for n, (lo, hi) in ((H, margins[:2]), (W, margins[2:])):
        x = np.arange(n, dtype=np.float32)
        profiles.append(np.clip(np.minimum(x - lo * n, (1 - hi) * n - x) / ramp + 0.5, 0, 1))
    inside = profiles[0][:, None] * profiles[1][None, :]
    img -= value
    img *= inside
    img += value

def synth_image(rng: np.random.Generator, height: int, width: int, kind: str) -> np.ndarray:
    """Draw one X-ray-like 8-bit grayscale chest image of a new synthetic patient.

    The anatomy (body, lungs, vessels, heart, spine, ribs, clavicles, abdomen and, for
    PNEUMONIA kinds, the opacity), the patient's positioning and any devices, labels and
    collimation are drawn on a canvas of at most 400 px and upscaled; film grain is then
    added at full resolution. The result depends only on ``rng``'s state and the arguments.

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

    # Patient geometry, in canvas pixels: body size against the field of view (infants to
    # school children), centring, shoulder line and inspiration (diaphragm height).
    cx = W * (0.5 + u(-0.08, 0.08))
    body_w = W * u(0.30, 0.50)  # half width of the thorax
    top = H * u(-0.06, 0.20)  # shoulder line
    dia = top + (H - top) * u(0.62, 0.86)  # top of the diaphragm domes

    # Body / soft tissue: torso, neck, shoulders, arms; denser towards the middle.
    body = _ellipse(shape, (cx, H * 0.62), (body_w, H * 0.62), u(-4, 4))
    _ellipse(body, (cx, top), (W * u(0.06, 0.12), H * 0.2))
    _ellipse(body, (cx, top + H * 0.1), (body_w * 1.1, H * 0.12))
    arms = np.zeros(shape, np.float32)  # humeri
    raised = u() < 0.35  # infants are often filmed with the arms up
    for side in (-1, 1):
        if raised or u() < 0.6:
            ax = cx + side * (body_w + W * u(0.0, 0.05))
            ay = top - H * u(0.1, 0.3) if raised else H * u(0.2, 0.5)
            tilt = side * u(0, 12) + (side * u(-20, 5) if raised else 0.0)
            _ellipse(body, (ax, ay), (W * u(0.05, 0.08), H * 0.5), tilt)
            _polyline(arms, np.array([ax, ax + math.sin(math.radians(-tilt)) * H * 0.4]),
                      np.array([ay - H * 0.25, ay + H * 0.25]), W * u(0.015, 0.025), 1.0)
    body = _blur(body, W * 0.012)
    centre = np.exp(-(((xx - cx / W) / 0.35) ** 2)).astype(np.float32)
    # Soft tissue of this patient: folds, fat and overlapping structures, on the scale the
    # fingerprint sees (a film's own texture, not a shared one).
    tissue = _smooth_noise(rng, shape, W * u(0.012, 0.02))
    img += body * (u(95, 120) - bg + u(25, 45) * centre + u(1, 3) * tissue)

    # Abdomen: two domes under the diaphragm, denser than the chest, with bowel gas and a
    # stomach bubble under the left dome (drawn as less dense parts of it).
    abdomen = np.zeros(shape, np.float32)
    tilt_dia = H * u(-0.03, 0.05)  # the liver side sits a little higher (mostly)
    for side in (-1, 1):
        dome = dia + (tilt_dia if side > 0 else 0.0)
        c = (cx + side * body_w * u(0.4, 0.5), dome + H * 0.35)
        cv2.ellipse(abdomen, _pt(*c), _pt(body_w * u(0.55, 0.7), H * 0.35), u(-8, 8), 0, 360,
                    1.0, -1, cv2.LINE_AA, _SHIFT)
    cv2.ellipse(abdomen, _pt(cx - body_w * u(0.3, 0.6), dia + H * u(0.05, 0.1)),
                _pt(W * u(0.03, 0.08), H * u(0.02, 0.05)), u(-20, 20), 0, 360, u(0.0, 0.3),
                -1, cv2.LINE_AA, _SHIFT)
    for _ in range(int(rng.integers(4, 16))):
        c = (cx + body_w * u(-0.8, 0.8), dia + H * u(0.08, 0.4))
        cv2.ellipse(abdomen, _pt(*c), _pt(W * u(0.01, 0.04), H * u(0.01, 0.03)), u(0, 180), 0,
                    360, u(0.0, 0.6), -1, cv2.LINE_AA, _SHIFT)
    abdomen = _blur(abdomen, H * 0.01)
    img += abdomen * body * u(45, 65)

    # Lung fields: two tilted ellipses, cut by the domes, heart and mediastinum.
    lungs = np.zeros(shape, np.float32)  # (drawn on one canvas: the union)
    lung_h = (dia - top) * u(0.40, 0.50)
    lung_cy = top + (dia - top) * u(0.54, 0.62)
    lung_x = {}
    for side in (-1, 1):
        lung_x[side] = cx + side * body_w * u(0.40, 0.55)
        ax = (body_w * u(0.36, 0.48), lung_h * u(0.92, 1.08))
        _ellipse(lungs, (lung_x[side], lung_cy), ax, side * u(0, 12))
    # Heart (not quite opaque) and mediastinum on one canvas.
    heart = _ellipse(shape, (cx + body_w * u(0.02, 0.22), dia - H * u(0.06, 0.14)),
                     (body_w * u(0.26, 0.42), H * u(0.11, 0.19)), u(-40, -15), u(0.8, 0.95))
    half = body_w * u(0.10, 0.17)
    cv2.rectangle(heart, _pt(cx - half, 0), _pt(cx + half, H), 1.0, -1, cv2.LINE_8, _SHIFT)
    lungs *= 1.0 - np.maximum(heart, abdomen)
    lungs = _blur(lungs, W * 0.008)
    hilum = np.exp(-(((xx - cx / W) / 0.2) ** 2)).astype(np.float32)
    # Branching vascular markings from each hilum, fading outwards.
    sides = np.repeat([-1.0, 1.0], rng.integers(5, 9, 2))
    k = len(sides)
    segments = _vessels(rng, cx + sides * body_w * u(0.12, 0.3, k),
                        lung_cy + lung_h * u(-0.4, 0.3, k),
                        np.radians(90 - sides * u(10, 170, k)), body_w * u(0.12, 0.2, k), 3)
    tree = np.zeros(shape, np.float32)
    for depth, pts in segments.items():
        cv2.polylines(tree, pts, False, 0.4 + 0.2 * depth, max(1, round(W * 0.002 * depth)),
                      cv2.LINE_AA, _SHIFT)
    lung_dark = u(60, 85)
    img -= lungs * lung_dark * (1.0 - 0.3 * hilum + 0.08 * tissue - u(0.1, 0.25) * tree)

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

    # Bones: spine with vertebrae, posterior and anterior rib arcs, clavicles. Rib count,
    # spacing (and how it grows downwards), slope, curvature and each rib's place and
    # density vary per patient.
    bones = arms * u(0.5, 0.8)
    period = (dia - top) * u(0.05, 0.08)
    vert = 0.8 + 0.2 * np.cos(2 * np.pi * (yy * H / period - u(0, 1))).astype(np.float32)
    spine = np.zeros(shape, np.float32)
    sw = body_w * u(0.06, 0.09)
    cv2.rectangle(spine, _pt(cx - sw, 0), _pt(cx + sw, H), 1.0, -1, cv2.LINE_8, _SHIFT)
    bones += spine * vert * u(0.3, 0.5)
    n_ribs = int(rng.integers(8, 12))
    t = np.linspace(0.0, 1.0, 24)
    posterior: list[np.ndarray] = []
    anterior: list[np.ndarray] = []
    spacing = (dia - top) * u(0.82, 1.0) / n_ribs
    grow = u(-0.25, 0.35)  # lower ribs further apart (or closer)
    drop, rise, bend = u(1.8, 4.5), u(0.2, 0.9), u(1.8, 3.2)
    first = top + H * u(0.02, 0.08)
    i = np.arange(n_ribs)[:, None]
    for side in (-1, 1):
        step = spacing * u(0.95, 1.05)  # a little rotation or scoliosis
        gaps = step * (1.0 + grow * (i / n_ribs - 0.5))
        y0 = first + spacing * u(-0.2, 0.2) + np.cumsum(gaps, axis=0) - gaps + step * u(-0.05, 0.05,
                                                                                (n_ribs, 1))
        span = body_w * u(0.75, 0.95, (n_ribs, 1)) * (0.75 + 0.25 * np.minimum(1.0, i / 3))
        # Posterior ribs: out from the spine, rising slightly, then curving down.
        xs = cx + side * (sw + span * t)
        ys = y0 - step * rise * np.sin(np.pi * t * 0.7) + step * drop * t**bend
        posterior += list(_fixed(xs, ys))
        # Anterior ribs: fainter, from the side down towards the middle.
        xs = cx + side * (sw + span * (1.0 - 0.65 * t))
        ys = y0 + step * (drop * 0.6 + u(1.2, 2.0, (n_ribs, 1)) * t - 0.6 * t**2)
        anterior += list(_fixed(xs, ys))
    rib_t = (dia - top) / n_ribs * u(0.35, 0.5)
    for arcs, value, thick in ((posterior, u(0.45, 0.6), rib_t), (anterior, u(0.2, 0.3),
                                                                 rib_t * 0.8)):
        cv2.polylines(bones, arcs, False, value, max(1, round(thick)), cv2.LINE_AA, _SHIFT)
    for side in (-1, 1):
        xs = cx + side * (body_w * u(0.08, 0.15) + body_w * u(0.7, 0.95) * t)
        ys = top + H * u(0.04, 0.12) - H * u(0.0, 0.08) * t + H * 0.012 * np.sin(2 * np.pi * t)
        _polyline(bones, xs, ys, rib_t * u(0.8, 1.1), 1.0)
    bones = _blur(bones, W * 0.0025) * body * (1.0 - 0.7 * abdomen)
    img += bones * u(50, 70)

    # Positioning: the patient rotated, tilted and moved on the detector.
    m = cv2.getRotationMatrix2D((W * u(0.4, 0.6), H * u(0.4, 0.6)), u(-4, 4), u(0.96, 1.05))
    m[:, 2] += (W * u(-0.05, 0.05), H * u(-0.05, 0.05))
    img = cv2.warpAffine(img, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    _devices(img, rng, cx, body_w, top, dia)
    _collimate(img, rng)

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
