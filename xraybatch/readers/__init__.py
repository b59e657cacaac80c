"""One small reader per family of input formats, behind one interface, chosen by magic bytes.

Each reader module has ``sniff(data) -> bool``, ``header(data) -> Header`` and
``decode(data, header, options) -> Pixels`` (see :mod:`.base`). :mod:`xraybatch.decode` picks
the reader with :func:`reader_for` and never branches on formats itself.
"""

from __future__ import annotations

from types import ModuleType

from . import dicom, jpeg, opencv, png
from .base import Header, ImageError, Options, Pixels

__all__ = ["Header", "ImageError", "Options", "Pixels", "reader_for", "sniff_format"]

# DICOM first: its 128-byte preamble may itself start like a TIFF (dual-format files).
_BY_MAGIC: tuple[tuple[str, ModuleType], ...] = (("dicom", dicom), ("jpeg", jpeg), ("png", png))
_READERS = dict(_BY_MAGIC)


def sniff_format(data: bytes) -> str:
    """Name the image format from its magic bytes (never from the file name).

    Examples
    --------
    >>> sniff_format(b"\\x00" * 128 + b"DICM" + b"\\x02\\x00")
    'dicom'
    >>> sniff_format(b"GIF89a")
    Traceback (most recent call last):
    ...
    xraybatch.readers.base.ImageError: not a recognised image format (starts with b'GIF8')
    """
    if not data:
        raise ImageError("empty", "zero-byte file")
    for name, reader in _BY_MAGIC:
        if reader.sniff(data):
            return name
    name = opencv.sniff_format(data)
    if name is None:
        raise ImageError("not_image",
                         f"not a recognised image format (starts with {data[:4]!r})")
    return name


def reader_for(fmt: str) -> ModuleType:
    """The reader module of a format named by :func:`sniff_format`."""
    return _READERS.get(fmt, opencv)
