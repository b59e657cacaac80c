"""render.py (stored values -> display grey levels) and 16-bit PNG/TIFF windowing, each step
against a hand-computed numpy reference (and pydicom's own VOI code as a second opinion)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from xraybatch import decode, render
from xraybatch.render import LUT, Rendering


def _round(y: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def test_modality_rescale_and_lut() -> None:
    stored = np.array([0, 1, 100, 4095])
    np.testing.assert_array_equal(render.modality(stored, Rendering(slope=2, intercept=-1024)),
                                  [-1024, -1022, -824, 7166])
    lut = LUT(first=1, bits=8, data=np.array([10, 20, 30]))
    # Below the first mapped value: first entry; above the last: last entry.
    np.testing.assert_array_equal(render.modality(stored, Rendering(modality_lut=lut)),
                                  [10, 10, 30, 30])


def test_voi_linear_by_hand() -> None:
    # PS3.3 C.11.2.1.2.1, c=40, w=400: x <= -160 -> 0; x > 239 -> 255; else linear.
    x = np.array([-500.0, -160.0, -159.0, 40.0, 239.0, 239.5, 1000.0])
    expected = [0.0, 0.0, ((-159 - 39.5) / 399 + 0.5) * 255, ((40 - 39.5) / 399 + 0.5) * 255,
                ((239 - 39.5) / 399 + 0.5) * 255, 255.0, 255.0]
    np.testing.assert_allclose(render.voi(x, 40, 400, "LINEAR"), expected)


def test_voi_linear_exact_and_sigmoid_by_hand() -> None:
    x = np.array([-200.0, -160.0, 0.0, 40.0, 240.0, 241.0])
    np.testing.assert_allclose(render.voi(x, 40, 400, "LINEAR_EXACT"),
                               [0, 0, (0 - 40) / 400 * 255 + 127.5, 127.5, 255, 255])
    np.testing.assert_allclose(render.voi(x, 40, 400, "SIGMOID"),
                               255 / (1 + np.exp(-4 * (x - 40) / 400)))


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_voi_agrees_with_pydicom(function: str) -> None:
    """pydicom's apply_windowing as an independent implementation of the same standard."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    stored = np.arange(0, 4096, 7, dtype=np.uint16).reshape(1, -1)
    ds = Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 12, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 300, 1500, function
    # pydicom's output range is that of the rescaled BitsStored (-1024..3071): scale to 0..255.
    theirs = (apply_windowing(stored.astype(np.float64) - 1024, ds) + 1024) / 4095 * 255
    ours = render.voi(stored - 1024.0, 300, 1500, function)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_voi_lut_sequence_and_monochrome1() -> None:
    lut = LUT(first=-10, bits=12, data=np.array([0, 1000, 4095]))
    stored = np.array([[0, 9, 10, 11, 99]], np.int16)
    r = Rendering(intercept=-20, voi_lut=lut)
    image, window = render.render(stored, r)
    # Modality values -20, -11, -10, -9, 79 -> table index 0, 0, 0, 1, 2.
    expected = _round(np.array([0, 0, 0, 1000, 4095]) * 255 / 4095)
    assert window.method == "voi_lut"
    np.testing.assert_array_equal(image[0], expected)
    inverted, _ = render.render(stored, Rendering(intercept=-20, voi_lut=lut, monochrome1=True))
    np.testing.assert_array_equal(inverted[0], _round(255 - np.array([0, 0, 0, 1000, 4095])
                                                      * 255 / 4095))


def test_header_window_wins_and_absent_window_falls_back() -> None:
    stored = np.array([[100, 200, 300, 400]], np.uint16)
    header = render.render(stored, Rendering(center=250, width=101, function="LINEAR_EXACT"))
    np.testing.assert_array_equal(header[0], _round(np.clip(
        (stored.astype(float) - 250) / 101 + 0.5, 0, 1) * 255))
    assert header[1] == render.Window("header", 250.0, 101.0, "LINEAR_EXACT")
    fallback, window = render.render(stored, Rendering())
    assert window.method == "minmax" and (window.center, window.width) == (250.0, 300.0)
    np.testing.assert_array_equal(fallback, _round((stored - 100) / 300 * 255))
    # 8-bit data without a modality transform or a window is shown as it is.
    eight = np.array([[0, 7, 255]], np.uint8)
    assert render.render(eight, Rendering())[0].tolist() == eight.tolist()
    # A header window with an invalid width (LINEAR needs >= 1) is not used.
    assert render.render(stored, Rendering(center=250, width=0.5))[1].method == "minmax"


