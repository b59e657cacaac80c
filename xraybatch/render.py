"""Pure rendering math: stored pixel values -> the 8-bit grey levels a radiology viewer shows.

The order is the DICOM standard's (PS3.3 C.11, the grayscale pipeline):

1. **modality LUT**: ``RescaleSlope * stored + RescaleIntercept``, or the Modality LUT
   Sequence when present;
2. **VOI**: a window (``WindowCenter``/``WindowWidth`` with ``VOILUTFunction`` LINEAR,
   LINEAR_EXACT or SIGMOID, PS3.3 C.11.2.1.2), or the VOI LUT Sequence, or a window taken from
   the image itself (min-max or percentiles, see :func:`choose_window`);
3. **MONOCHROME1** is inverted (``255 - y``), so that bone is bright as in MONOCHROME2;
4. ``y`` (0..255, real) is rounded half up to uint8.

Integer images are rendered through a lookup table over their value range (at most 65,536
entries for 16-bit data), so each distinct value is computed once; the histogram that the
table needs also gives the min-max and percentile windows exactly, without a sort.
Only numpy is used: the functions are pure and cheap to test by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .options import PERCENTILES, WINDOWS

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
# A table over the value range is worth it up to this many entries (else compute directly).
_MAX_TABLE = 1 << 20


@dataclass(frozen=True)
class LUT:
    """A DICOM lookup table: ``LUTDescriptor`` (entries, first mapped value, bits) + data."""

    first: int
    bits: int
    data: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Values below ``first`` take the first entry, above the last one the last entry."""
        index = np.clip(np.asarray(x) - self.first, 0, len(self.data) - 1).astype(np.intp)
        return self.data[index].astype(np.float64)


@dataclass(frozen=True)
class Rendering:
    """The header facts that rendering needs (defaults: a plain image without any)."""

    slope: float = 1.0
    intercept: float = 0.0
    modality_lut: LUT | None = None
    center: float | None = None  # the header's first WindowCenter / WindowWidth
    width: float | None = None
    function: str = "LINEAR"
    voi_lut: LUT | None = None
    monochrome1: bool = False

    @property
    def has_modality(self) -> bool:
        return self.modality_lut is not None or self.slope != 1 or self.intercept != 0

    @property
    def has_window(self) -> bool:
        """A usable header window (LINEAR needs a width >= 1, the others > 0)."""
        if self.center is None or self.width is None:
            return False
        return self.width >= 1 if self.function == "LINEAR" else self.width > 0


@dataclass(frozen=True)
class Window:
    """The VOI step actually applied, recorded per image so that a pixel can be reproduced.

    ``method`` is ``header`` (the header's window), ``voi_lut`` (the VOI LUT Sequence),
    ``minmax``, ``percentile`` or ``identity`` (8-bit data without any window, shown as is).
    """

    method: str
    center: float = math.nan
    width: float = math.nan
    function: str = ""

    def record_fields(self) -> dict:
        """The per-image record fields that say which window rendered an image."""
        return {"window_used": self.method, "voi_center": self.center,
                "voi_width": self.width, "voi_function": self.function}


def modality(stored: np.ndarray, r: Rendering) -> np.ndarray:
    """Stored values -> modality values (float64), PS3.3 C.11.1.

    Examples
    --------
    >>> modality(np.array([0, 8, 4095]), Rendering(slope=1, intercept=-1024)).tolist()
    [-1024.0, -1016.0, 3071.0]
    """
    if r.modality_lut is not None:
        return r.modality_lut(stored)
    return np.asarray(stored, np.float64) * r.slope + r.intercept


