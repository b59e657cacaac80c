"""Synthetic DICOM chest X-ray trees, for the tests, the benchmarks and the demo.

:func:`synth_dicom` writes ``out/{train,val,test}/{NORMAL,PNEUMONIA}/*.dcm`` with the drawings
of :func:`xraybatch.phantom.synth_image`, in the encodings hospital exports use: JPEG baseline
encapsulated (8-bit) and uncompressed 12- and 16-bit, MONOCHROME2 and MONOCHROME1, with and
without a window in the header, and patients with one to three images each, a few of whom
(``leaked``) are planted in two splits. A patient's images share the id only: each is
its own drawing, so none is a near-duplicate of another (:mod:`xraybatch.dups`).
:func:`to_dicom` builds one file's bytes.
Needs pydicom (``pip install 'xraybatch[dicom]'``).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from . import synth
from .phantom import KINDS, synth_image
from .readers import jpeg as jpeg_reader
from .readers.dicom import INSTALL_HINT, JPEG_BASELINE

#: Encodings of the synthetic files, used in turn.
ENCODINGS = ("jpeg", "mono2_12", "mono1_12", "mono2_16", "mono1_16")
_CR = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
_EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise ImportError(f"writing DICOM needs pydicom: {INSTALL_HINT}") from None
    return pydicom


def to_dicom(stored: np.ndarray | None = None, *, jpeg: bytes | None = None,
             photometric: str = "MONOCHROME2", bits_stored: int = 16, slope: float = 1.0,
             intercept: float = 0.0, window: tuple[float, float, str] | None = None,
             patient_id: str = "", study_uid: str = "", view_position: str = "PA",
             sex: str = "", age: str = "") -> bytes:
    """The bytes of a single-frame DICOM file holding ``stored`` (uint16) or a ``jpeg`` stream.

    A ``jpeg`` (8-bit baseline) is encapsulated as it is, transfer syntax 1.2.840.10008.1.2.4.50;
    ``stored`` values are written uncompressed (explicit VR little endian, 16 bits allocated).
    ``window`` is (center, width, VOILUTFunction).

    Examples
    --------
    >>> data = to_dicom(np.full((4, 6), 100, np.uint16), bits_stored=12, patient_id="P1")
    >>> data[128:132], len(data) > 4 * 6 * 2
    (b'DICM', True)
    """
    pydicom = _pydicom()
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = _CR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.ViewPosition, ds.PatientID = "CR", view_position, patient_id
    ds.PatientSex, ds.PatientAge = sex, age
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    if jpeg is not None:
        header = jpeg_reader.header(jpeg)
        ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
        ds.Rows, ds.Columns = header.height, header.width
        ds.SamplesPerPixel = header.channels
        ds.PhotometricInterpretation = "YBR_FULL_422" if header.channels == 3 else photometric
        if header.channels == 3:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.LossyImageCompression = "01"
        ds.PixelData = encapsulate([jpeg])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.file_meta.TransferSyntaxUID = _EXPLICIT_LE
        ds.Rows, ds.Columns = stored.shape
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
        ds.PixelData = np.ascontiguousarray(stored, "<u2").tobytes()
        ds["PixelData"].VR = "OW"
    if slope != 1 or intercept != 0:
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = window
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def encode(image: np.ndarray, encoding: str, with_window: bool, **meta: str) -> bytes:
    """One 8-bit image ``p`` as a DICOM file of ``encoding`` (see :data:`ENCODINGS`).

    12-bit files store ``16 p + 8`` with RescaleIntercept -1024, 16-bit files ``257 p``;
    MONOCHROME1 stores ``max - value``. A window, when given, covers the whole range, so the
    rendered image is ``p`` again (within one grey level).
    """
    if encoding == "jpeg":
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        window = (128.0, 256.0, "LINEAR") if with_window else None
        return to_dicom(jpeg=buf.tobytes(), window=window, **meta)
    photometric = "MONOCHROME1" if encoding.startswith("mono1") else "MONOCHROME2"
    p = image.astype(np.uint16)
    if encoding.endswith("_12"):
        stored, top, intercept, window = 16 * p + 8, 4095, -1024.0, (1024.0, 4096.0, "LINEAR")
    else:
        stored, top, intercept, window = 257 * p, 65535, 0.0, (32767.5, 65535.0, "LINEAR_EXACT")
    if photometric == "MONOCHROME1":
        stored = top - stored
    return to_dicom(stored, photometric=photometric, bits_stored=12 if top == 4095 else 16,
                    intercept=intercept, window=window if with_window else None, **meta)


def _patients(splits: list[str], rng: np.random.Generator, leaked: int) -> list[str]:
    """Patient ids for images in split order: 1-3 images each, within one split, then
    ``leaked`` images outside train moved to distinct train patients."""
    ids: list[str] = []
    count = left = 0
    for i, split in enumerate(splits):
        if i == 0 or split != splits[i - 1] or left == 0:
            count += 1
            left = int(rng.integers(1, 4))
        ids.append(f"PAT{count:04d}")
        left -= 1
    outside = [i for i, s in enumerate(splits) if s != "train"]
    train = sorted({p for p, s in zip(ids, splits, strict=True) if s == "train"})
    if leaked > min(len(outside), len(train)):
        raise ValueError(f"cannot plant {leaked} leaked patients in {len(splits)} images")
    for i, patient in zip(rng.choice(outside, leaked, replace=False),
                          rng.choice(train, leaked, replace=False), strict=True):
        ids[int(i)] = str(patient)
    return ids


def synth_dicom(out: str | os.PathLike, n: int = 60, seed: int = 0, *, scale: float = 0.25,
                overwrite: bool = False, leaked: int = 2) -> pd.DataFrame:
    """Write a synthetic DICOM tree of ``n`` files, ``leaked`` patients in two splits.

    Returns one row per file, sorted by path: ``path``, ``split``, ``kind``, ``patient_id``,
    ``encoding``, ``window`` (whether the header has one), ``bytes``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     df = synth_dicom(tmp, n=30, seed=1, scale=0.05, leaked=1)
    >>> sorted(df.encoding.unique()) == sorted(ENCODINGS), len(df)
    (True, 30)
    """
    if not scale > 0 or n < 0:
        raise ValueError(f"n must be >= 0 and scale > 0, got n={n}, scale={scale}")
    _pydicom()
    root = Path(out)
    synth._prepare(root, overwrite)
    rng = np.random.default_rng(seed)
    splits, kinds = [], []
    for split, size in zip(synth.SPLITS, synth._split_counts(n), strict=True):
        for kind, count in zip(KINDS, synth._kind_counts(size), strict=True):
            splits += [split] * count
            kinds += [kind] * count
    patients = _patients(splits, rng, leaked)
    rows = []
    for i, (split, kind, patient) in enumerate(zip(splits, kinds, patients, strict=True)):
        h, w = (max(synth._MIN_SIDE, round(side * scale))
                for side in synth._size(rng, kind, False))
        image = synth_image(rng, h, w, kind)
        encoding, with_window = ENCODINGS[i % len(ENCODINGS)], bool(i // len(ENCODINGS) % 2)
        data = encode(image, encoding, with_window, patient_id=patient,
                      sex="MF"[i % 2], age=f"{30 + i % 50:03d}Y",
                      view_position="PA" if kind == "NORMAL" else "AP")
        folder = "NORMAL" if kind == "NORMAL" else "PNEUMONIA"
        name = f"{patient}_{i:04d}" + ("" if kind == "NORMAL" else f"_{kind.lower()}")
        rel = f"{split}/{folder}/{name}.dcm"
        (root / rel).write_bytes(data)
        rows.append((rel, split, kind, patient, encoding, with_window, len(data)))
    columns = ["path", "split", "kind", "patient_id", "encoding", "window", "bytes"]
    return pd.DataFrame(rows, columns=columns).sort_values("path", ignore_index=True)
