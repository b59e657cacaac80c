"""DICOM: header and metadata through pydicom, pixels rendered as a radiology viewer shows them.

Needs the ``dicom`` extra (pydicom, plus pylibjpeg with its libjpeg and openjpeg plugins for
the compressed transfer syntaxes). Without it a DICOM file gets the reason ``no_decoder``
with the line to install, and the rest of the batch goes on.

JPEG baseline (1.2.840.10008.1.2.4.50, the common export) takes the fast path: its one
fragment is a plain JPEG stream, decoded by :mod:`.jpeg` exactly like a ``.jpeg`` file,
DCT-reduced decode included. Every other transfer syntax is decoded by pydicom's decoders.
The stored values then go through :func:`xraybatch.render.render` (modality LUT, VOI,
MONOCHROME1 inversion).
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from .. import render
from . import jpeg
from .base import Header, ImageError, Options, Pixels

INSTALL_HINT = "pip install 'xraybatch[dicom]'"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: Photometric interpretations of single-frame images (PS3.3 C.7.6.3.1.2), as pydicom knows
#: them; other values (a lower-case spelling...) are refused, as pydicom refuses them.
PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
               "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def sniff(data: bytes) -> bool:
    """The DICOM Part 10 preamble (``DICM`` at byte 128), or a data set without it.

    File names need no extension. Legacy files (ACR-NEMA style exports, Part 10 files whose
    writer left the preamble out) start directly with their first data elements; they are
    recognised by those elements (:func:`legacy`), never by their name.
    """
    return data[128:132] == b"DICM" or legacy(data)


def legacy(data: bytes) -> bool:
    """Whether ``data`` starts like a DICOM data set written without the Part 10 preamble.

    The first :data:`_LEGACY_ELEMENTS` data elements must parse as implicit or explicit VR
    little endian: the first in group 0002 (file meta) or 0008 (identification, where
    ACR-NEMA files start), tags ascending, even groups, value lengths that fit the file.
    Random bytes pass with a chance far below one in 2**32.

    Examples
    --------
    >>> legacy(bytes.fromhex("08000000 04000000 0a000000") + bytes.fromhex("08001600")
    ...        + (4).to_bytes(4, "little") + b"1.2 ")
    True
    >>> legacy(b"\\x08\\x00" + bytes(30)), legacy(b"\\xff\\xd8\\xff\\xe0" + bytes(30))
    (False, False)
    """
    return any(_plausible_elements(data, explicit) for explicit in (False, True))


#: Data elements a legacy DICOM file must start with (complete, within the bytes given).
_LEGACY_ELEMENTS = 2
#: Bytes the scan reads to recognise a legacy file (its first elements are short).
SNIFF_BYTES = 4096
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                 b"TM UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def _plausible_elements(data: bytes, explicit: bool) -> bool:
    pos, last = 0, None
    for _ in range(_LEGACY_ELEMENTS):
        if pos + 8 > len(data):
            return False
        group, element = int.from_bytes(data[pos:pos + 2], "little"), int.from_bytes(
            data[pos + 2:pos + 4], "little")
        if last is None and group not in (0x0002, 0x0008):
            return False
        if group % 2 or (last is not None and (group, element) <= last):
            return False
        if explicit:
            vr = data[pos + 4:pos + 6]
            if vr not in _VRS:
                return False
            if vr in _LONG_VRS:
                if pos + 12 > len(data) or data[pos + 6:pos + 8] != b"\x00\x00":
                    return False
                size, pos = int.from_bytes(data[pos + 8:pos + 12], "little"), pos + 12
            else:
                size, pos = int.from_bytes(data[pos + 6:pos + 8], "little"), pos + 8
        else:
            size, pos = int.from_bytes(data[pos + 4:pos + 8], "little"), pos + 8
        if size % 2 or pos + size > len(data):  # undefined length (odd) is not a start
            return False
        pos, last = pos + size, (group, element)
    return True


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImageError("no_decoder", f"DICOM needs pydicom: {INSTALL_HINT}") from None
    return pydicom


def _guarded(function: Callable[..., Any]) -> Callable[..., Any]:
    """pydicom converts a data element's value when it is first read, and raises many types
    for damaged ones (an unknown VR, a number that does not parse...): any of them is a
    damaged file (``corrupt``), never a traceback."""
    @functools.wraps(function)
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except ImageError:
            raise
        except Exception as e:
            raise ImageError("corrupt", f"DICOM data element cannot be read: "
                             f"{type(e).__name__}: {e}") from None
    return guarded


@_guarded
def header(data: bytes) -> Header:
    """Parse the whole data set once (pixel data stays bytes); refuse what cannot be stored."""
    pydicom = _pydicom()
    preamble = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not preamble)
        _legacy_encoding(ds, legacy=not preamble)
    except EOFError as e:
        raise ImageError("truncated", f"DICOM ends inside its data set: {e}") from None
    except Exception as e:  # pydicom raises many types for damaged data sets
        raise ImageError("corrupt", f"DICOM data set cannot be parsed: {e}") from None
    if "PixelData" not in ds:
        # pydicom stops quietly where a file ends (and drops the data set when that is
        # inside an encapsulated pixel data element): an image was cut off.
        if "Rows" in ds or not len(ds):
            raise ImageError("truncated", "DICOM describes an image but ends before its "
                             "pixel data is complete")
        kind = ds.get("SOPClassUID", "")
        kind = getattr(kind, "name", kind)
        raise ImageError("no_pixels", f"DICOM without pixel data ({kind or 'no SOP class'})")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.SamplesPerPixel), int(ds.BitsStored)
        # What pydicom's decoders require, required of the JPEG fast path as well.
        needed = ["PhotometricInterpretation", "BitsAllocated", "PixelRepresentation",
                  *(["PlanarConfiguration"] if samples > 1 else [])]
        absent = [keyword for keyword in needed if keyword not in ds]
    except Exception as e:  # absent, or a value pydicom cannot convert (its types vary)
        raise ImageError("corrupt", f"DICOM image description is incomplete: {e}") from None
    if absent:
        raise ImageError("corrupt", f"DICOM image description has no {absent[0]}")
    photometric, allocated = str(ds.PhotometricInterpretation), int(ds.BitsAllocated)
    if photometric not in PHOTOMETRIC:
        raise ImageError("corrupt", f"DICOM photometric interpretation {photometric!r} is "
                         f"not one of {', '.join(PHOTOMETRIC)}")
    if samples != (1 if photometric.startswith(("MONO", "PALETTE")) else 3):
        raise ImageError("corrupt", f"DICOM declares {samples} samples per pixel for "
                         f"{photometric}")
    if not 1 <= bits <= allocated:
        raise ImageError("corrupt", f"DICOM declares {bits} bits stored in {allocated}")
    if frames > 1:
        raise ImageError("multi_frame", f"multi-frame DICOM ({frames} frames): only "
                         "single-frame images are stored")
    if rows == 0 or cols == 0:
        raise ImageError("corrupt", f"DICOM declares {cols}x{rows} pixels")
    return Header("dicom", rows, cols, samples, bits, source=ds)


def _legacy_encoding(ds: Any, legacy: bool) -> None:
    """Give a data set read without its Part 10 file meta what its decoders need.

    ACR-NEMA files (and some writers' Part 10 files) have no transfer syntax: it is the
    encoding pydicom found while parsing (implicit VR little endian for nearly all of them).
    ACR-NEMA 1.0 images may lack SamplesPerPixel and PhotometricInterpretation: one grey
    sample (MONOCHROME2), what those files hold.
    """
    from pydicom import uid

    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit is not False
                                          else uid.ExplicitVRLittleEndian if little
                                          else uid.ExplicitVRBigEndian)
    if not legacy or "PixelData" not in ds:
        return
    if "SamplesPerPixel" not in ds:
        ds.SamplesPerPixel = 1
    if "PhotometricInterpretation" not in ds and ds.SamplesPerPixel == 1:
        ds.PhotometricInterpretation = "MONOCHROME2"


def _first(value: Any) -> float | None:
    """The first of a possibly multi-valued number (WindowCenter may hold several), or None."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else None
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _lut(item: Any) -> render.LUT | None:
    """A Modality or VOI LUT Sequence item as a :class:`~xraybatch.render.LUT`."""
    try:
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        raw = item.LUTData
    except (AttributeError, TypeError, ValueError):
        return None
    entries = entries or 65536
    if isinstance(raw, bytes):  # OW data
        data = np.frombuffer(raw, "<u2")
    else:  # US data: one number or pydicom's MultiValue
        data = np.asarray(list(raw) if isinstance(raw, Sequence) else [raw], np.int64)
    return render.LUT(first, bits, np.asarray(data[:entries], np.int64))


def rendering(ds: Any) -> render.Rendering:
    """The rendering facts of a grayscale data set (its modality and VOI modules)."""
    modality_lut = voi_lut = None
    if ds.get("ModalityLUTSequence"):
        modality_lut = _lut(ds.ModalityLUTSequence[0])
    if ds.get("VOILUTSequence"):
        voi_lut = _lut(ds.VOILUTSequence[0])
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").upper()
    r = render.Rendering(
        slope=_first(ds.get("RescaleSlope")) or 1.0,
        intercept=_first(ds.get("RescaleIntercept")) or 0.0,
        modality_lut=modality_lut,
        center=_first(ds.get("WindowCenter")), width=_first(ds.get("WindowWidth")),
        function=function if function in render.VOI_FUNCTIONS else "LINEAR",
        voi_lut=voi_lut,
        monochrome1=str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1")
    # A rescale or window that is not a finite number (or overflows on the stored values)
    # would render every pixel NaN or infinite, stored as one grey level: damaged header.
    top = abs(r.slope) * 2.0 ** min(int(ds.get("BitsStored", 16) or 16), 64) + abs(r.intercept)
    if not all(math.isfinite(v) for v in (top, r.center or 0, r.width or 0)):
        raise ImageError("corrupt", f"DICOM rescale ({r.slope}, {r.intercept}) or window "
                         f"({r.center}, {r.width}) is not a finite number")
    return r


def metadata(ds: Any, r: render.Rendering) -> dict[str, Any]:
    """Record fields from the header (empty strings and NaN where it has none)."""
    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    nan = math.nan
    return {"dicom_patient_id": text("PatientID"), "study_uid": text("StudyInstanceUID"),
            "view_position": text("ViewPosition"), "sex": text("PatientSex"),
            "age": text("PatientAge"), "photometric": text("PhotometricInterpretation"),
            "bits_stored": int(ds.get("BitsStored", 0) or 0),
            "rescale_slope": r.slope, "rescale_intercept": r.intercept,
            "window_center": nan if r.center is None else r.center,
            "window_width": nan if r.width is None else r.width}


def _stored_pixels(ds: Any) -> np.ndarray:
    """Decode with pydicom's decoders, naming a missing decoder and truncated data."""
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError, ImportError) as e:
        syntax = ds.file_meta.get("TransferSyntaxUID", "")
        raise ImageError("no_decoder", f"no decoder for transfer syntax "
                         f"{getattr(syntax, 'name', syntax)}: {INSTALL_HINT} ({e})"
                         .replace("\n", " ")) from None
    except ValueError as e:
        code = "truncated" if "less than expected" in str(e) else "corrupt"
        raise ImageError(code, f"DICOM pixel data: {e}".replace("\n", " ")) from None
    except Exception as e:  # a plugin's own error type for a damaged codestream
        raise ImageError("corrupt", f"DICOM pixel data cannot be decoded: {e}"
                         .replace("\n", " ")) from None


def _jpeg_frame(ds: Any) -> bytes:
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, EOFError) as e:
        raise ImageError("truncated", f"DICOM JPEG fragments are incomplete: {e}") from None


