"""PNG: own header parser (size, channels, bit depth); pixels decoded by :mod:`.opencv`."""

from __future__ import annotations

import struct

from . import opencv
from .base import Header, ImageError, Options, Pixels

MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_MAX_CHUNK = 2**31 - 1  # the PNG specification's limit
_ANIMATION = (b"acTL", b"fcTL", b"fdAT")
_DEFLATE_RATIO = 1032  # deflate's largest compression ratio (258-byte matches in 2 bits)


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
    samples = 1 if colour == 3 else _PNG_CHANNELS[colour]  # a palette index per pixel
    pixel_bytes = height * ((width * samples * bitdepth + 7) // 8)
    return Header("png", height, width, _PNG_CHANNELS[colour], bitdepth,
                  source=(pixel_bytes, *_check_chunks(data)))


def _check_chunks(data: bytes) -> tuple[int, int]:
    """Every chunk up to an empty IEND fits in the file; returns the bytes of IDAT data and
    where the PNG ends (the end of IEND: what follows is not given to the decoder).

    OpenCV's PNG reader loops for ever on a chunk whose length runs past the end, reads on
    after IEND (allocating a chunk of 2 GB declared there), and allocates the declared image
    before it finds that the pixel data is too short (found by the fuzzer: tests/test_fuzz.py).
    """
    pos, compressed = 8, 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if length > _MAX_CHUNK or pos + 12 + length > len(data):
            raise ImageError("corrupt", f"PNG chunk {kind!r} at byte {pos} declares {length} "
                             "bytes, past the end of the file")
        if kind == b"IEND":
            if length:
                raise ImageError("corrupt", f"PNG IEND chunk at byte {pos} is not empty")
            if not compressed:
                raise ImageError("corrupt", "PNG has no pixel data (IDAT) before IEND")
            return compressed, pos + 12
        compressed += length if kind == b"IDAT" else 0
        pos += 12 + length
    raise ImageError("truncated", "PNG ends before its IEND chunk")


def decode(data: bytes, header: Header, options: Options) -> Pixels:
    pixel_bytes, compressed, end = header.source or (0, 0, len(data))  # None: made elsewhere
    if pixel_bytes > _DEFLATE_RATIO * compressed + 4096:  # checked after the pixel limit
        raise ImageError("corrupt", f"PNG pixel data ({compressed} bytes compressed) cannot "
                         f"hold {header.width}x{header.height} pixels (deflate compresses "
                         f"{_DEFLATE_RATIO}:1 at the most)")
    return opencv.decode(_default_image(data[:end]), header, options)


def _default_image(data: bytes) -> bytes:
    """An animated PNG without its animation chunks: the default image, decoded by libpng as
    any PNG. OpenCV's APNG reader returns a black image where libpng refuses damaged pixel
    data (found by the fuzzer: tests/test_fuzz.py)."""
    if b"acTL" not in data:
        return data
    pos, kept = 8, [data[:8]]
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4:pos + 8] not in _ANIMATION:
            kept.append(data[pos:pos + 12 + length])
        pos += 12 + length
    return b"".join(kept)
