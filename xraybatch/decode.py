"""Per-image work: read the bytes, check the header, decode to 8-bit grayscale, resize.

Everything here is a pure function of one file's bytes (plus :func:`read_bytes` for the
file itself), so it is tested without Dask and runs unchanged in a thread, a process or a
cluster worker. A file that cannot be used raises :class:`ImageError` with a reason code
(see :data:`REASONS`); the ingest stage turns that into a manifest row instead of a crash.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
import struct
from dataclasses import dataclass, replace

import cv2
import numpy as np

from . import options
from .options import DECODE_MODES, DEFAULT_INTERPOLATION, MAX_PIXELS
from .sources import remote

#: Reason codes for files that are not stored, with what each one means.
REASONS: dict[str, str] = {
    "empty": "the file has zero bytes",
    "not_image": "the content is not a recognised image format (magic bytes)",
    "corrupt": "the header or the compressed data is damaged; the decoder gave up",
    "truncated": "the file ends before its end-of-image marker (a decoder would fill grey)",
    "too_large": "the declared size exceeds the pixel limit (decompression-bomb guard)",
    "unreadable": "the file cannot be opened or read (permissions, I/O error) or is not a "
                  "regular file (a FIFO, a device)",
    "missing": "the file or the target of its symlink does not exist",
    "symlink_loop": "the path is a symbolic link loop",
}

INTERPOLATIONS: dict[str, int] = {name: getattr(cv2, f"INTER_{name.upper()}")
                                  for name in options.INTERPOLATIONS}

_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
            4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
# JPEG start-of-frame markers (SOF0..SOF15 minus DHT, JPG and DAC); SOF2/6/10/14 are progressive.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_MAGIC = [(b"\x89PNG\r\n\x1a\n", "png"), (b"BM", "bmp"), (b"II*\x00", "tiff"),
          (b"MM\x00*", "tiff"), (b"P5", "pgm"), (b"P2", "pgm"), (b"P6", "ppm")]


class ImageError(Exception):
    """A file that cannot be stored; ``code`` is one of :data:`REASONS`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Header:
    """What a file's header declares, read without decoding any pixel."""

    format: str  # jpeg, png, bmp, tiff, webp, pgm, ppm
    height: int = 0  # as decoded (after Exif orientation); 0 when not parsed here
    width: int = 0
    channels: int = 0  # 1 gray, 3 colour, 4 CMYK or RGBA, 0 unknown
    bitdepth: int = 8
    progressive: bool = False


@dataclass(frozen=True)
class Decoded:
    """One stored image and what is recorded about its source."""

    image: np.ndarray  # (size, size) uint8
    header: Header
    height: int  # of the source image, as decoded at full size
    width: int
    scale: int  # DCT scale used: 1 full decode, 2/4/8 libjpeg-turbo reduced decode


