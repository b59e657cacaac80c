"""Content fingerprints of one stored image: pure per-image functions (no Dask, no store).

Every chest film has the same layout, so two different patients' raw thumbnails correlate
at ~0.96 on the real Kermany sample, more than a copy of one film shifted by 4 % correlates
with its original (0.76). A fingerprint therefore removes what films share before anything
is compared (benchmarks/README.md, "Near-duplicates", has the measurements):

1. **Equalised thumbnail** (``THUMB`` x ``THUMB`` uint8, stored as ``fp_thumb``): the stored
   image shrunk with INTER_AREA, its grey levels mapped through the image's own cumulative
   histogram. Any monotone change of brightness, contrast or gamma maps to (almost) the same
   thumbnail; JPEG re-encoding, noise, downscaling and PNG conversion vanish in the shrink.
2. **Local contrast normalisation** of the thumbnail (subtract a Gaussian-blurred copy,
   divide by the local spread): the shared layout of a chest film (bright mediastinum, dark
   lungs) is removed and the patient's own structure (ribs, vessels, devices) is left.
3. **Several 64-bit SimHash codes** (stored as ``fp_hash``), one per descriptor of the
   thumbnail shrunk to ``HASH_SIDE``, each robust to a different alteration: the magnitude
   of the Fourier transform of the normalised thumbnail (shifts), the normalised thumbnail
   re-centred on its centre of mass (shifts and crops), and the normalised thumbnail itself
   (everything but geometry). Search uses them
   to find candidate pairs (:mod:`xraybatch.dups`); nothing is decided on them alone.

Before that, a cheap prefilter (:func:`spectrum_descriptors`, :func:`spectrum_scores`)
drops the candidate pairs whose Fourier spectra on a polar grid differ too much to be a copy
(nearly all pairs of different films), so that the costly alignment runs on few pairs.

The decision is taken by :func:`align_score`: the two thumbnails are aligned over small
rotations (of films of two aspect ratios, as a rotation looks after the stretch to a
square), scales and translations, and compared by the normalised correlation of their
local-contrast images.

Measured on the real Kermany sample with 90 planted copies (nine kinds of alteration): the
lowest copy scored 0.71 (a 3-degree rotation), the highest of 2,054 candidate pairs of
different films 0.58; with 32 x 32 thumbnails the two overlapped (0.68 and 0.69).
"""

from __future__ import annotations

import itertools

import cv2
import numpy as np

#: Side of the stored thumbnail.
THUMB = 64
#: Side of the thumbnail that hashing works on (the stored one, shrunk).
HASH_SIDE = 32
#: SimHash codes per image (one per descriptor of :func:`descriptors`), 64 bits each.
N_CODES = 3
#: Bumped whenever any number above changes: fingerprints of different versions never meet.
VERSION = 1
#: Local contrast normalisation scale (pixels of the thumbnail) for hashing and scoring.
_HASH_SIGMA = 2.0
_SCORE_SIGMA = 2.0
#: Frequencies (radius, in cycles per thumbnail) of the Fourier-magnitude descriptor.
_FFT_RADIUS = 6
_CENTRED = 16  # side of the re-centred descriptor
_PLAIN = 16  # side of the plain descriptor
#: Alignment grid of :func:`align_score`: degrees x scales (then every shift up to _BORDER).
ANGLES = (-4.5, -3.0, -1.5, 0.0, 1.5, 3.0, 4.5)
SCALES = (0.94, 0.97, 1.0, 1.03, 1.06)
_BORDER = 8  # thumbnail pixels left out of the score; also the largest shift tried


