"""geometry.py (--fit): stretch is today's resize bit for bit; pad and crop against numpy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch import decode, geometry


def _image(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(1, 256, (h, w)).astype(np.uint8)


@pytest.mark.parametrize("interpolation", ["area", "linear"])
def test_stretch_is_the_plain_resize(interpolation) -> None:
    image = _image(300, 410)
    flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}[interpolation]
    ref = cv2.resize(image, (64, 64), interpolation=flag)
    np.testing.assert_array_equal(geometry.fit(image, 64, "stretch", interpolation), ref)
    np.testing.assert_array_equal(decode.resize(image, 64, interpolation), ref)


@pytest.mark.parametrize("shape", [(300, 410), (410, 300), (64, 64), (10, 200)])
def test_pad_keeps_the_aspect_ratio_centred_on_black(shape) -> None:
    h, w = shape
    image = _image(h, w)
    out = geometry.fit(image, 64, "pad")
    nh, nw = max(1, round(h * 64 / max(h, w))), max(1, round(w * 64 / max(h, w)))
    ref = np.zeros((64, 64), np.uint8)
    top, left = (64 - nh) // 2, (64 - nw) // 2
    ref[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("shape", [(300, 410), (411, 300), (64, 64)])
def test_crop_keeps_the_centre_square(shape) -> None:
    h, w = shape
    image = _image(h, w)
    side = min(h, w)
    centre = image[(h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
    np.testing.assert_array_equal(geometry.fit(image, 64, "crop"),
                                  cv2.resize(centre, (64, 64), interpolation=cv2.INTER_AREA))


def test_fit_is_recorded_in_the_store(synth_small, tmp_path) -> None:
    out = tmp_path / "x.zarr"
    xraybatch.ingest(synth_small, out, size=32, scheduler="sync", fit="pad", window="percentile",
                     decode_mode="exact")
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert (attrs["fit"], attrs["pad_value"], attrs["window"]) == ("pad", 0, "percentile")
    ds = xraybatch.open(str(out))
    path = synth_small / ds.manifest.path[0]
    full = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(ds.read_images(slice(0, 1))[0], geometry.pad(full, 32))
    with pytest.raises(ValueError, match="unknown window"):
        xraybatch.ingest(synth_small, tmp_path / "y.zarr", fit="squash")
