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
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from . import geometry, readers
from .geometry import fit as fit_image
from .options import DECODE_MODES, DEFAULT_INTERPOLATION, MAX_PIXELS
from .readers import jpeg
from .readers.base import Header, ImageError, Options, Pixels
from .sources import remote

__all__ = ["DECODE_MODES", "INTERPOLATIONS", "MAX_PIXELS", "REASONS", "Decoded", "Header",
           "ImageError", "Options", "Record", "content_hash", "dct_scale", "decode_gray",
           "decode_pixels", "fit_image", "histogram", "interpolation_for", "load", "process",
           "read_bytes", "read_header", "resize", "sniff_format"]

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
    "no_decoder": "DICOM without pydicom, or a transfer syntax without an installed decoder "
                  "(the message names what to install)",
    "no_pixels": "a DICOM file without pixel data (a report, a presentation state...)",
    "multi_frame": "a multi-frame DICOM (only single-frame images are stored)",
}

INTERPOLATIONS: dict[str, int] = geometry.INTERPOLATIONS


@dataclass(frozen=True)
class Decoded:
    """One stored image and what is recorded about its source."""

    image: np.ndarray  # (size, size) uint8
    header: Header
    height: int  # of the source image, as decoded at full size
    width: int
    scale: int  # DCT scale used: 1 full decode, 2/4/8 libjpeg-turbo reduced decode
    meta: dict[str, Any] = field(default_factory=dict)  # reader facts: Record fields