def equalized_thumbnail(image: np.ndarray, hist: np.ndarray | None = None) -> np.ndarray:
    """The stored image as a ``THUMB`` x ``THUMB`` thumbnail equalised by its own histogram.

    ``hist`` (the image's 256-bin histogram, which the chunk task already has) saves
    counting it again. Each grey level of the shrunk image maps to the middle of its rank
    interval among the stored pixels, so a monotone change of the pixel values (brightness,
    contrast, gamma) changes the thumbnail by a grey level or two (the shrink averages
    before the mapping).

    Examples
    --------
    >>> image = np.tile(np.arange(128, dtype=np.uint8), (256, 2))
    >>> t = equalized_thumbnail(image)
    >>> gamma = (255 * (image / 255) ** 0.7).round().astype(np.uint8)
    >>> t.shape, t.dtype, int(np.abs(t.astype(int) - equalized_thumbnail(gamma)).max())
    ((64, 64), dtype('uint8'), 2)
    """
    if hist is None:
        hist = np.bincount(image.ravel(), minlength=256)
    hist = np.asarray(hist, np.float64)
    cum = np.cumsum(hist)
    lut = np.round((cum - hist / 2) / max(cum[-1], 1.0) * 255).astype(np.uint8)
    small = cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return cv2.LUT(small, lut)


def local_contrast(thumb: np.ndarray, sigma: float) -> np.ndarray:
    """Local contrast normalisation: (x - blur(x)) / sqrt(blur((x - blur(x))^2)), float32
    (Gaussian blurs of ``sigma`` pixels, kernels cut at 2 sigma).

    Examples
    --------
    >>> flat = local_contrast(np.full((64, 64), 100, np.uint8), 2.0)
    >>> round(float(np.abs(flat).max()), 4)
    0.0
    """
    x = thumb.astype(np.float32) / 255
    size = (2 * int(np.ceil(2 * sigma)) + 1,) * 2  # 2 sigma: half the cost of OpenCV's 3
    high = x - cv2.GaussianBlur(x, size, sigma, borderType=cv2.BORDER_REFLECT)
    spread = np.sqrt(cv2.GaussianBlur(high * high, size, sigma, borderType=cv2.BORDER_REFLECT))
    return high / (spread + 1e-2)


