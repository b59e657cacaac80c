"""JPEG: own header parser (size, Exif orientation, progressive), libjpeg-turbo decode through
OpenCV with DCT-domain downscaling, and a check for damaged entropy data.

libjpeg only *warns* about damaged entropy-coded data ("Corrupt JPEG data: ...", "Premature
end of data segment") and OpenCV does not pass the warning on: the image decodes with grey
bands. When the entropy decoder runs out of data, or meets a marker that does not belong
there (garbage in the scan stops it the same way), libjpeg leaves every remaining block's
coefficients zero, which decodes to exactly 128: the last block of the image is then uniform
128. Checking that one block costs nothing; a DCT-reduced block of fewer than 4 pixels is
confirmed on a full decode (rare: only files whose last reduced block is exactly 128).
"""

from __future__ import annotations

import math
import re
import struct
from dataclasses import replace

import cv2
import numpy as np

from .base import Header, ImageError, Options, Pixels

MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers (SOF0..SOF15 minus DHT, JPG and DAC); SOF2/6/10/14 are progressive.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
# Markers without a segment (TEM, RSTn, SOI) where a header segment is expected.
_NOT_A_SEGMENT = frozenset({0x01, *range(0xD0, 0xD9)})
# A marker in scan data: 0xFF, then neither byte stuffing (00), a fill byte, nor RSTn.
_MARKER = re.compile(rb"\xff[^\x00\xff\xd0-\xd7]")
# Marker segments libjpeg reads between the scans of a progressive or multi-scan JPEG: TEM,
# DHT, DAC, SOS, DQT, DNL, DRI, APPn, COM (any other marker before EOI stops it with an error).
_BETWEEN_SCANS = frozenset({0x01, 0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, *range(0xE0, 0xF0), 0xFE})
_GREY_FILL = 128  # libjpeg's output for a block whose coefficients are all zero
_MIN_TELLING_BLOCK = 4  # a reduced block smaller than this is confirmed at full size


def sniff(data: bytes) -> bool:
    return data[:3] == MAGIC


