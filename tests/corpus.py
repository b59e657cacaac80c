"""A corpus of bad and awkward image files, and helpers shared by the issue-4 tests.

:func:`make_corpus` writes a folder-labelled tree (``a/`` and ``b/``) mixing good JPEGs
with every kind of file a real dataset throws at an ingest: empty, truncated, corrupt,
disguised, exotic (16-bit, RGBA, CMYK), tiny, decompression bombs, unreadable, symlink
loops, dangling links, non-ASCII names, duplicates. Each file is described by a
:class:`Case` saying what the ingest must do with it. Every file's bytes depend only on its
own seed, so ``make_corpus(root, bad=False)`` writes the clean subset byte for byte.

The helpers at the end (store comparison, bounded waits, free ports) are used by
test_cluster, test_resume, test_badinput and test_s3.
"""

from __future__ import annotations

import os
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import zarr

BOMB_SIDE = 60_000


@dataclass(frozen=True)
class Case:
    """One corpus file and what the ingest must make of it."""

    rel: str  # path below the corpus root, CLASS/name
    kind: str  # what is special about it
    expect: str  # "ok" (stored) or the reason code it must be reported with
    flags: tuple[str, ...] = ()  # QC flags a stored file must carry
    fmt: str = "jpeg"  # format named by the magic bytes (stored files)
    channels: int = 1
    bitdepth: int = 8