def test_lookup_table_path_equals_direct_computation() -> None:
    rng = np.random.default_rng(3)
    stored = rng.integers(-2000, 3000, (50, 60)).astype(np.int16)
    r = Rendering(slope=0.5, intercept=12, center=100, width=900, function="SIGMOID",
                  monochrome1=True)
    image, _ = render.render(stored, r)
    direct = _round(255 - 255 / (1 + np.exp(-4 * (stored * 0.5 + 12 - 100) / 900)))
    np.testing.assert_array_equal(image, direct)
    # A float image takes the direct path with the same math.
    as_float, _ = render.render(stored.astype(np.float32), r)
    np.testing.assert_array_equal(as_float, direct)


# --- 16-bit PNG and TIFF through decode.process, each --window choice --------------------------


def _deep_image() -> np.ndarray:
    """12-bit content in a 16-bit container with a few hot pixels (where percentiles matter)."""
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:300, 0:280]
    image = (600 + 2400 * x / 279 + 500 * y / 299 + rng.normal(0, 60, (300, 280)))
    image = np.clip(image, 0, 4095).astype(np.uint16)
    image[rng.integers(0, 300, 40), rng.integers(0, 280, 40)] = 65535
    return image


def _reference(image: np.ndarray, window: str) -> np.ndarray:
    if window == "percentile":
        low, high = np.percentile(image, [1, 99])
    else:  # header: a PNG has no window, so min-max
        low, high = float(image.min()), float(image.max())
    y = np.clip((image.astype(np.float64) - low) / (high - low), 0, 1) * 255
    return _round(y)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("window", ["header", "minmax", "percentile"])
def test_16bit_images_match_a_numpy_window(suffix: str, window: str) -> None:
    image = _deep_image()
    ok, buf = cv2.imencode(suffix, image)
    out = decode.process(buf.tobytes(), 64, "area", "exact", window=window)
    full = _reference(image, window)
    np.testing.assert_array_equal(out.image, cv2.resize(full, (64, 64),
                                                        interpolation=cv2.INTER_AREA))
    assert out.header.bitdepth == 16
    assert out.meta["window_used"] == ("minmax" if window == "header" else window)
    if window == "percentile":  # the hot pixels do not decide the contrast
        assert out.meta["voi_center"] + out.meta["voi_width"] / 2 < 4096


def test_8bit_png_ignores_the_window_option() -> None:
    image = np.random.default_rng(1).integers(30, 200, (90, 70)).astype(np.uint8)
    data = cv2.imencode(".png", image)[1].tobytes()
    for window in ("header", "minmax", "percentile"):
        out = decode.process(data, 32, "area", "exact", window=window)
        np.testing.assert_array_equal(out.image, cv2.resize(image, (32, 32),
                                                            interpolation=cv2.INTER_AREA))
        assert out.meta == {}


@pytest.mark.parametrize("suffix", [".tif", ".pgm"])
def test_8bit_tiff_and_pgm_are_decoded_as_cv2_imread(suffix: str) -> None:
    """These formats are decoded at their own depth; at 8 bits that is imread's result."""
    rng = np.random.default_rng(2)
    shapes = [(60, 50)] if suffix == ".pgm" else [(60, 50), (60, 50, 3)]
    for shape in shapes:
        data = cv2.imencode(suffix, rng.integers(0, 256, shape, dtype=np.uint8))[1].tobytes()
        reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        out = decode.process(data, 32, "area", "exact", window="percentile")
        np.testing.assert_array_equal(out.image, cv2.resize(reference, (32, 32),
                                                            interpolation=cv2.INTER_AREA))
        assert out.header.bitdepth == 8 and out.meta == {}
