"""DICOM input: rendering to the JPEG's own pixels, the JPEG-baseline fast path, metadata,
and a reason code for every kind of bad DICOM while the batch goes on."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import zarr
from fuzzing import legacy_dicom

import xraybatch
from xraybatch import decode
from xraybatch.phantom import synth_image
from xraybatch.synth_dicom import to_dicom

SIZE = 128
REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
           4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


@pytest.fixture(scope="module")
def jpeg_bytes() -> bytes:
    """A baseline JPEG big enough for a DCT-reduced fast decode at SIZE (600 / 4 >= 128)."""
    image = synth_image(np.random.default_rng(4), 700, 600, "BACTERIA")
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _exact_pixels(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)


def _with(data: bytes, **changes) -> bytes:
    """A DICOM file with some elements changed (None deletes one)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return _saved(ds)


def _ingest(src: Path, out: Path, **kwargs) -> tuple[np.ndarray, object]:
    xraybatch.ingest(src, out, size=SIZE, scheduler="sync", **kwargs)
    ds = xraybatch.open(str(out))
    return zarr.open_group(str(out), mode="r")["images"][:], ds.manifest.set_index("path")


def test_12bit_monochrome1_and_2_ingest_to_the_jpeg_pixels(jpeg_bytes, tmp_path) -> None:
    p = _exact_pixels(jpeg_bytes).astype(np.uint16)
    stored = 16 * p + 8
    meta = dict(bits_stored=12, intercept=-1024.0, window=(1024.0, 4096.0, "LINEAR"),
                patient_id="P7", sex="F", age="061Y", view_position="AP",
                study_uid="1.2.3.4")
    src = tmp_path / "src" / "A"
    src.mkdir(parents=True)
    (src / "a.jpeg").write_bytes(jpeg_bytes)
    (src / "m2.dcm").write_bytes(to_dicom(stored, photometric="MONOCHROME2", **meta))
    (src / "m1.dcm").write_bytes(to_dicom(4095 - stored, photometric="MONOCHROME1", **meta))
    images, manifest = _ingest(tmp_path / "src", tmp_path / "x.zarr", decode_mode="exact")
    row = {name: manifest.index.get_loc(f"A/{name}") for name in ("a.jpeg", "m2.dcm", "m1.dcm")}
    jpeg_image = images[row["a.jpeg"]].astype(int)
    assert np.abs(images[row["m2.dcm"]].astype(int) - jpeg_image).max() <= 1
    np.testing.assert_array_equal(images[row["m1.dcm"]], images[row["m2.dcm"]])
    # 16 p + 8 - 1024 in a window of (1024, 4096): y = (16 p + 8) * 255 / 4095 rounds to p.
    full = decode.process((src / "m1.dcm").read_bytes(), SIZE, mode="exact")
    assert full.image.shape == (SIZE, SIZE)
    facts = manifest.loc["A/m1.dcm"]
    assert (facts.photometric, facts.bits_stored, facts.window_center, facts.window_width,
            facts.window_used, facts.voi_function, facts.rescale_intercept) == (
        "MONOCHROME1", 12, 1024.0, 4096.0, "header", "LINEAR", -1024.0)
    assert (facts.patient_id, facts.dicom_patient_id, facts.sex, facts.age, facts.view_position,
            facts.study_uid, facts.orig_format) == ("P7", "P7", "F", "061Y", "AP", "1.2.3.4",
                                                    "dicom")
    assert manifest.loc["A/a.jpeg"].photometric == ""  # empty where a source has none


