"""Formats OpenCV decodes on its own (BMP, TIFF, PGM/PPM, WebP) and the pixels of PNG.

8-bit images are decoded exactly as ``cv2.imread(path, IMREAD_GRAYSCALE)``. Deeper ones
(16-bit PNG, TIFF and PGM, float TIFF) are decoded at their own depth and windowed to 8 bits
by :mod:`xraybatch.render` (``--window``), instead of OpenCV's fixed ``>> 8``, which turns a
12-bit image stored in 16 bits nearly black.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from .. import render
from .base import Header, ImageError, Options, Pixels

MAGIC = [(b"BM", "bmp"), (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"), (b"P5", "pgm"),
         (b"P2", "pgm"), (b"P6", "ppm")]
# Formats that may hold more than 8 bits per sample (their header is not parsed here).
_DEEP = {"tiff", "pgm"}


def sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in MAGIC if data.startswith(magic)), None)


def sniff(data: bytes) -> bool:
    return sniff_format(data) is not None


def header(data: bytes) -> Header:
    return Header(sniff_format(data) or "")


def _imdecode(data: bytes, flags: int, header: Header) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if image is None or image.size == 0:
        raise ImageError("corrupt", f"{header.format.upper()} data could not be decoded")
    return image


def decode(data: bytes, header: Header, options: Options) -> Pixels:
    deep = header.bitdepth > 8 or (header.format in _DEEP and not header.height)
    if not deep:
        return Pixels(_imdecode(data, cv2.IMREAD_GRAYSCALE, header), header)
    image = _imdecode(data, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH, header)
    if image.dtype == np.uint8:  # an 8-bit TIFF or PGM: as cv2.imread gives it
        return Pixels(image, header)
    bits = 8 * image.dtype.itemsize
    image8, window = render.render(image, render.Rendering(), options.window)
    return Pixels(image8, replace(header, bitdepth=bits), 1, window.record_fields())
