"""PNG: own header parser (size, channels, bit depth); pixels decoded by :mod:`.opencv`."""

from __future__ import annotations

import struct

from . import opencv
from .base import Header, ImageError, Options, Pixels

MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def sniff(data: bytes) -> bool:
    return data.startswith(MAGIC)


def header(data: bytes) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError("corrupt" if len(data) >= 33 else "truncated", "PNG has no IHDR chunk")
    width, height, bitdepth, colour = struct.unpack_from(">IIBB", data, 16)
    if width == 0 or height == 0 or colour not in _PNG_CHANNELS:
        raise ImageError("corrupt", f"PNG header declares {width}x{height}, colour type {colour}")
    if data.rfind(b"IEND") == -1:
        raise ImageError("truncated", "PNG ends before its IEND chunk")
    return Header("png", height, width, _PNG_CHANNELS[colour], bitdepth)


def decode(data: bytes, header: Header, options: Options) -> Pixels:
    return opencv.decode(data, header, options)