@dataclass(frozen=True)
class Record:
    """What is recorded about one source file, stored or not (the store's per-image facts)."""

    valid: bool = False
    status: str = ""  # "ok" or a reason code
    message: str = ""
    sha256: str = ""
    orig_height: int = 0
    orig_width: int = 0
    orig_channels: int = 0
    orig_bitdepth: int = 0
    orig_format: str = ""
    decode_scale: int = 0
    nbytes: int = 0  # bytes read from the file
    mean: float = 0.0  # of the stored image's pixels (set by the chunk task); 0 if invalid
    std: float = 0.0


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, turning OS errors into :class:`ImageError` reason codes.

    Examples
    --------
    >>> read_bytes("/no/such/file.jpeg")
    Traceback (most recent call last):
    ...
    xraybatch.decode.ImageError: file not found: /no/such/file.jpeg
    """
    if "://" in os.fspath(path):  # an fsspec URL: the object store reader
        return remote.read_url(os.fspath(path))
    try:
        # O_NONBLOCK: opening a FIFO named like an image must not hang the worker.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # FIFO, /dev/zero, socket...
                raise ImageError("unreadable", f"not a regular file: {path}")
            return f.read()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError("symlink_loop", f"symbolic link loop: {path}") from None
        if e.errno == errno.ENOENT:
            raise ImageError("missing", f"file not found: {path}") from None
        raise ImageError("unreadable", f"{e.strerror}: {path}") from None


def content_hash(data: bytes) -> str:
    """SHA-256 hex digest of the file bytes: the key for exact-duplicate detection."""
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes) -> str:
    """Name the image format from its magic bytes (never from the file name)."""
    if not data:
        raise ImageError("empty", "zero-byte file")
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    raise ImageError("not_image", f"not a recognised image format (starts with {data[:4]!r})")


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


def _jpeg_header(data: bytes) -> Header:
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
            if data.rfind(b"\xff\xd9", pos) == -1:
                raise ImageError("truncated", "JPEG ends before its end-of-image marker")
            # OpenCV applies the Exif orientation: report the size of what it decodes.
            return replace(frame, height=frame.width, width=frame.height) if transposed else frame
        pos += 2 + length
    raise ImageError("truncated" if frame else "corrupt", "JPEG header ends before scan data")


def _png_header(data: bytes) -> Header:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError("corrupt" if len(data) >= 33 else "truncated", "PNG has no IHDR chunk")
    width, height, bitdepth, colour = struct.unpack_from(">IIBB", data, 16)
    if width == 0 or height == 0 or colour not in _PNG_CHANNELS:
        raise ImageError("corrupt", f"PNG header declares {width}x{height}, colour type {colour}")
    if data.rfind(b"IEND") == -1:
        raise ImageError("truncated", "PNG ends before its IEND chunk")
    return Header("png", height, width, _PNG_CHANNELS[colour], bitdepth)


def read_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """Parse the header and refuse files that cannot be decoded safely.

    JPEG and PNG headers are parsed here (size, channels, bit depth, progressive) so that
    fast decoding can choose its DCT scale and a decompression bomb is refused before any
    pixel buffer is allocated. Other formats are left to OpenCV (whose own pixel limit applies).

    Examples
    --------
    >>> ok, buf = cv2.imencode(".jpg", np.zeros((140, 400), np.uint8))
    >>> read_header(buf.tobytes())
    Header(format='jpeg', height=140, width=400, channels=1, bitdepth=8, progressive=False)
    """
    fmt = sniff_format(data)
    if fmt == "jpeg":
        header = _jpeg_header(data)
    elif fmt == "png":
        header = _png_header(data)
    else:
        return Header(fmt)
    if header.height * header.width > max_pixels:
        raise ImageError("too_large", f"declares {header.width}x{header.height} pixels, "
                         f"over the limit of {max_pixels:,}")
    return header


def dct_scale(header: Header, size: int) -> int:
    """Largest libjpeg-turbo scale (1, 2, 4, 8) whose output is still >= size on both sides.

    libjpeg rounds scaled dimensions up, so the output of scale ``s`` is ``ceil(side / s)``.

    Examples
    --------
    >>> dct_scale(Header("jpeg", 2500, 2900), 256)
    8
    >>> dct_scale(Header("jpeg", 600, 1200), 256)
    2
    >>> dct_scale(Header("png", 2500, 2900), 256)
    1
    """
    if header.format != "jpeg":
        return 1
    for s in (8, 4, 2):
        if math.ceil(header.height / s) >= size and math.ceil(header.width / s) >= size:
            return s
    return 1


def decode_gray(data: bytes, header: Header, scale: int = 1) -> np.ndarray:
    """Decode to 8-bit grayscale exactly as ``cv2.imread(path, IMREAD_GRAYSCALE)`` would.

    Colour inputs are converted by the decoder (JPEG: luma channel; PNG: weighted sum),
    16-bit inputs are reduced to 8 bits by OpenCV, alpha is dropped.
    """
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _REDUCED[scale])
    if image is None or image.size == 0:
        raise ImageError("corrupt", f"{header.format.upper()} data could not be decoded")
    return image


def interpolation_for(interpolation: str, scale: int, shape: tuple[int, ...],
                      size: int) -> str:
    """The filter that ``interpolation`` means for an image decoded at 1/``scale``.

    ``"auto"`` is ``"linear"`` after a DCT-reduced decode (the decoder already averaged
    2x2 to 8x8 blocks) that is less than 4x ``size`` on its longer side, and ``"area"``
    otherwise (full decodes, other formats, and huge images, where bilinear would skip
    pixels). On the real Kermany sample bilinear costs a seventh of INTER_AREA there and
    keeps 42.4 dB against a full decode + INTER_AREA (benchmarks/README.md).
    ``"area"`` and ``"linear"`` mean themselves.

    Examples
    --------
    >>> interpolation_for("auto", 2, (350, 700), 256)
    'linear'
    >>> interpolation_for("auto", 1, (300, 400), 256)  # a full decode
    'area'
    >>> interpolation_for("auto", 8, (900, 1100), 256)  # over 4x the output
    'area'
    """
    if interpolation != "auto":
        return interpolation
    return "linear" if scale > 1 and max(shape[:2]) < 4 * size else "area"


def resize(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize to ``size`` x ``size`` (aspect ratio not kept, as in the tutorial)."""
    return cv2.resize(image, (size, size), interpolation=INTERPOLATIONS[interpolation])