def voi(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Window modality values to 0..255 (real), PS3.3 C.11.2.1.2 with y_min 0, y_max 255.

    Examples
    --------
    >>> voi(np.array([-1.0, 0.0, 127.0, 255.0, 256.0]), 128, 256).tolist()
    [0.0, 0.0, 127.0, 255.0, 255.0]
    >>> voi(np.array([0.0, 50.0, 100.0]), 50, 100, "LINEAR_EXACT").tolist()
    [0.0, 127.5, 255.0]
    >>> voi(np.array([50.0]), 50, 100, "SIGMOID").tolist()
    [127.5]
    """
    x = np.asarray(x, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if function == "SIGMOID":
            return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
        if function == "LINEAR_EXACT":
            low, high = center - width / 2, center + width / 2
            y = ((x - center) / width + 0.5) * 255.0
        elif function == "LINEAR":
            low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
            y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
        else:
            raise ValueError(f"unknown VOI LUT function {function!r}; one of {VOI_FUNCTIONS}")
        return np.where(x <= low, 0.0, np.where(x > high, 255.0, y))


def voi_lut(x: np.ndarray, lut: LUT) -> np.ndarray:
    """The VOI LUT Sequence: table output (0 .. 2**bits - 1) scaled to 0..255."""
    return lut(x) * (255.0 / (2**lut.bits - 1))


def to_uint8(y: np.ndarray) -> np.ndarray:
    """Round half up and clip to 0..255.

    Examples
    --------
    >>> to_uint8(np.array([-3.0, 0.49, 0.5, 254.5, 300.0])).tolist()
    [0, 0, 1, 255, 255]
    """
    return np.clip(np.floor(np.asarray(y) + 0.5), 0, 255).astype(np.uint8)


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``numpy.percentile`` (method linear) of ``values`` (sorted) repeated ``counts`` times.

    Examples
    --------
    >>> v, c = np.array([0.0, 10.0, 50.0]), np.array([3, 1, 6])
    >>> bool(weighted_percentile(v, c, 35) == np.percentile(np.repeat(v, c), 35))
    True
    """
    cum = np.cumsum(counts)
    n = int(cum[-1])
    index = q / 100 * (n - 1)
    lo = math.floor(index)
    a = float(values[np.searchsorted(cum, lo, side="right")])
    b = float(values[np.searchsorted(cum, min(lo + 1, n - 1), side="right")])
    t, diff = index - lo, b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t  # numpy's _lerp


def choose_window(method: str, r: Rendering, values: np.ndarray, counts: np.ndarray,
                  ) -> Window:
    """The VOI to apply, given the modality values present (sorted) and their counts.

    ``header`` takes the header's first window, else its VOI LUT Sequence, else min-max
    (:func:`render` shows 8-bit data without any transform as is before asking).
    ``minmax`` and ``percentile`` ignore the header and map the image's own range (min-max,
    or :data:`~xraybatch.options.PERCENTILES`) linearly (LINEAR_EXACT) to 0..255.

    Examples
    --------
    >>> choose_window("minmax", Rendering(), np.array([100.0, 900.0]), np.array([5, 5]))
    Window(method='minmax', center=500.0, width=800.0, function='LINEAR_EXACT')
    """
    if method not in WINDOWS:
        raise ValueError(f"unknown window {method!r}: use one of {', '.join(WINDOWS)}")
    if method == "header":
        if r.has_window:
            return Window("header", float(r.center), float(r.width), r.function)
        if r.voi_lut is not None:
            return Window("voi_lut", function="LUT")
        method = "minmax"
    if method == "minmax":
        low, high = float(values[0]), float(values[-1])
    else:
        low, high = (weighted_percentile(values, counts, q) for q in PERCENTILES)
    return Window(method, (low + high) / 2, high - low, "LINEAR_EXACT")


def _display(x: np.ndarray, r: Rendering, window: Window) -> np.ndarray:
    """Modality values -> uint8 display values (VOI, MONOCHROME1 inversion, rounding)."""
    y = voi_lut(x, r.voi_lut) if window.method == "voi_lut" else voi(
        x, window.center, window.width, window.function)
    return to_uint8(255.0 - y if r.monochrome1 else y)


def render(stored: np.ndarray, r: Rendering = Rendering(), method: str = "header",
           ) -> tuple[np.ndarray, Window]:
    """Stored values (2-D, any integer or float dtype) -> uint8 display image and its window.

    Examples
    --------
    12-bit values with an intercept and a window covering the whole range:

    >>> stored = np.array([[8, 2056, 4088]], np.uint16)
    >>> image, window = render(stored, Rendering(intercept=-1024, center=1024, width=4096))
    >>> image.tolist(), window.method
    ([[0, 128, 255]], 'header')
    >>> render(4095 - stored, Rendering(intercept=-1024, center=1024, width=4096,
    ...                                 monochrome1=True))[0].tolist()
    [[0, 128, 255]]
    """
    stored = np.asarray(stored)
    eight_bit = stored.dtype == np.uint8
    if (method == "header" and eight_bit and not r.has_window and r.voi_lut is None
            and not r.has_modality):
        # 8-bit data without any transform (a JPEG inside DICOM): no table to build.
        window = Window("identity", 127.5, 255.0, "LINEAR_EXACT")
        return (255 - stored if r.monochrome1 else stored), window
    if stored.dtype.kind in "iu" and stored.size:
        low, high = int(stored.min()), int(stored.max())
        if high - low < _MAX_TABLE:
            # One entry per value in [low, high]: the histogram gives the window exactly.
            offset = stored.astype(np.int64) - low if low else stored
            counts = np.bincount(offset.ravel(), minlength=high - low + 1)
            x = modality(np.arange(low, high + 1), r)
            present = counts > 0
            order = np.argsort(x[present], kind="stable")  # a modality LUT may not be monotone
            window = choose_window(method, r, x[present][order], counts[present][order])
            return _display(x, r, window)[offset], window
    x = modality(stored, r)
    flat = np.sort(x.ravel())
    window = choose_window(method, r, flat, np.ones(len(flat), np.int64))
    return _display(x, r, window), window