def picture(seed: int, height: int, width: int) -> np.ndarray:
    """A deterministic smooth-plus-grain grayscale picture (uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 60 + 120 * np.sin(x / (width / 3.1)) ** 2 + 50 * y / height
    grain = cv2.GaussianBlur(rng.normal(0, 25, (height, width)), (0, 0), 1.5)
    return np.clip(base + grain, 0, 255).astype(np.uint8)


def _encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok, ext
    return buf.tobytes()


def _jpeg(seed: int, height: int = 150, width: int = 200, *params: int) -> bytes:
    return _encode(".jpg", picture(seed, height, width), cv2.IMWRITE_JPEG_QUALITY, 90, *params)


def _good(seed: int) -> bytes:
    return _jpeg(seed, 150 + 10 * (seed % 4), 200)


def _cmyk_jpeg(seed: int) -> bytes:
    from io import BytesIO

    from PIL import Image  # Pillow comes with matplotlib (test extra); OpenCV cannot write CMYK

    planes = np.stack([picture(seed + i, 140, 180) for i in range(4)], axis=-1)
    out = BytesIO()
    Image.frombytes("CMYK", (180, 140), planes.tobytes()).save(out, "JPEG", quality=90)
    return out.getvalue()


def _jpeg_bomb(seed: int) -> bytes:
    """A small valid JPEG whose frame header is patched to declare 60000 x 60000 pixels."""
    data = bytearray(_jpeg(seed, 64, 64))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = BOMB_SIDE.to_bytes(2, "big") * 2
    return bytes(data)


def _png_bomb(seed: int) -> bytes:
    """A small valid PNG whose IHDR declares 60000 x 60000 (with a correct CRC)."""
    data = bytearray(_encode(".png", picture(seed, 64, 64)))
    data[16:24] = BOMB_SIDE.to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _png_bad_idat(seed: int) -> bytes:
    """A PNG whose compressed pixel data is overwritten (IHDR and IEND intact)."""
    data = bytearray(_encode(".png", picture(seed, 120, 160)))
    idat = data.find(b"IDAT") + 4
    data[idat + 20:idat + 220] = np.random.default_rng(seed).bytes(200)
    return bytes(data)


def _bytes_cases() -> list[tuple[Case, Callable[[], bytes]]]:
    """Cases whose file is plain bytes, with the function that makes them."""
    gray16 = (picture(31, 130, 170).astype(np.uint16) * 257
              + np.random.default_rng(31).integers(0, 256, (130, 170)).astype(np.uint16))
    bgra = np.dstack([picture(41 + i, 120, 160) for i in range(4)])
    bgr = np.dstack([picture(51 + i, 150, 190) for i in range(3)])
    good = [(Case(f"{c}/good_{i:02d}.jpeg", "good", "ok"), lambda s=seed: _good(s))
            for c, base in (("a", 0), ("b", 10)) for i, seed in enumerate(range(base, base + 4))]
    ugly: list[tuple[Case, Callable[[], bytes]]] = [
        (Case("a/progressive.jpeg", "progressive JPEG", "ok"),
         lambda: _jpeg(20, 150, 200, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)),
        (Case("a/png_named.jpeg", "a PNG named .jpeg", "ok", ("format_mismatch",), "png"),
         lambda: _encode(".png", picture(21, 140, 180))),
        (Case("a/gray8.png", "8-bit PNG", "ok", (), "png"),
         lambda: _encode(".png", picture(22, 110, 150))),
        (Case("a/gray16.png", "16-bit PNG", "ok", ("high_bitdepth",), "png", 1, 16),
         lambda: _encode(".png", gray16)),
        (Case("a/rgb.jpeg", "RGB JPEG", "ok", ("rgb",), "jpeg", 3),
         lambda: _encode(".jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 90)),
        (Case("a/rgba.png", "RGBA PNG", "ok", ("rgb",), "png", 4),
         lambda: _encode(".png", bgra)),
        (Case("a/cmyk.jpeg", "CMYK JPEG", "ok", ("rgb",), "jpeg", 4), lambda: _cmyk_jpeg(61)),
        (Case("a/small.jpeg", "smaller than the target size", "ok", ("small",)),
         lambda: _jpeg(23, 24, 40)),
        (Case("a/gray.bmp", "BMP", "ok", (), "bmp"),
         lambda: _encode(".bmp", picture(24, 100, 140))),
        (Case("b/chest x-ray ü 日本 (1).jpeg", "spaces and non-ASCII in the name", "ok"),
         lambda: _jpeg(25)),
        (Case("b/copy of good_00.jpeg", "byte-identical duplicate", "ok", ("duplicate",)),
         lambda: _good(10)),
    ]
    bad: list[tuple[Case, Callable[[], bytes]]] = [
        (Case("a/empty.jpeg", "zero-byte file", "empty"), lambda: b""),
        (Case("a/truncated.jpeg", "truncated JPEG", "truncated"),
         lambda: (d := _jpeg(26))[:len(d) * 6 // 10]),
        (Case("a/truncated_progressive.jpeg", "truncated progressive JPEG", "truncated"),
         lambda: (d := _jpeg(27, 150, 200, cv2.IMWRITE_JPEG_PROGRESSIVE, 1))[:len(d) // 2]),
        (Case("a/corrupt_header.jpeg", "corrupt JPEG header", "corrupt"),  # no marker after APP0
         lambda: (d := _jpeg(28))[:20] + b"\x00" + d[21:]),
        (Case("a/random.jpeg", "random bytes named .jpeg", "not_image"),
         lambda: np.random.default_rng(29).bytes(5000)),
        (Case("a/error_page.jpeg", "an HTML error page named .jpeg", "not_image"),
         lambda: b"<!DOCTYPE html><html><body>403 Forbidden</body></html>\n"),
        (Case("a/bomb.jpeg", "JPEG declaring 60000 x 60000", "too_large"), lambda: _jpeg_bomb(30)),
        (Case("a/bomb.png", "PNG declaring 60000 x 60000", "too_large"), lambda: _png_bomb(32)),
        (Case("a/truncated.png", "truncated PNG", "truncated"),
         lambda: (d := _encode(".png", picture(33, 120, 160)))[:len(d) // 2]),
        (Case("a/corrupt_data.png", "PNG with damaged pixel data", "corrupt"),
         lambda: _png_bad_idat(34)),
    ]
    return good + ugly + bad


def _special_cases() -> list[tuple[Case, Callable[[Path], None]]]:
    """Cases that are not plain bytes: links, a FIFO, a device, a file without permissions."""
    def no_permission(p: Path) -> None:
        p.write_bytes(_jpeg(35))
        p.chmod(0)

    cases: list[tuple[Case, Callable[[Path], None]]] = [
        (Case("a/fifo.jpeg", "a FIFO named .jpeg (open() would block)", "unreadable"),
         lambda p: os.mkfifo(p)),
        (Case("a/dev_zero.jpeg", "symlink to /dev/zero (endless)", "unreadable"),
         lambda p: p.symlink_to("/dev/zero")),
        (Case("a/loop_1.jpeg", "symlink loop", "symlink_loop"),
         lambda p: p.symlink_to("loop_2.jpeg")),
        (Case("a/loop_2.jpeg", "symlink loop", "symlink_loop"),
         lambda p: p.symlink_to("loop_1.jpeg")),
        (Case("a/dangling.jpeg", "dangling symlink", "missing"),
         lambda p: p.symlink_to("no_such_target.jpeg")),
    ]
    if not running_as_root():  # root reads a chmod 000 file anyway
        cases.append((Case("a/no_permission.jpeg", "file without read permission",
                           "unreadable"), no_permission))
    return cases


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def make_corpus(root: str | os.PathLike, bad: bool = True) -> list[Case]:
    """Write the corpus (or with ``bad=False`` only its storable files) under ``root``."""
    root = Path(root)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    cases = []
    for case, make in _bytes_cases():
        if bad or case.expect == "ok":
            (root / case.rel).write_bytes(make())
            cases.append(case)
    if bad:
        for case, make_special in _special_cases():
            make_special(root / case.rel)
            cases.append(case)
    return cases


def reference_image(path: Path, size: int, scale: int = 1) -> np.ndarray:
    """The plain OpenCV reference: read as 8-bit gray (at 1/scale for JPEG), area resize."""
    flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
             4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale]
    image = cv2.imread(str(path), flags | cv2.IMREAD_ANYDEPTH)
    assert image is not None, path
    if image.dtype != np.uint8:  # deeper than 8 bits: the default window is the image's min-max
        low, high = float(image.min()), float(image.max())
        image = np.floor((image - low) / (high - low) * 255 + 0.5).astype(np.uint8)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


# --- helpers shared by the issue-4 tests ----------------------------------------------------

#: Attributes that are the same for two runs of the same ingest (not times, not run counts).
STABLE_ATTRS = ("classes", "splits", "size", "chunk", "n_images", "interpolation", "decode",
                "label_scheme", "max_pixels", "n_skipped", "complete")


def assert_same_store(a: zarr.Group, b: zarr.Group) -> None:
    """Every array of ``a`` and ``b`` is identical (values, dtype, shape, chunks)."""
    assert sorted(a.array_keys()) == sorted(b.array_keys())
    for name in a.array_keys():
        x, y = a[name], b[name]
        assert (x.dtype, x.shape, x.chunks) == (y.dtype, y.shape, y.chunks), name
        # NaN (no DICOM window, ...) equals NaN here
        np.testing.assert_array_equal(x[:], y[:], err_msg=f"array {name} differs")
    for key in STABLE_ATTRS:
        assert a.attrs.get(key) == b.attrs.get(key), key
    summary = ("n_images", "n_stored", "n_failed", "reasons")
    assert ({k: a.attrs["summary"][k] for k in summary}
            == {k: b.attrs["summary"][k] for k in summary})


def open_group(path: str | os.PathLike) -> zarr.Group:
    return zarr.open_group(str(path), mode="r", zarr_format=3)


def chunks_done(out: str | os.PathLike) -> int:
    """How many chunks a (possibly still running) ingest has finished; -1 before its layout."""
    try:
        return int(open_group(out)["chunk_done"][:].sum())
    except (FileNotFoundError, KeyError, ValueError):
        return -1


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.02) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