def _fft_mask() -> np.ndarray:
    fy = np.fft.fftfreq(HASH_SIDE) * HASH_SIDE
    radius = np.hypot(fy[:, None], np.arange(HASH_SIDE // 2 + 1)[None, :])
    return (radius > 0) & (radius <= _FFT_RADIUS)


_MASK = _fft_mask()
_HANN = np.outer(np.hanning(HASH_SIDE), np.hanning(HASH_SIDE)).astype(np.float32)


def _centred(contrast: np.ndarray, thumb: np.ndarray) -> np.ndarray:
    """The contrast image moved so that the thumbnail's centre of mass is in the middle."""
    weight = (thumb.astype(np.float32) / 255) ** 2  # the body, not the background
    m = cv2.moments(weight)
    cx, cy = (m["m10"] / m["m00"], m["m01"] / m["m00"]) if m["m00"] > 0 else (HASH_SIDE / 2,) * 2
    s = _CENTRED / HASH_SIDE
    move = np.float32([[s, 0, _CENTRED / 2 - s * cx], [0, s, _CENTRED / 2 - s * cy]])
    blurred = cv2.GaussianBlur(contrast, (5, 5), 1.0)  # anti-alias before the shrink
    return cv2.warpAffine(blurred, move, (_CENTRED, _CENTRED), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _raw(thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The descriptors before centring: Fourier magnitude, re-centred image, plain image."""
    thumb = cv2.resize(thumb, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    contrast = local_contrast(thumb, _HASH_SIGMA)
    spectrum = cv2.dft(contrast * _HANN, flags=cv2.DFT_COMPLEX_OUTPUT)[:, :HASH_SIDE // 2 + 1]
    magnitude = np.log1p(cv2.magnitude(spectrum[..., 0], spectrum[..., 1])[_MASK])
    plain = cv2.resize(contrast, (_PLAIN, _PLAIN), interpolation=cv2.INTER_AREA)
    return magnitude, _centred(contrast, thumb).ravel(), plain.ravel()


def descriptors(thumb: np.ndarray) -> list[np.ndarray]:
    """The ``N_CODES`` float descriptors of an equalised thumbnail (each zero-mean, unit norm).

    Examples
    --------
    >>> [d.shape for d in descriptors(np.zeros((64, 64), np.uint8))]
    [(62,), (256,), (256,)]
    """
    out = []
    for d in _raw(thumb):
        d = d - d.mean()
        out.append(d / (np.sqrt(d @ d) + 1e-9))
    return out


def _planes() -> list[np.ndarray]:
    rng = np.random.default_rng(19_0001)
    sizes = [int(_MASK.sum()), _CENTRED * _CENTRED, _PLAIN * _PLAIN]
    return [rng.standard_normal((64, n)).astype(np.float32) for n in sizes]


def _folded_planes(planes: list[np.ndarray]) -> np.ndarray:
    """All codes in one product with the raw descriptors (:func:`_raw`): each descriptor's
    planes, centred (P (d - mean d) = (P - row means of P) d; the norm does not change a
    sign), block-diagonal, 64 rows per code."""
    out = np.zeros((64 * len(planes), sum(p.shape[1] for p in planes)), np.float32)
    offset = 0
    for k, p in enumerate(planes):
        out[64 * k:64 * (k + 1), offset:offset + p.shape[1]] = p - p.mean(axis=1, keepdims=True)
        offset += p.shape[1]
    return out


_PLANES = _planes()
_BITS = (np.uint64(1) << np.arange(64, dtype=np.uint64))
_ALL_PLANES = _folded_planes(_PLANES)


def simhash(vector: np.ndarray, planes: np.ndarray) -> np.uint64:
    """Charikar's SimHash: bit k is set when the vector is on the positive side of plane k.

    Two vectors at angle theta differ in a fraction theta/pi of their bits.

    Examples
    --------
    >>> planes = np.eye(64, 64, dtype=np.float32)
    >>> int(simhash(np.r_[1.0, -1.0, 1.0, np.zeros(61)].astype(np.float32), planes))
    5
    """
    bits = (planes @ vector) > 0
    return np.bitwise_or.reduce(_BITS[bits]) if bits.any() else np.uint64(0)


def hashes(thumb: np.ndarray) -> np.ndarray:
    """(N_CODES,) uint64 SimHash codes of an equalised thumbnail: :func:`simhash` of each of
    its :func:`descriptors` with its own 64 planes, computed as one product with the
    centring folded into the planes (a third of the time).

    Examples
    --------
    >>> t = equalized_thumbnail(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8))
    >>> codes = [simhash(d, p) for d, p in zip(descriptors(t), _PLANES)]
    >>> bool((hashes(t) == np.array(codes, np.uint64)).all())
    True
    """
    bits = (_ALL_PLANES @ np.concatenate(_raw(thumb))) > 0
    return np.packbits(bits, bitorder="little").view("<u8").astype(np.uint64)


def fingerprint(image: np.ndarray, hist: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The fingerprint arrays of one stored image: ``fp_thumb`` and ``fp_hash``.

    Examples
    --------
    >>> from xraybatch.phantom import synth_image
    >>> fp = fingerprint(synth_image(np.random.default_rng(0), 256, 256, "NORMAL"))
    >>> fp["fp_thumb"].shape, fp["fp_hash"].shape, fp["fp_hash"].dtype
    ((64, 64), (3,), dtype('uint64'))
    """
    thumb = equalized_thumbnail(image, hist)
    return {"fp_thumb": thumb, "fp_hash": hashes(thumb)}


def fingerprints(images: np.ndarray, hist: np.ndarray, valid: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """:func:`fingerprint` of each valid image of a chunk, zeros for the others."""
    n = len(images)
    out = {"fp_thumb": np.zeros((n, THUMB, THUMB), np.uint8),
           "fp_hash": np.zeros((n, N_CODES), np.uint64)}
    for i in np.flatnonzero(valid):
        for name, value in fingerprint(images[i], hist[i]).items():
            out[name][i] = value
    return out


# --- comparing two fingerprints --------------------------------------------------------------


def _warps(angles: tuple[float, ...], scales: tuple[float, ...],
           aspects: tuple[float, ...] = (1.0,), side: int = THUMB) -> np.ndarray:
    """Affine maps about the centre: a rotation by each angle of a film whose width/height
    was each aspect, seen after the stretch to a square (S R S^-1), times each scale."""
    c = side / 2 - 0.5
    out = []
    for a, s, r in itertools.product(angles, scales, aspects):
        if a == 0 and r != aspects[0]:
            continue  # no rotation: the aspect changes nothing
        t = np.deg2rad(a)
        m = s * np.array([[np.cos(t), -np.sin(t) / r], [np.sin(t) * r, np.cos(t)]])
        out.append(np.c_[m, [c, c] - m @ [c, c]])
    return np.array(out, np.float32)


#: Width/height of the films before their stretch to a square (Kermany's are ~1.3).
ASPECTS = (1.0, 1.35)
_WARPS = _warps(ANGLES, SCALES, ASPECTS)
_IDENTITY = _warps((0.0,), (1.0,))
#: The coarse stage works on half-size thumbnails (a tenth of the cost of a full-size warp).
_HALF = THUMB // 2
_COARSE = _warps((-3.0, 0.0, 3.0), (0.97, 1.0, 1.03), ASPECTS, side=_HALF)
#: Cascade of :func:`align_scores`: accept without warping at _SURE; stop after the coarse
#: grid below _HOPELESS (no planted copy of the benchmark scored below 0.55 there).
_SURE = 0.9
_HOPELESS = 0.5
_INNER = slice(_BORDER, THUMB - _BORDER)
_HALF_INNER = slice(_BORDER // 2, _HALF - _BORDER // 2)


def align_score(a: np.ndarray, b: np.ndarray) -> float:
    """Similarity of two equalised thumbnails after aligning ``b`` on ``a`` (-1 to 1).

    ``b``'s local-contrast image is warped by every rotation of ``ANGLES`` and scale of
    ``SCALES``, each warp shifted by up to ``_BORDER`` pixels, and scored by normalised
    correlation with ``a``'s inside a window that leaves out its border of ``_BORDER``
    pixels (which warps and shifts fill). The score is the best over the grid.

    Examples
    --------
    >>> from xraybatch.phantom import synth_image
    >>> image = synth_image(np.random.default_rng(0), 256, 256, "NORMAL")
    >>> t = equalized_thumbnail(image)
    >>> round(align_score(t, t), 3)
    1.0
    >>> moved = equalized_thumbnail(np.roll(image, 6, axis=1))
    >>> align_score(t, moved) > 0.9
    True
    """
    return float(align_scores(a[None], b[None])[0])


def align_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`align_score` of each pair of rows of ``a`` and ``b`` ((P, THUMB, THUMB) uint8).

    OpenCV's ``matchTemplate`` (``TM_CCOEFF_NORMED``) gives the normalised correlation of
    ``a``'s window with a warp of ``b`` at every shift of up to ``_BORDER`` pixels at once.
    The grid is searched in three stages, each only when the last leaves the pair in doubt:
    no warp (a copy altered only in its pixel values scores ``_SURE`` or more there), a
    coarse grid (a pair below ``_HOPELESS`` there is no copy), then the whole grid.
    """
    out = np.empty(len(a))
    for p, (ta, tb) in enumerate(zip(a, b, strict=True)):
        ca, cb = local_contrast(ta, _SCORE_SIGMA), local_contrast(tb, _SCORE_SIGMA)
        template = np.ascontiguousarray(ca[_INNER, _INNER])
        best = _best(template, cb, _IDENTITY)
        if best < _SURE and coarse_score(ca, cb) >= _HOPELESS:
            best = max(best, _best(template, cb, _WARPS))
        out[p] = best
    return out


def coarse_score(ca: np.ndarray, cb: np.ndarray) -> float:
    """The coarse stage: the best of the coarse grid on the half-size contrast images."""
    half_a, half_b = (cv2.resize(c, (_HALF, _HALF), interpolation=cv2.INTER_AREA)
                      for c in (ca, cb))
    return _best(np.ascontiguousarray(half_a[_HALF_INNER, _HALF_INNER]), half_b, _COARSE)


def _best(template: np.ndarray, contrast: np.ndarray, warps: np.ndarray) -> float:
    """Best normalised correlation of ``template`` with any shift of any warp of ``contrast``."""
    best = -1.0
    side = contrast.shape[0]
    for m in warps:
        warped = cv2.warpAffine(contrast, m, (side, side), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
        best = max(best, float(cv2.matchTemplate(warped, template,
                                                 cv2.TM_CCOEFF_NORMED).max()))
    return best


# --- the prefilter: one cheap score per candidate pair, before align_score -----------------
#
# align_score costs ~1 ms per pair, and a million rows yield millions of candidates, nearly
# all of them different films. The magnitude of the Fourier transform of the local-contrast
# image does not change when the film is shifted; resampled on a polar grid, a rotation of
# the film becomes a cyclic shift along the angle axis and a change of scale a shift along
# the radius axis, small enough here to be left to the coarse sampling. The descriptor is
# computed once per row and compared per pair by a few dot products (numpy, thousands of
# pairs at once). Measured on the real Kermany sample (benchmarks/README.md,
# "Near-duplicates"): the 90 planted copies scored 0.78 or more; the 248 films warped to the
# corners of align_score's grid scored, against themselves, 0.86 or more rotated by 4.5
# degrees, 0.72 scaled by 0.94, 0.65-0.70 rotated by 4.5 degrees and scaled by 6 % at once
# (close to PREFILTER: such copies may be missed); 2,004 of the 2,054 candidate pairs of
# different films (97.6 %) scored below PREFILTER and are never aligned.

#: Side of the local-contrast image whose spectrum is taken.
_SPEC_SIDE = 48
#: Polar grid of the spectrum: angles over 180 degrees (the magnitude spectrum of a real
#: image is point-symmetric: the half plane of ``rfft2`` holds it all), radii in steps of
#: _SPEC_RADIUS / _SPEC_RADII cycles, of which the lowest _SPEC_SKIP are left out (the
#: layout all films share lives there).
_SPEC_ANGLES = 32
_SPEC_RADII = 12
_SPEC_SKIP = 3
_SPEC_RADIUS = 16
#: Angle bins (5.6 degrees each) tried either way by :func:`spectrum_scores`.
_SPEC_TURN = 1
#: Pairs scoring below PREFILTER are not aligned (:mod:`xraybatch.dups`).
PREFILTER = 0.64
#: Length of a :func:`spectrum_descriptors` row.
SPECTRUM_SIZE = _SPEC_ANGLES * (_SPEC_RADII - _SPEC_SKIP)
_SPEC_HANN = np.outer(np.hanning(_SPEC_SIDE), np.hanning(_SPEC_SIDE)).astype(np.float32)
#: INTER_AREA shrink THUMB -> _SPEC_SIDE as a matrix (shrink of a batch = two products).
_SPEC_AREA = cv2.resize(np.eye(THUMB, dtype=np.float32), (THUMB, _SPEC_SIDE),
                        interpolation=cv2.INTER_AREA)


def _polar_taps() -> tuple[np.ndarray, np.ndarray]:
    """Bilinear taps (4, SPECTRUM_SIZE) into the ``rfft2`` half plane (shifted along y) of
    each polar sample (angle-major: angles -90 to 90 degrees, then radii)."""
    angle = -np.pi / 2 + np.pi * np.arange(_SPEC_ANGLES) / _SPEC_ANGLES
    radius = _SPEC_RADIUS * np.arange(_SPEC_SKIP, _SPEC_RADII) / _SPEC_RADII
    x = np.clip(radius[None, :] * np.cos(angle)[:, None], 0, None)
    y = radius[None, :] * np.sin(angle)[:, None] + _SPEC_SIDE // 2
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    width = _SPEC_SIDE // 2 + 1
    index = np.stack([y0 * width + x0, y0 * width + x0 + 1, (y0 + 1) * width + x0,
                      (y0 + 1) * width + x0 + 1]).reshape(4, -1)
    weight = np.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx])
    return index, weight.reshape(4, -1).astype(np.float32)


_POLAR_INDEX, _POLAR_WEIGHT = _polar_taps()
_CONTRAST_PAD = int(np.ceil(2 * _SCORE_SIGMA))  # the blur kernel's radius (local_contrast)


def _blur_stack(x: np.ndarray) -> np.ndarray:
    """:func:`local_contrast`'s blur of each image of a (K, THUMB, THUMB) batch in one
    OpenCV call: the images stacked, each padded by its own reflection (BORDER_REFLECT)."""
    k, pad = len(x), _CONTRAST_PAD
    tall = np.pad(x, ((0, 0), (pad, pad), (0, 0)), mode="symmetric")
    size = (2 * pad + 1,) * 2
    blurred = cv2.GaussianBlur(tall.reshape(-1, THUMB), size, _SCORE_SIGMA,
                               borderType=cv2.BORDER_REFLECT)
    return blurred.reshape(k, THUMB + 2 * pad, THUMB)[:, pad:-pad]


def spectrum_descriptors(thumbs: np.ndarray) -> np.ndarray:
    """(N, ``SPECTRUM_SIZE``) float32 prefilter descriptor of each equalised thumbnail: the
    log-magnitude spectrum of its local contrast (:func:`local_contrast`, shrunk to
    ``_SPEC_SIDE`` by area, Hann window) sampled on a polar grid (bilinear), zero-mean, unit
    norm. Computed for 256 thumbnails at a time with batch operations.

    Examples
    --------
    >>> d = spectrum_descriptors(np.random.default_rng(0).integers(0, 256, (3, 64, 64),
    ...                                                            np.uint8))
    >>> d.shape, np.linalg.norm(d, axis=1).round(4).tolist()
    ((3, 288), [1.0, 1.0, 1.0])
    """
    out = np.empty((len(thumbs), SPECTRUM_SIZE), np.float32)
    for start in range(0, len(thumbs), 256):
        x = np.asarray(thumbs[start:start + 256]).astype(np.float32) / 255
        high = x - _blur_stack(x)
        contrast = high / (np.sqrt(_blur_stack(high * high)) + 1e-2)
        small = _SPEC_AREA @ contrast @ _SPEC_AREA.T * _SPEC_HANN
        magnitude = np.empty((len(x), _SPEC_SIDE, _SPEC_SIDE // 2 + 1), np.float32)
        for k, image in enumerate(small):  # OpenCV's DFT: 3x numpy's float32 rfft2 here
            half = cv2.dft(image, flags=cv2.DFT_COMPLEX_OUTPUT)[:, :_SPEC_SIDE // 2 + 1]
            magnitude[k] = cv2.magnitude(half[..., 0], half[..., 1])
        flat = np.fft.fftshift(np.log1p(magnitude), axes=1).reshape(len(x), -1)
        polar = np.einsum("kji,ji->ki", flat[:, _POLAR_INDEX], _POLAR_WEIGHT)
        polar -= polar.mean(axis=1, keepdims=True)
        out[start:start + len(x)] = polar / (np.linalg.norm(polar, axis=1, keepdims=True)
                                             + 1e-9)
    return out


def spectrum_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Prefilter score of each pair of rows of ``a`` and ``b`` (:func:`spectrum_descriptors`):
    the best correlation of ``a`` with ``b`` turned by up to ``_SPEC_TURN`` angle bins.

    Examples
    --------
    >>> d = spectrum_descriptors(np.random.default_rng(0).integers(0, 256, (2, 64, 64),
    ...                                                            np.uint8))
    >>> spectrum_scores(d, d).round(2).tolist()
    [1.0, 1.0]
    """
    a = np.asarray(a, np.float32).reshape(len(a), _SPEC_ANGLES, -1)
    b = np.asarray(b, np.float32).reshape(len(b), _SPEC_ANGLES, -1)
    best = np.full(len(a), -1.0, np.float32)
    for turn in range(-_SPEC_TURN, _SPEC_TURN + 1):
        turned = np.roll(b, turn, axis=1) if turn else b
        best = np.maximum(best, np.einsum("pij,pij->p", a, turned))
    return best
