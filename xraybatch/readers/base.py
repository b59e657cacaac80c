"""What every reader shares: the error type, the header and pixel records, the options.

A reader is a small module for one family of formats with three functions (see
:mod:`xraybatch.readers`): ``sniff(data) -> bool`` (magic bytes), ``header(data) -> Header``
(no pixel decoded) and ``decode(data, header, options) -> Pixels`` (display-ready 8-bit
grayscale at full or DCT-reduced size, not yet fitted to the output size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Header", "ImageError", "Options", "Pixels"]


class ImageError(Exception):
    """A file that cannot be stored; ``code`` is one of :data:`xraybatch.decode.REASONS`."""

    def __init__(self, code: str, message: str) -> None:
        # One printable line whatever a damaged file's text holds (a log, the CLI's error).
        super().__init__("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))
        self.code = code


@dataclass(frozen=True)
class Header:
    """What a file's header declares, read without decoding any pixel."""

    format: str  # jpeg, png, bmp, tiff, webp, pgm, ppm, dicom
    height: int = 0  # as decoded (after Exif orientation); 0 when not parsed here
    width: int = 0
    channels: int = 0  # 1 gray, 3 colour, 4 CMYK or RGBA, 0 unknown
    bitdepth: int = 8
    progressive: bool = False
    # A reader's parsed header object (e.g. the pydicom Dataset), so decode never parses twice.
    source: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Options:
    """How to turn a file into display pixels (everything but the output geometry)."""

    size: int = 256  # output side: fast mode picks its DCT scale from it
    mode: str = "fast"  # fast: DCT-reduced JPEG decode when big enough; exact: full decode
    window: str = "header"  # see xraybatch.options.WINDOWS


@dataclass(frozen=True)
class Pixels:
    """A reader's result: display-ready uint8 grayscale and what is recorded about it."""

    image: np.ndarray  # 2-D uint8, full size or DCT-reduced by ``scale``
    header: Header
    scale: int = 1
    # Extra per-image facts, named as fields of xraybatch.decode.Record (window, metadata...).
    meta: dict[str, Any] = field(default_factory=dict)
