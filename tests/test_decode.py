"""decode.py without Dask: headers, format sniffing, the DCT-scale rule, process() vs plain cv2."""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from xraybatch import decode
from xraybatch.decode import Header, ImageError

CV2_INTER = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
CV2_REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
               4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def textured(h: int, w: int, channels: int = 1, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    """A smooth gradient plus noise: compresses like a photo, not like a flat block."""
    rng = np.random.default_rng(seed)
    top = 65535 if dtype == np.uint16 else 255
    y, x = np.mgrid[0:h, 0:w]
    base = (x / max(w - 1, 1) * 0.6 + y / max(h - 1, 1) * 0.3) * top
    img = np.clip(base + rng.normal(0, top * 0.05, (h, w)), 0, top).astype(dtype)
    if channels == 1:
        return img
    planes = [img, np.roll(img, 7, axis=1), np.flipud(img), img][:channels]
    return np.dstack(planes)


def encode(ext: str, img: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def expected_scale(h: int, w: int, size: int) -> int:
    """The fast-decode rule, written independently of xraybatch."""
    for s in (8, 4, 2):
        if -(-h // s) >= size and -(-w // s) >= size:
            return s
    return 1


# --- read_header / sniff_format -------------------------------------------------------------


@pytest.mark.parametrize(("channels", "progressive"), [(1, False), (3, False), (1, True),
                                                       (3, True)])
def test_read_header_jpeg(channels: int, progressive: bool) -> None:
    data = encode(".jpg", textured(140, 400, channels),
                  [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert decode.read_header(data) == Header("jpeg", 140, 400, channels, 8, progressive)


@pytest.mark.parametrize(("dtype", "channels", "bitdepth"),
                         [(np.uint8, 1, 8), (np.uint16, 1, 16), (np.uint8, 3, 8),
                          (np.uint8, 4, 8), (np.uint16, 3, 16)])
def test_read_header_png(dtype, channels: int, bitdepth: int) -> None:
    data = encode(".png", textured(33, 71, channels, dtype=dtype))
    assert decode.read_header(data) == Header("png", 33, 71, channels, bitdepth, False)


def test_read_header_matches_full_decode_on_real_sample(real_sample: Path) -> None:
    files = sorted(real_sample.rglob("*.jpeg"))
    kinds = set()
    for f in files:
        data = f.read_bytes()
        header = decode.read_header(data)
        full = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        assert (header.height, header.width) == full.shape[:2], f
        assert header.channels == (1 if full.ndim == 2 else full.shape[2]), f
        if header.progressive:
            assert b"\xff\xc2" in data, f  # SOF2: progressive DCT frame
        kinds.add((header.channels, header.progressive))
    # The sample holds gray baseline, RGB and progressive JPEGs (see the data README).
    assert {(1, False), (3, False), (1, True)} <= kinds


@pytest.mark.parametrize(("data", "fmt"), [
    (b"\xff\xd8\xff\xe0rest", "jpeg"), (b"\x89PNG\r\n\x1a\nrest", "png"), (b"BMrest", "bmp"),
    (b"II*\x00rest", "tiff"), (b"MM\x00*rest", "tiff"), (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
    (b"P5\n3 3\n255\n", "pgm"), (b"P6\n3 3\n255\n", "ppm"),
])
def test_sniff_format(data: bytes, fmt: str) -> None:
    assert decode.sniff_format(data) == fmt


@pytest.mark.parametrize(("data", "code"), [(b"", "empty"), (b"GIF89a....", "not_image"),
                                            (b"RIFF\x00\x00\x00\x00WAVEfmt ", "not_image"),
                                            (b"\xff\xd8", "not_image")])
def test_sniff_format_rejects(data: bytes, code: str) -> None:
    with pytest.raises(ImageError) as info:
        decode.sniff_format(data)
    assert info.value.code == code


def test_sniff_ignores_file_name(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpeg"
    path.write_bytes(encode(".png", textured(20, 30)))
    assert decode.read_header(decode.read_bytes(path)).format == "png"


# --- dct_scale --------------------------------------------------------------------------------


def test_dct_scale_rule_exhaustive() -> None:
    sides = [1, 31, 32, 33, 63, 64, 65, 255, 256, 257, 511, 512, 513, 1023, 1024, 1025, 2047,
             2048, 2049, 2500, 2900]
    for size in (32, 64, 224, 256):
        for h in sides:
            for w in sides:
                assert decode.dct_scale(Header("jpeg", h, w), size) == expected_scale(h, w, size)


@pytest.mark.parametrize("fmt", ["png", "bmp", "tiff", "webp"])
def test_dct_scale_only_for_jpeg(fmt: str) -> None:
    assert decode.dct_scale(Header(fmt, 4000, 4000), 256) == 1


def test_reduced_decode_has_ceil_size() -> None:
    """The rule relies on libjpeg's ceil(side / s) output size: check that assumption."""
    data = encode(".jpg", textured(333, 517))
    for s, flag in CV2_REDUCED.items():
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
        assert img.shape == (math.ceil(333 / s), math.ceil(517 / s))


# --- process() vs plain cv2 ------------------------------------------------------------------

CASES = [  # (name, height, width, channels, progressive)
    ("big", 900, 1200, 1, False), ("rgb", 700, 530, 3, False), ("prog", 610, 1000, 1, True),
    ("small", 140, 400, 1, False), ("tiny", 32, 45, 3, False), ("odd", 257, 513, 1, False),
]


@pytest.fixture(scope="module")
def jpeg_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, (name, h, w, c, prog) in enumerate(CASES):
        path = root / f"{name}.jpeg"
        path.write_bytes(encode(".jpg", textured(h, w, c, seed=i),
                                [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE,
                                 int(prog)]))
        paths.append(path)
    # 8-bit PNG; 16-bit images are windowed, not cut by >> 8 (tests/test_render.py).
    png = root / "gray.png"
    png.write_bytes(encode(".png", textured(300, 280, 1, seed=9)))
    return [*paths, png]


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("interpolation", ["area", "linear"])
def test_process_exact_equals_cv2(jpeg_files: list[Path], size: int, interpolation: str) -> None:
    for path in jpeg_files:
        ref_full = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        ref = cv2.resize(ref_full, (size, size), interpolation=CV2_INTER[interpolation])
        out = decode.process(path.read_bytes(), size, interpolation, mode="exact")
        assert out.image.dtype == np.uint8 and out.image.shape == (size, size)
        np.testing.assert_array_equal(out.image, ref, err_msg=str(path))
        assert (out.height, out.width, out.scale) == (*ref_full.shape, 1)


@pytest.mark.parametrize("size", [64, 256])
def test_process_fast_equals_reduced_cv2(jpeg_files: list[Path], size: int) -> None:
    scales = set()
    for path in jpeg_files:
        h, w = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).shape
        s = expected_scale(h, w, size) if path.suffix == ".jpeg" else 1
        ref = cv2.resize(cv2.imread(str(path), CV2_REDUCED[s]), (size, size),
                         interpolation=cv2.INTER_AREA)
        out = decode.process(path.read_bytes(), size, "area", mode="fast")
        np.testing.assert_array_equal(out.image, ref, err_msg=str(path))
        assert (out.height, out.width, out.scale) == (h, w, s)
        scales.add(s)
    assert len(scales) >= 2  # the cases exercise reduced and full decodes


def test_process_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="decode mode"):
        decode.process(encode(".jpg", textured(40, 40)), 32, mode="quick")


def test_histogram_is_bincount() -> None:
    img = textured(50, 60)
    hist = decode.histogram(img)
    assert hist.shape == (256,) and hist.sum() == img.size
    np.testing.assert_array_equal(hist, np.bincount(img.ravel(), minlength=256))


# --- ImageError reason codes -----------------------------------------------------------------


def _code(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageError) as info:
        decode.process(data, 32, **kwargs)
    assert info.value.code in decode.REASONS
    assert str(info.value)  # a message for the manifest
    return info.value.code


def test_error_codes_from_content() -> None:
    jpeg = encode(".jpg", textured(300, 400))
    png = encode(".png", textured(300, 400))
    assert _code(b"") == "empty"
    assert _code(os.urandom(2000).replace(b"\xff", b"\x00")) == "not_image"
    assert _code(jpeg[: len(jpeg) // 2]) == "truncated"
    assert _code(png[: len(png) // 2]) == "truncated"
    assert _code(jpeg, max_pixels=300 * 400 - 1) == "too_large"
    assert _code(png, max_pixels=1000) == "too_large"
    # A segment length below 2 cannot be walked.
    assert _code(b"\xff\xd8\xff\xe0\x00\x01" + b"\x00" * 100) == "corrupt"
    # Scan data without any frame header.
    assert _code(b"\xff\xd8\xff\xda\x00\x02" + b"\x11" * 100 + b"\xff\xd9") == "corrupt"
    # A PNG whose IHDR declares a zero width.
    assert _code(png[:16] + b"\x00\x00\x00\x00" + png[20:]) == "corrupt"


def test_too_large_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decode(*args, **kwargs):
        raise AssertionError("a decompression bomb must be refused from its header")

    monkeypatch.setattr(decode.cv2, "imdecode", no_decode)
    # A tiny JPEG header declaring 30000 x 30000 pixels.
    data = encode(".jpg", textured(16, 16))
    sof = data.index(b"\xff\xc0")
    bomb = data[: sof + 5] + (30000).to_bytes(2, "big") * 2 + data[sof + 9:]
    assert _code(bomb) == "too_large"


def test_read_bytes_error_codes(tmp_path: Path) -> None:
    codes = {}
    loop = tmp_path / "loop.jpeg"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.jpeg"
    os.symlink(tmp_path / "nowhere.jpeg", dangling)
    folder = tmp_path / "folder.jpeg"
    folder.mkdir()
    for name, path in [("missing", tmp_path / "no.jpeg"), ("dangling", dangling),
                       ("loop", loop), ("folder", folder)]:
        with pytest.raises(ImageError) as info:
            decode.read_bytes(path)
        codes[name] = info.value.code
    assert codes == {"missing": "missing", "dangling": "missing", "loop": "symlink_loop",
                     "folder": "unreadable"}


# --- Exif orientation ------------------------------------------------------------------------


def with_exif_orientation(jpeg: bytes, orientation: int, order: str) -> bytes:
    """Insert an APP1 Exif block whose IFD0 holds one Orientation (0x0112) SHORT entry."""
    o = "<" if order == "II" else ">"
    entry = struct.pack(o + "HHI", 0x0112, 3, 1) + struct.pack(o + "H", orientation) + b"\0\0"
    tiff = order.encode() + struct.pack(o + "HI", 42, 8) + struct.pack(o + "H", 1) + entry \
        + struct.pack(o + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_sizes_follow_opencv(tmp_path: Path, orientation: int,
                                              order: str) -> None:
    """OpenCV rotates by the Exif orientation; the recorded source size must follow it."""
    path = tmp_path / "rotated.jpeg"
    path.write_bytes(with_exif_orientation(encode(".jpg", textured(300, 700)), orientation,
                                           order))
    full = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert full.shape == ((700, 300) if orientation >= 5 else (300, 700))  # the assumption
    for mode in ("exact", "fast"):
        out = decode.process(path.read_bytes(), 64, "area", mode)
        assert (out.height, out.width) == full.shape
        s = expected_scale(*full.shape, 64) if mode == "fast" else 1
        ref = cv2.resize(cv2.imread(str(path), CV2_REDUCED[s]), (64, 64),
                         interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(out.image, ref)
