"""Fit an image into the square output: stretch, pad or crop (``--fit``).

Chest X-rays are not square. ``stretch`` (the default, as the tutorial does) resizes both sides
to the output size and changes the aspect ratio, hence the heart-to-chest width ratio that
readers and models use; ``pad`` keeps the whole image at its aspect ratio and fills the rest
with :data:`~xraybatch.options.PAD_VALUE` (centred); ``crop`` keeps the centred square of the
shorter side and resizes it.
"""

from __future__ import annotations

import cv2
import numpy as np

from . import options
from .options import FITS, PAD_VALUE

#: Resize filters by name (:data:`xraybatch.options.INTERPOLATIONS`) -> OpenCV flags.
INTERPOLATIONS: dict[str, int] = {name: getattr(cv2, f"INTER_{name.upper()}")
                                  for name in options.INTERPOLATIONS}


def stretch(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize to ``size`` x ``size`` (aspect ratio not kept, as in the tutorial)."""
    return cv2.resize(image, (size, size), interpolation=INTERPOLATIONS[interpolation])


def pad(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize the longer side to ``size`` keeping the aspect ratio, then centre on a square.

    Examples
    --------
    >>> out = pad(np.full((100, 200), 9, np.uint8), 20)
    >>> out.shape, out[:5].max(), out[5:15].min(), out[15:].max()
    ((20, 20), np.uint8(0), np.uint8(9), np.uint8(0))
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = cv2.resize(image, (nw, nh), interpolation=INTERPOLATIONS[interpolation])
    out = np.full((size, size), PAD_VALUE, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out


def crop(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Keep the centred square of side ``min(height, width)``, resized to ``size``.

    Examples
    --------
    >>> image = np.zeros((100, 200), np.uint8); image[:, 50:150] = 7
    >>> crop(image, 10).tolist() == np.full((10, 10), 7).tolist()
    True
    """
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return stretch(image[top:top + side, left:left + side], size, interpolation)


_FIT = {"stretch": stretch, "pad": pad, "crop": crop}
assert tuple(_FIT) == FITS


def fit(image: np.ndarray, size: int, how: str = "stretch",
        interpolation: str = "area") -> np.ndarray:
    """``image`` -> ``size`` x ``size`` by ``how`` (one of :data:`~xraybatch.options.FITS`)."""
    if how not in _FIT:
        raise ValueError(f"unknown fit {how!r}: use one of {', '.join(FITS)}")
    return _FIT[how](image, size, interpolation)