def _exif_transposed(app1: bytes) -> bool:
    """True if an Exif APP1 payload's orientation (5-8) makes OpenCV swap height and width."""
    order = {b"II": "<", b"MM": ">"}.get(app1[6:8])
    if order is None:
        return False
    tiff = app1[6:]
    try:
        (ifd,) = struct.unpack_from(order + "I", tiff, 4)
        (count,) = struct.unpack_from(order + "H", tiff, ifd)
        for i in range(count):  # IFD0 entries: tag, type, count, value (a SHORT here)
            tag, _, _, value = struct.unpack_from(order + "HHIH", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112:
                return value in (5, 6, 7, 8)
    except struct.error:  # a damaged Exif block: OpenCV ignores it too
        return False
    return False


def header(data: bytes) -> Header:
    """Walk the JPEG marker segments up to the first start-of-scan."""
    pos, n = 2, len(data)
    frame: Header | None = None
    transposed = False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise ImageError("corrupt", f"JPEG marker expected at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NOT_A_SEGMENT:  # libjpeg skips TEM's junk with a warning, Pillow refuses
            raise ImageError("corrupt", f"JPEG marker 0x{marker:02x} at byte {pos}, where a "
                             "marker segment is expected")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2:
            raise ImageError("corrupt", f"JPEG segment length {length} at byte {pos}")
        if marker in _SOF and pos + 10 <= n:
            bits, height, width, ncomp = struct.unpack_from(">BHHB", data, pos + 4)
            frame = Header("jpeg", height, width, ncomp, bits, marker in _PROGRESSIVE)
        elif marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\x00\x00":
            transposed = _exif_transposed(data[pos + 4:pos + 2 + length])
        elif marker == 0xDA:  # start of scan: entropy-coded data follows
            if frame is None:
                raise ImageError("corrupt", "JPEG has no frame header before its scan data")
            if frame.height == 0 or frame.width == 0 or frame.channels not in (1, 3, 4):
                raise ImageError("corrupt", f"JPEG frame header declares "
                                 f"{frame.width}x{frame.height}x{frame.channels}")
            _check_scan(data, pos, frame)
            # OpenCV applies the Exif orientation: report the size of what it decodes.
            return replace(frame, height=frame.width, width=frame.height) if transposed else frame
        pos += 2 + length
    raise ImageError("truncated" if frame else "corrupt", "JPEG header ends before scan data")


def _check_scan(data: bytes, sos: int, frame: Header) -> None:
    """The policy for what follows the first scan header, for ``.jpeg`` files and the JPEG
    frames of DICOM alike (one pass over the scan data, marker to marker).

    A stream that ends before its end-of-image marker is ``truncated`` (libjpeg would fill the
    rest grey without an error), also when another image's SOI follows the cut (an exporter
    that stored a cut stream and then the image again). Before that marker, libjpeg stops
    with an error (which OpenCV does not pass on, and for which Pillow refuses the file) at a
    marker it does not know, a second frame header, more scans than components in a
    sequential JPEG, and, when the first scan holds every component of a sequential JPEG, at
    anything but restart markers: such files are ``corrupt``.
    """
    only_scan = not frame.progressive and sos + 4 < len(data) and data[sos + 4] >= frame.channels
    pos, scans = sos, 0
    while True:  # pos: a marker segment (the scan header first), then its entropy data
        if data[pos + 1] == 0xDA:
            scans += 1
            if not frame.progressive and scans > frame.channels:
                raise ImageError("corrupt", f"sequential JPEG with {scans} scans for "
                                 f"{frame.channels} components, which libjpeg refuses")
        pos += 2 if data[pos + 1] == 0x01 else 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        found = _MARKER.search(data, pos)
        if found is None:
            raise ImageError("truncated", "JPEG ends before its end-of-image marker")
        pos, code = found.start(), data[found.start() + 1]
        if code == 0xD9:
            return
        if code == 0xD8:
            raise ImageError("truncated", f"JPEG ends before its end-of-image marker: another "
                             f"image starts at byte {pos}")
        if only_scan or code not in _BETWEEN_SCANS:
            raise ImageError("corrupt", f"JPEG scan data holds marker 0x{code:02x} at byte "
                             f"{pos}, where libjpeg stops with an error")


def dct_scale(header: Header, size: int) -> int:
    """Largest libjpeg-turbo scale (1, 2, 4, 8) whose output is still >= size on both sides.

    libjpeg rounds scaled dimensions up, so the output of scale ``s`` is ``ceil(side / s)``.
    """
    for s in (8, 4, 2):
        if math.ceil(header.height / s) >= size and math.ceil(header.width / s) >= size:
            return s
    return 1


def decode_at(data: bytes, header: Header, scale: int = 1) -> np.ndarray:
    """Decode to 8-bit grayscale exactly as ``cv2.imread(path, IMREAD_GRAYSCALE)`` (scale 1)
    or libjpeg-turbo's 1/scale DCT-domain reduced decode."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[scale])
    if image is None or image.size == 0:
        raise ImageError("corrupt", f"{header.format.upper()} data could not be decoded")
    return image


def damage(data: bytes, header: Header, image: np.ndarray, scale: int) -> str:
    """Why libjpeg would have warned about this file's entropy data ("" if it would not)."""
    if _grey_corner(image, scale) and (scale == 1 or 8 // scale >= _MIN_TELLING_BLOCK
                                       or _grey_corner(decode_at(data, header), 1)):
        return ("damaged JPEG data: the image ends in libjpeg's grey fill, its entropy data "
                "stops early or is cut by a stray marker (libjpeg: 'Corrupt JPEG data: "
                "premature end of data segment')")
    return ""


def _grey_corner(image: np.ndarray, scale: int) -> bool:
    k = max(1, 8 // scale)
    return bool((image[-k:, -k:] == _GREY_FILL).all())


def decode(data: bytes, header: Header, options: Options) -> Pixels:
    scale = dct_scale(header, options.size) if options.mode == "fast" else 1
    image = decode_at(data, header, scale)
    why = damage(data, header, image, scale)
    return Pixels(image, header, scale, {"damaged": True, "message": why} if why else {})
