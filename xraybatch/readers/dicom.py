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

import io
import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from .. import render
from . import jpeg
from .base import Header, ImageError, Options, Pixels

INSTALL_HINT = "pip install 'xraybatch[dicom]'"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def sniff(data: bytes) -> bool:
    """The DICOM Part 10 preamble: 128 bytes, then ``DICM`` (file names need no extension)."""
    return data[128:132] == b"DICM"


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImageError("no_decoder", f"DICOM needs pydicom: {INSTALL_HINT}") from None
    return pydicom


def header(data: bytes) -> Header:
    """Parse the whole data set once (pixel data stays bytes); refuse what cannot be stored."""
    pydicom = _pydicom()
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
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
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError("multi_frame", f"multi-frame DICOM ({frames} frames): only "
                         "single-frame images are stored")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsStored)
    except (AttributeError, TypeError, ValueError) as e:
        raise ImageError("corrupt", f"DICOM image description is incomplete: {e}") from None
    if rows == 0 or cols == 0:
        raise ImageError("corrupt", f"DICOM declares {cols}x{rows} pixels")
    return Header("dicom", rows, cols, samples, bits, source=ds)


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
    return render.Rendering(
        slope=_first(ds.get("RescaleSlope")) or 1.0,
        intercept=_first(ds.get("RescaleIntercept")) or 0.0,
        modality_lut=modality_lut,
        center=_first(ds.get("WindowCenter")), width=_first(ds.get("WindowWidth")),
        function=function if function in render.VOI_FUNCTIONS else "LINEAR",
        voi_lut=voi_lut,
        monochrome1=str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1")


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


def decode(data: bytes, header: Header, options: Options) -> Pixels:
    ds = header.source
    gray = str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME")
    r = rendering(ds) if gray else render.Rendering()
    meta = metadata(ds, r)
    scale = 1
    if ds.file_meta.get("TransferSyntaxUID", "") == JPEG_BASELINE:
        frame = _jpeg_frame(ds)
        pixels = jpeg.decode(frame, jpeg.header(frame), options)
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