@dataclass(frozen=True)
class Record:
    """What is recorded about one source file, stored or not (the store's per-image facts)."""

    valid: bool = False
    status: str = ""  # "ok" or a reason code
    message: str = ""  # why a file failed, or a warning about a stored one
    sha256: str = ""
    orig_height: int = 0
    orig_width: int = 0
    orig_channels: int = 0
    orig_bitdepth: int = 0
    orig_format: str = ""
    decode_scale: int = 0
    nbytes: int = 0  # bytes read from the file
    damaged: bool = False  # stored, but the decoder would have warned (grey bands)
    # DICOM header facts ("" or NaN for other sources).
    dicom_patient_id: str = ""
    study_uid: str = ""
    view_position: str = ""
    sex: str = ""
    age: str = ""
    photometric: str = ""
    bits_stored: int = 0
    rescale_slope: float = math.nan
    rescale_intercept: float = math.nan
    window_center: float = math.nan  # the header's first window
    window_width: float = math.nan
    # The window actually applied (images deeper than 8 bits and DICOM; see render.Window).
    window_used: str = ""
    voi_center: float = math.nan
    voi_width: float = math.nan
    voi_function: str = ""


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, turning OS errors into :class:`ImageError` reason codes.

    Examples
    --------
    >>> read_bytes("/no/such/file.jpeg")
    Traceback (most recent call last):
    ...
    xraybatch.readers.base.ImageError: file not found: /no/such/file.jpeg
    """
    if "://" in os.fspath(path):  # an fsspec URL: the object store reader
        return remote.read_url(os.fspath(path))
    try:
        # O_NONBLOCK: opening a FIFO named like an image must not hang the worker.
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # FIFO, /dev/zero, socket...
                raise ImageError("unreadable", f"not a regular file: {path}")
            return f.read()
    except ValueError:  # a NUL byte in the name (a table cell): no such file can exist
        raise ImageError("missing", f"file not found (the name holds a NUL byte): "
                         f"{os.fspath(path)!r}") from None
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
    return readers.sniff_format(data)


def read_header(data: bytes, max_pixels: int = MAX_PIXELS) -> Header:
    """Parse the header and refuse files that cannot be decoded safely.

    JPEG, PNG and DICOM headers are parsed by their readers (size, channels, bit depth,
    progressive) so that fast decoding can choose its DCT scale and a decompression bomb is
    refused before any pixel buffer is allocated. Other formats are left to OpenCV (whose own
    pixel limit applies).

    Examples
    --------
    >>> ok, buf = cv2.imencode(".jpg", np.zeros((140, 400), np.uint8))
    >>> read_header(buf.tobytes())
    Header(format='jpeg', height=140, width=400, channels=1, bitdepth=8, progressive=False)
    """
    header = readers.reader_for(sniff_format(data)).header(data)
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
    return jpeg.dct_scale(header, size) if header.format == "jpeg" else 1


def decode_gray(data: bytes, header: Header, scale: int = 1, window: str = "header",
                ) -> np.ndarray:
    """Decode to 8-bit grayscale exactly as ``cv2.imread(path, IMREAD_GRAYSCALE)`` would.

    Colour inputs are converted by the decoder (JPEG: luma channel; PNG: weighted sum),
    alpha is dropped. Images deeper than 8 bits and DICOM are rendered by ``window`` (see
    :mod:`xraybatch.render`); ``scale`` > 1 is libjpeg-turbo's reduced decode of a JPEG.
    """
    if header.format == "jpeg":
        return jpeg.decode_at(data, header, scale)
    return readers.reader_for(header.format).decode(
        data, header, Options(mode="exact", window=window)).image


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


def decode_pixels(data: bytes, header: Header, options: Options) -> Pixels:
    """The display-ready 8-bit pixels of a file whose header was read, by its format's reader
    (full size, or DCT-reduced in fast mode; not yet fitted to the output size)."""
    return readers.reader_for(header.format).decode(data, header, options)


def resize(image: np.ndarray, size: int, interpolation: str = "area") -> np.ndarray:
    """Resize to ``size`` x ``size`` (aspect ratio not kept, as in the tutorial)."""
    return geometry.stretch(image, size, interpolation)


def process(data: bytes, size: int = 256, interpolation: str = DEFAULT_INTERPOLATION,
            mode: str = "fast", max_pixels: int = MAX_PIXELS, window: str = "header",
            fit: str = "stretch") -> Decoded:
    """Bytes of one file -> the stored ``size`` x ``size`` uint8 image and its source facts.

    ``mode="exact"`` decodes at full size (bit for bit ``cv2.imread`` + ``cv2.resize``);
    ``mode="fast"`` lets libjpeg-turbo decode JPEGs (also inside DICOM) at 1/2, 1/4 or 1/8
    scale in the DCT domain when the result is still at least ``size`` on both sides, then
    resizes with the filter :func:`interpolation_for` names (``"auto"``: bilinear after a
    reduced decode). ``window`` renders images deeper than 8 bits and DICOM
    (:mod:`.render`); ``fit`` is ``stretch``, ``pad`` or ``crop`` (:mod:`.geometry`).

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
    pixels = decode_pixels(data, header, Options(size=size, mode=mode, window=window))
    image = pixels.image
    if image.size > max_pixels:  # formats whose header is not parsed: checked after decode
        raise ImageError("too_large", f"{image.shape[1]}x{image.shape[0]} pixels, over the "
                         f"limit of {max_pixels:,}")
    height, width = (header.height, header.width) if header.height else image.shape
    method = interpolation_for(interpolation, pixels.scale, image.shape, size)
    return Decoded(fit_image(image, size, fit, method), pixels.header, height, width,
                   pixels.scale, pixels.meta)


def load(path: str | os.PathLike, size: int = 256, interpolation: str = DEFAULT_INTERPOLATION,
         mode: str = "fast", max_pixels: int = MAX_PIXELS, window: str = "header",
         fit: str = "stretch") -> tuple[np.ndarray | None, Record]:
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
        result = process(data, size, interpolation, mode, max_pixels, window, fit)
    except ImageError as e:
        return None, Record(status=e.code, message=str(e), sha256=sha256, nbytes=len(data))
    header = result.header
    facts = dict(valid=True, status="ok", sha256=sha256, orig_height=result.height,
                 orig_width=result.width, orig_channels=header.channels,
                 orig_bitdepth=header.bitdepth, orig_format=header.format,
                 decode_scale=result.scale, nbytes=len(data))
    return result.image, Record(**facts, **result.meta)


def histogram(image: np.ndarray) -> np.ndarray:
    """256-bin integer histogram of a uint8 image (the counts of ``np.bincount``).

    ``cv2.calcHist`` counts in integers and takes less than half the time of
    ``np.bincount`` (benchmarks/README.md); its float32 counts are exact up to 2**24
    pixels, the largest output (4096 x 4096).
    """
    return cv2.calcHist([image], [0], None, [256], [0, 256]).ravel().astype(np.int64)