def process(data: bytes, size: int = 256, interpolation: str = DEFAULT_INTERPOLATION,
            mode: str = "fast", max_pixels: int = MAX_PIXELS) -> Decoded:
    """Bytes of one file -> the stored ``size`` x ``size`` uint8 image and its source facts.

    ``mode="exact"`` decodes at full size (bit for bit ``cv2.imread`` + ``cv2.resize``);
    ``mode="fast"`` lets libjpeg-turbo decode JPEGs at 1/2, 1/4 or 1/8 scale in the DCT
    domain when the result is still at least ``size`` on both sides, then resizes with the
    filter :func:`interpolation_for` names (``"auto"``: bilinear after a reduced decode).

    Examples
    --------
    >>> ok, buf = cv2.imencode(".jpg", np.full((600, 800), 128, np.uint8))
    >>> d = process(buf.tobytes(), size=256, mode="fast")
    >>> d.image.shape, d.height, d.width, d.scale
    ((256, 256), 600, 800, 2)
    """
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {mode!r}; choose from {DECODE_MODES}")
    header = read_header(data, max_pixels)
    scale = dct_scale(header, size) if mode == "fast" else 1
    image = decode_gray(data, header, scale)
    if image.size > max_pixels:  # formats whose header is not parsed: checked after decode
        raise ImageError("too_large", f"{image.shape[1]}x{image.shape[0]} pixels, over the "
                         f"limit of {max_pixels:,}")
    height, width = (header.height, header.width) if header.height else image.shape
    method = interpolation_for(interpolation, scale, image.shape, size)
    return Decoded(resize(image, size, method), header, height, width, scale)


def load(path: str | os.PathLike, size: int = 256, interpolation: str = DEFAULT_INTERPOLATION,
         mode: str = "fast", max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray | None, Record]:
    """One file -> its stored image (None if it cannot be used) and its :class:`Record`.

    Never raises for a bad file: the reason code goes into the record.

    Examples
    --------
    >>> image, record = load("/no/such/file.jpeg")
    >>> image is None, record.status
    (True, 'missing')
    """
    try:
        data = read_bytes(path)
    except ImageError as e:
        return None, Record(status=e.code, message=str(e))
    sha256 = content_hash(data)
    try:
        result = process(data, size, interpolation, mode, max_pixels)
    except ImageError as e:
        return None, Record(status=e.code, message=str(e), sha256=sha256, nbytes=len(data))
    header = result.header
    return result.image, Record(True, "ok", "", sha256, result.height, result.width,
                                header.channels, header.bitdepth, header.format, result.scale,
                                len(data))


def histogram(image: np.ndarray) -> np.ndarray:
    """256-bin integer histogram of a uint8 image (the counts of ``np.bincount``).

    ``cv2.calcHist`` counts in integers and takes less than half the time of
    ``np.bincount`` (benchmarks/README.md); its float32 counts are exact up to 2**24
    pixels, the largest output (4096 x 4096).
    """
    return cv2.calcHist([image], [0], None, [256], [0, 256]).ravel().astype(np.int64)