def test_full_size_render_is_the_jpeg_pixels_exactly(jpeg_bytes) -> None:
    """Per pixel (no resize): (16 p + 8) * 255 / 4095 = p - 15 p / 4095 + 0.498 rounds to p."""
    p = _exact_pixels(jpeg_bytes)
    data = to_dicom(16 * p.astype(np.uint16) + 8, bits_stored=12, intercept=-1024.0,
                    window=(1024.0, 4096.0, "LINEAR"))
    image = decode.decode_gray(data, decode.read_header(data))
    np.testing.assert_array_equal(image, p)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_jpeg_encapsulated_dicom_gives_the_jpeg_file_pixels(jpeg_bytes, mode) -> None:
    dicom = to_dicom(jpeg=jpeg_bytes)
    from_dicom = decode.process(dicom, SIZE, "area", mode)
    from_jpeg = decode.process(jpeg_bytes, SIZE, "area", mode)
    scale = 4 if mode == "fast" else 1
    reference = cv2.resize(cv2.imdecode(np.frombuffer(jpeg_bytes, np.uint8), REDUCED[scale]),
                           (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(from_dicom.image, reference)
    np.testing.assert_array_equal(from_jpeg.image, reference)
    assert from_dicom.scale == from_jpeg.scale == scale
    assert from_dicom.meta["window_used"] == "identity"


def test_real_jpegs_inside_dicom_are_the_same_pixels(real_sample) -> None:
    files = sorted(real_sample.rglob("*.jpeg"))[::25]
    for path in files:
        data = path.read_bytes()
        header = decode.read_header(data)
        if header.progressive or header.channels != 1:  # DICOM .50 is baseline gray or YBR
            continue
        for mode in ("fast", "exact"):
            ours = decode.process(to_dicom(jpeg=data), 256, mode=mode)
            np.testing.assert_array_equal(ours.image, decode.process(data, 256, mode=mode).image,
                                          err_msg=str(path))


@pytest.mark.parametrize("syntax", [pydicom.uid.JPEG2000Lossless, pydicom.uid.RLELossless])
def test_compressed_syntaxes_decode_through_pydicom(syntax) -> None:
    stored = (np.arange(90 * 70).reshape(90, 70) * 7 % 4096).astype(np.uint16)
    native = to_dicom(stored, bits_stored=12, window=(2000.0, 3000.0, "SIGMOID"))
    ds = pydicom.dcmread(io.BytesIO(native))
    ds.compress(syntax)
    out = decode.process(_saved(ds), 32, mode="exact")
    np.testing.assert_array_equal(out.image, decode.process(native, 32, mode="exact").image)
    expected = np.floor(255 / (1 + np.exp(-4 * (stored - 2000.0) / 3000)) + 0.5)
    np.testing.assert_array_equal(
        decode.decode_gray(native, decode.read_header(native)), expected.astype(np.uint8))


def test_lut_sequences_and_multi_valued_windows() -> None:
    from pydicom.dataset import Dataset

    stored = np.array([[99, 100, 101, 102, 200]], np.uint16)
    lut = Dataset()
    lut.LUTDescriptor = [3, 100, 12]
    lut.add_new("LUTData", "US", [0, 2000, 4095])
    ds = pydicom.dcmread(io.BytesIO(to_dicom(stored, bits_stored=12)))
    ds.VOILUTSequence = [lut]
    out = _saved(ds)
    # Values below the first mapped one take the first entry, above the last the last one.
    expected = np.floor(np.array([0, 0, 2000, 4095, 4095]) * 255 / 4095 + 0.5)
    np.testing.assert_array_equal(decode.decode_gray(out, decode.read_header(out))[0], expected)
    # A header window comes first (its first value when there are several).
    ds.WindowCenter, ds.WindowWidth = [150, 40], [101, 400]
    ds.VOILUTFunction = "LINEAR_EXACT"
    out = _saved(ds)
    expected = np.floor(np.clip((stored[0] - 150.0) / 101 + 0.5, 0, 1) * 255 + 0.5)
    np.testing.assert_array_equal(decode.decode_gray(out, decode.read_header(out))[0], expected)
    # A Modality LUT Sequence replaces the rescale.
    del ds.VOILUTSequence, ds.WindowCenter, ds.WindowWidth
    modality = Dataset()
    modality.LUTDescriptor = [2, 101, 16]
    modality.add_new("LUTData", "OW", np.array([10, 30], "<u2").tobytes())
    ds.ModalityLUTSequence = [modality]
    ds.RescaleSlope, ds.RescaleIntercept = 5, 1000
    out = decode.process(_saved(ds), 5, mode="exact", window="minmax")
    assert (out.meta["voi_center"], out.meta["voi_width"]) == (20.0, 20.0)


def _saved(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --- bad DICOM -------------------------------------------------------------------------------


def _code(data: bytes) -> tuple[str, str]:
    with pytest.raises(decode.ImageError) as info:
        decode.process(data, 32)
    assert info.value.code in decode.REASONS
    return info.value.code, str(info.value)


def _native(**kwargs) -> bytes:
    return to_dicom(np.full((40, 30), 1000, np.uint16), bits_stored=12, **kwargs)


def test_bad_dicom_reason_codes(jpeg_bytes) -> None:
    native = _native()
    assert _code(_with(native, PixelData=None, Rows=None, Columns=None))[0] == "no_pixels"
    # Cut inside the pixel data: native and encapsulated.
    assert _code(native[:-200])[0] == "truncated"
    encapsulated = to_dicom(jpeg=jpeg_bytes)
    assert _code(encapsulated[:len(encapsulated) // 2])[0] == "truncated"
    two = to_dicom(np.zeros((80, 30), np.uint16), bits_stored=12)
    assert _code(_with(two, Rows=40, NumberOfFrames=2)) == (
        "multi_frame", "multi-frame DICOM (2 frames): only single-frame images are stored")
    # A transfer syntax that no installed decoder handles: the message says what to install.
    code, message = _code(_retagged(encapsulated, pydicom.uid.JPEG2000MC))
    assert code == "no_decoder" and "pip install 'xraybatch[dicom]'" in message
    assert _code(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage")[0] in {"corrupt",
                                                                            "truncated"}


def _retagged(data: bytes, syntax: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = syntax
    return _saved(ds)


def test_colour_dicom_is_converted_and_flagged(jpeg_bytes) -> None:
    rgb = np.dstack([np.full((20, 24), v, np.uint8) for v in (200, 100, 30)])
    ds = pydicom.dcmread(io.BytesIO(_native()))
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.Rows, ds.Columns = 7, 20, 24
    ds.PixelData = rgb.tobytes()
    out = decode.process(_saved(ds), 16, mode="exact")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    np.testing.assert_array_equal(out.image, cv2.resize(gray, (16, 16),
                                                        interpolation=cv2.INTER_AREA))
    assert out.header.channels == 3 and "converted to grayscale" in out.meta["message"]
    # A colour JPEG inside DICOM (YBR_FULL_422): the luma channel, as for the JPEG file.
    colour = cv2.imencode(".jpg", cv2.cvtColor(_exact_pixels(jpeg_bytes), cv2.COLOR_GRAY2BGR)
                          )[1].tobytes()
    out = decode.process(to_dicom(jpeg=colour), SIZE, mode="exact")
    np.testing.assert_array_equal(out.image, decode.process(colour, SIZE, mode="exact").image)
    assert out.meta["photometric"] == "YBR_FULL_422" and out.header.channels == 3


def test_without_pydicom_dicom_files_get_an_install_hint_and_the_batch_goes_on(
        jpeg_bytes, tmp_path, monkeypatch) -> None:
    src = tmp_path / "src" / "A"
    src.mkdir(parents=True)
    (src / "a.jpeg").write_bytes(jpeg_bytes)
    (src / "b.dcm").write_bytes(_native())
    (src / "noext").write_bytes(_native())  # found by its preamble
    (src / "fake.dcm").write_bytes(b"not a dicom file at all")
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    result = xraybatch.ingest(tmp_path / "src", tmp_path / "x.zarr", size=32, scheduler="sync")
    failures = dict(zip(result.failures.path, result.failures.status, strict=True))
    assert failures == {"A/b.dcm": "no_decoder", "A/noext": "no_decoder",
                        "A/fake.dcm": "not_image"}
    assert result.n_stored == 1
    message = result.failures.set_index("path").loc["A/b.dcm", "message"]
    assert message == "DICOM needs pydicom: pip install 'xraybatch[dicom]'"


# --- issue 18: a cut JPEG stream inside DICOM, legacy files without the preamble -------------


def _encapsulated(stream: bytes, fragments: int = 1) -> bytes:
    """A JPEG-baseline DICOM as an exporter writes it around whatever stream it was given
    (pydicom's ``encapsulate``; ``to_dicom`` itself refuses a cut stream)."""
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(io.BytesIO(to_dicom(jpeg=JPEG_FOR_CUTS)))
    ds.PixelData = encapsulate([stream], fragments_per_frame=fragments)
    return _saved(ds)


JPEG_FOR_CUTS = cv2.imencode(".jpg", synth_image(np.random.default_rng(5), 300, 260, "VIRUS"),
                             [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


@pytest.mark.parametrize("mode", ["fast", "exact"])
@pytest.mark.parametrize("fraction", [0.3, 0.75, 0.999])
@pytest.mark.parametrize("fragments", [1, 3])
def test_cut_jpeg_stream_in_dicom_follows_the_jpeg_policy(mode, fraction, fragments) -> None:
    """The same cut stream as a ``.jpeg`` file and inside a DICOM: refused as ``truncated``,
    never stored as valid + damaged (one policy: readers/jpeg.py ``_check_scan``)."""
    cut = JPEG_FOR_CUTS[:int(len(JPEG_FOR_CUTS) * fraction)]
    for data in (cut, _encapsulated(cut, fragments)):
        with pytest.raises(decode.ImageError) as err:
            decode.process(data, 64, mode=mode)
        assert err.value.code == "truncated", str(err.value)
    # A premature end whose stream still has its EOI is damaged in both (the .jpeg policy).
    patched = cut + b"\xff\xd9"
    as_jpeg = decode.process(patched, 64, mode=mode)
    as_dicom = decode.process(_encapsulated(patched, fragments), 64, mode=mode)
    damaged = bool(as_jpeg.meta.get("damaged"))  # a cut near the end may leave no grey fill
    assert bool(as_dicom.meta.get("damaged")) == damaged == (fraction < 0.9)
    np.testing.assert_array_equal(as_dicom.image, as_jpeg.image)


def test_cut_jpeg_stream_followed_by_another_fragment() -> None:
    """Issue 18's case: the cut stream, then the whole image again in a second fragment of the
    same frame. The frame then holds an end-of-image marker (the second image's), and main
    stored it as valid + damaged; as a ``.jpeg`` the same bytes were stored too."""
    cut = JPEG_FOR_CUTS[:len(JPEG_FOR_CUTS) * 6 // 10]
    cut += b"\0" * (len(cut) % 2)
    ds = pydicom.dcmread(io.BytesIO(to_dicom(jpeg=JPEG_FOR_CUTS)))
    ds.PixelData = b"".join(b"\xfe\xff\x00\xe0" + len(p).to_bytes(4, "little") + p
                            for p in (b"", cut, JPEG_FOR_CUTS))  # empty offset table first
    for data in (_saved(ds), cut + JPEG_FOR_CUTS):
        for mode in ("fast", "exact"):
            with pytest.raises(decode.ImageError, match="another image starts") as err:
                decode.process(data, 64, mode=mode)
            assert err.value.code == "truncated"


def _no_preamble(data: bytes) -> bytes:
    """A Part 10 file whose writer left out the preamble and DICM (file meta kept)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.preamble = None
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)  # pydicom's write_like_original
    return buf.getvalue()


@pytest.mark.parametrize("make", [legacy_dicom, lambda d: legacy_dicom(d, implicit=False),
                                  _no_preamble],
                         ids=["implicit", "explicit", "part10_without_preamble"])
def test_legacy_dicom_without_preamble_is_read(jpeg_bytes, make) -> None:
    stored = (np.arange(60 * 50).reshape(60, 50) * 3 % 4096).astype(np.uint16)
    part10 = to_dicom(stored, bits_stored=12, window=(2000.0, 3000.0, "LINEAR"),
                      patient_id="P9")
    data = make(part10)
    assert data[128:132] != b"DICM" and data[:2] in (b"\x08\x00", b"\x02\x00")
    ours = decode.process(data, 32, mode="exact")
    np.testing.assert_array_equal(ours.image, decode.process(part10, 32, mode="exact").image)
    assert ours.header.format == "dicom" and ours.meta["dicom_patient_id"] == "P9"
    # The reference: pydicom reads it when told to (force=True), the same stored values.
    ref = pydicom.dcmread(io.BytesIO(data), force=True)
    assert ref.PatientID == "P9" and ref.Rows == 60


def test_acr_nema_without_photometric_is_monochrome2() -> None:
    """ACR-NEMA 1.0 images may lack SamplesPerPixel and PhotometricInterpretation."""
    stored = (np.arange(30 * 20).reshape(30, 20) * 7 % 4096).astype(np.uint16)
    part10 = to_dicom(stored, bits_stored=12)
    ds = pydicom.dcmread(io.BytesIO(legacy_dicom(part10)), force=True)
    del ds.PhotometricInterpretation, ds.SamplesPerPixel
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    np.testing.assert_array_equal(decode.process(buf.getvalue(), 16, mode="exact").image,
                                  decode.process(part10, 16, mode="exact").image)


def test_legacy_recognition_is_by_content() -> None:
    from xraybatch.readers import dicom

    native = _native()
    assert dicom.sniff(legacy_dicom(native)) and dicom.sniff(_no_preamble(native))
    # Not DICOM: random bytes, text, another image, a group-0008 start without a second
    # element, tags out of order, an odd length.
    rng = np.random.default_rng(0)
    for data in [rng.bytes(4000), b"08,00 hello\n" * 20, b"\xff\xd8\xff" + rng.bytes(99),
                 b"\x08\x00\x05\x00\x0a\x00\x00\x00ISO_IR 100",
                 b"\x08\x00\x16\x00\x02\x00\x00\x00ab\x08\x00\x05\x00\x02\x00\x00\x00cd",
                 b"\x08\x00\x05\x00\x03\x00\x00\x00abc\x08\x00\x16\x00\x02\x00\x00\x00ab"]:
        assert not dicom.sniff(data), data[:20]


def test_legacy_dicom_is_scanned_and_ingested(jpeg_bytes, tmp_path) -> None:
    src = tmp_path / "src" / "A"
    src.mkdir(parents=True)
    native = _native(patient_id="P3")
    (src / "legacy.dcm").write_bytes(legacy_dicom(native))
    (src / "IM00001").write_bytes(legacy_dicom(native))  # no extension, as archives name them
    (src / "1.2.840.113619.2.55.3.7").write_bytes(_no_preamble(native))
    (src / "notes").write_bytes(b"\x08\x00 not a DICOM file, no extension\n")
    (src / "part10.dcm").write_bytes(native)
    images, manifest = _ingest(tmp_path / "src", tmp_path / "x.zarr", decode_mode="exact")
    assert manifest.status.to_dict() == {f"A/{n}": "ok" for n in (
        "1.2.840.113619.2.55.3.7", "IM00001", "legacy.dcm", "part10.dcm")}
    rows = [manifest.index.get_loc(p) for p in manifest.index]
    for row in rows:
        np.testing.assert_array_equal(images[row], images[manifest.index.get_loc("A/part10.dcm")])
    assert set(manifest.dicom_patient_id) == {"P3"} and set(manifest.orig_format) == {"dicom"}