def _validate(ds: Any) -> None:
    """The image description checked as pydicom checks it before decoding (bits allocated,
    pixel representation, planar configuration...): the JPEG fast path, which does not go
    through pydicom's decoders, refuses what they refuse."""
    from pydicom.pixels.decoders.base import DecodeRunner

    runner = DecodeRunner(ds.file_meta.TransferSyntaxUID)
    try:
        runner.set_source(ds)
        runner.validate()
    except (AttributeError, ValueError) as e:
        raise ImageError("corrupt", f"DICOM image description is invalid: {e}") from None


def _frame_header(frame: bytes, header: Header) -> Header:
    """The JPEG stream's own header, read by the ``.jpeg`` reader: the same policy for a cut
    stream (``truncated``), and a frame the size, channels and sample depth the DICOM
    declares (its Rows x Columns passed the pixel limit; a larger frame would bypass it)."""
    own = jpeg.header(frame)
    if ({own.height, own.width} != {header.height, header.width}  # Exif may transpose
            or own.channels != header.channels):
        raise ImageError("corrupt", f"DICOM JPEG frame is {own.width}x{own.height}x"
                         f"{own.channels}, the header declares {header.width}x{header.height}"
                         f"x{header.channels}")
    allocated = int(header.source.BitsAllocated)
    if own.bitdepth != allocated:  # pydicom cannot fit the samples either
        raise ImageError("corrupt", f"DICOM JPEG frame has {own.bitdepth}-bit samples, the "
                         f"header allocates {allocated} bits")
    return own


@_guarded
def decode(data: bytes, header: Header, options: Options) -> Pixels:
    ds = header.source
    gray = str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
    r = rendering(ds) if gray else render.Rendering()
    meta = metadata(ds, r)
    scale = 1
    if ds.file_meta.get("TransferSyntaxUID", "") == JPEG_BASELINE:
        _validate(ds)
        frame = _jpeg_frame(ds)
        pixels = jpeg.decode(frame, _frame_header(frame, header), options)
        stored, scale = pixels.image, pixels.scale
        meta.update(pixels.meta)
    else:
        stored = _stored_pixels(ds)
        if stored.ndim == 3:  # colour: pydicom gives RGB (YBR converted)
            stored = cv2.cvtColor(stored, cv2.COLOR_RGB2GRAY)
    if not gray:
        meta["message"] = (f"colour DICOM ({meta['photometric']}) converted to grayscale"
                           + (f"; {meta['message']}" if meta.get("message") else ""))
    image, window = render.render(stored, r, options.window)
    return Pixels(image, header, scale, {**meta, **window.record_fields()})
