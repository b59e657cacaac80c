"""JPEGs whose entropy data is damaged but which libjpeg still decodes (with a warning that
OpenCV hides) are stored with ``damaged`` set and the warning as their message."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import xraybatch
from xraybatch import decode
from xraybatch.phantom import synth_image


@pytest.fixture(scope="module")
def clean() -> bytes:
    image = synth_image(np.random.default_rng(11), 640, 560, "NORMAL")
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")


def _premature_end(data: bytes, fraction: float) -> bytes:
    """The entropy data cut at ``fraction`` and an EOI appended: libjpeg's 'Premature end of
    data segment', the rest of the image filled with grey 128."""
    start = _scan_start(data)
    cut = start + int((len(data) - start) * fraction)
    cut -= data[cut - 1] == 0xFF  # never leave half a stuffed byte pair
    return data[:cut] + b"\xff\xd9"


@pytest.mark.parametrize("mode", ["fast", "exact"])
@pytest.mark.parametrize("fraction", [0.3, 0.8, 0.995])
def test_premature_end_is_flagged(clean, mode, fraction) -> None:
    damaged = _premature_end(clean, fraction)
    full = cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert (full[-8:, -8:] == 128).all()  # the libjpeg behaviour the check relies on
    out = decode.process(damaged, 64, mode=mode)
    assert out.meta["damaged"] and "premature end" in out.meta["message"]


def test_stray_marker_in_the_scan_is_refused(clean) -> None:
    """libjpeg stops at a marker it does not know and, once the grey fill is done, fails with
    an error there (Pillow refuses the file); OpenCV returns the grey-filled image: refused
    as ``corrupt`` (issue 18: the reference decoder's verdict; it was stored as damaged)."""
    at = _scan_start(clean) + 3000
    garbled = clean[:at] + b"\xff\x12\x34\x56" + clean[at:]
    full = cv2.imdecode(np.frombuffer(garbled, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert full is not None and (full[-8:, -8:] == 128).all()
    with pytest.raises(decode.ImageError, match="marker 0x12") as err:
        decode.process(garbled, 64, mode="fast")
    assert err.value.code == "corrupt"


def test_clean_files_are_not_flagged(clean, synth_small) -> None:
    for mode in ("fast", "exact"):
        assert decode.process(clean, 64, mode=mode).meta == {}
    for path in sorted(synth_small.rglob("*.jpeg")):  # progressive and RGB ones included
        for mode in ("fast", "exact"):
            assert not decode.process(path.read_bytes(), 64, mode=mode).meta, path


def test_real_sample_has_no_false_alarm(real_sample) -> None:
    for path in sorted(real_sample.rglob("*.jpeg")):
        assert not decode.process(path.read_bytes(), 256, mode="fast").meta, path


def test_damaged_file_is_stored_and_flagged_in_the_store(clean, tmp_path) -> None:
    src = tmp_path / "src" / "A"
    src.mkdir(parents=True)
    (src / "ok.jpeg").write_bytes(clean)
    (src / "bad.jpeg").write_bytes(_premature_end(clean, 0.5))
    result = xraybatch.ingest(tmp_path / "src", tmp_path / "x.zarr", size=32, scheduler="sync")
    assert result.n_stored == 2 and not len(result.failures)
    manifest = xraybatch.open(str(tmp_path / "x.zarr")).manifest.set_index("path")
    assert manifest.damaged.to_dict() == {"A/bad.jpeg": True, "A/ok.jpeg": False}
    assert "damaged" in manifest.loc["A/bad.jpeg"].qc_flags
    assert manifest.loc["A/ok.jpeg"].message == ""
