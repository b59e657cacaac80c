"""Quality-control flags: constructed cases through a real ingest, and the flag logic itself."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import xraybatch
from xraybatch import qc

SIZE = 64
# Class A: six ordinary images (mean, std) and one whose contrast is far from the others.
ORDINARY = [(120, 40), (124, 42), (128, 44), (132, 46), (136, 48), (128, 45)]
# What each file must be flagged with (files not listed here: no flag).
EXPECTED = {
    "A/outlier.png": {"outlier"},
    "B/constant.png": {"constant"},
    "B/dark.png": {"dark"},
    "B/bright.png": {"bright"},
    "B/deep.png": {"high_bitdepth"},
    "C/colour.png": {"rgb"},
    "C/small.png": {"small"},
    "C/dup_a.png": {"duplicate"},
    "C/dup_b.png": {"duplicate"},
    "D/png_named.jpg": {"format_mismatch"},
    "D/broken.png": set(),  # not decodable: no flag about pixels it does not have
}


def _blocks(height: int = 80, width: int = 100) -> np.ndarray:
    """+1/-1 in 10 x 10 blocks: mean exactly 0, std 1, and it survives downscaling."""
    y, x = np.indices((height, width)) // 10
    return np.where((y + x) % 2, 1.0, -1.0)


def _textured(mean: float, std: float, height: int = 80, width: int = 100) -> np.ndarray:
    return np.clip(mean + std * _blocks(height, width), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def qc_store(tmp_path_factory: pytest.TempPathFactory) -> xraybatch.XrayStore:
    """A folder with one file per QC case, ingested at 64 x 64 in chunks of 4."""
    root = tmp_path_factory.mktemp("qc") / "src"
    for folder in "ABCD":
        (root / folder).mkdir(parents=True)
    for i, (mean, std) in enumerate(ORDINARY):
        cv2.imwrite(str(root / f"A/ordinary_{i}.png"), _textured(mean, std))
    cv2.imwrite(str(root / "A/outlier.png"), _textured(128, 90))
    cv2.imwrite(str(root / "B/constant.png"), np.full((80, 100), 128, np.uint8))
    cv2.imwrite(str(root / "B/dark.png"), _textured(10, 5))
    cv2.imwrite(str(root / "B/bright.png"), _textured(245, 5))
    cv2.imwrite(str(root / "B/deep.png"), (_textured(128, 40).astype(np.uint16) * 257))
    colour = np.stack([_textured(100, 30), _textured(128, 40), _textured(160, 20)], axis=-1)
    cv2.imwrite(str(root / "C/colour.png"), colour)
    cv2.imwrite(str(root / "C/small.png"), _textured(128, 40, height=40, width=90))
    cv2.imwrite(str(root / "C/dup_a.png"), _textured(110, 30))
    (root / "C/dup_b.png").write_bytes((root / "C/dup_a.png").read_bytes())
    (root / "D/png_named.jpg").write_bytes(cv2.imencode(".png", _textured(128, 40))[1])
    (root / "D/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = root.parent / "qc.zarr"
    xraybatch.ingest(root, out, size=SIZE, labels="folder", chunk=4, scheduler="sync")
    return xraybatch.open(str(out))


@pytest.fixture(scope="module")
def manifest(qc_store: xraybatch.XrayStore) -> pd.DataFrame:
    return qc_store.manifest.rename_axis("sample").reset_index().set_index("path", drop=False)


def test_every_constructed_case_gets_exactly_its_flags(manifest: pd.DataFrame) -> None:
    got = {path: set(filter(None, flags.split(","))) for path, flags in manifest.qc_flags.items()}
    want = {path: EXPECTED.get(path, set()) for path in manifest.path}
    assert got == want
    for name in qc.FLAGS:  # the boolean columns agree with the qc_flags string
        column = manifest[f"qc_{name}"]
        assert column.dtype == bool
        assert set(column.index[column]) == {p for p, f in want.items() if name in f}


def test_duplicate_of_points_at_the_first_copy(manifest: pd.DataFrame) -> None:
    assert manifest.duplicate_of["C/dup_b.png"] == manifest["sample"]["C/dup_a.png"]
    assert manifest.duplicate_of["C/dup_a.png"] == -1
    assert (manifest.drop(["C/dup_b.png"]).duplicate_of == -1).all()


def test_mean_and_std_match_numpy_on_the_stored_images(qc_store: xraybatch.XrayStore,
                                                       manifest: pd.DataFrame) -> None:
    images = qc_store.read_images(slice(None)).astype(np.float64)
    valid = manifest.valid.to_numpy()
    np.testing.assert_allclose(manifest["mean"].to_numpy()[valid],
                               images[valid].mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_allclose(manifest["std"].to_numpy()[valid],
                               images[valid].std(axis=(1, 2)), rtol=1e-9, atol=1e-9)
    assert manifest.loc[~valid, ["mean", "std"]].isna().all().all()
    assert manifest.status["D/broken.png"] != "ok"


def test_manifest_lists_source_facts_behind_the_flags(manifest: pd.DataFrame) -> None:
    assert manifest.orig_channels["C/colour.png"] == 3
    assert manifest.orig_bitdepth["B/deep.png"] == 16
    assert (manifest.orig_height["C/small.png"], manifest.orig_width["C/small.png"]) == (40, 90)
    assert manifest.orig_format["D/png_named.jpg"] == "png"


def _frame(n: int, label: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "path": [f"f{i}.png" for i in range(n)], "label": label, "valid": True,
        "sha256": [f"h{i}" for i in range(n)], "orig_height": 300, "orig_width": 300,
        "orig_channels": 1, "orig_bitdepth": 8, "orig_format": "png"})


def _hist(means: list[int], spread: int = 30) -> np.ndarray:
    """Histograms of images with half their pixels at mean - spread, half at mean + spread."""
    hist = np.zeros((len(means), 256), np.int64)
    for row, m in enumerate(means):
        hist[row, m - spread] += 500
        hist[row, m + spread] += 500
    return hist


def test_outlier_needs_five_images_of_a_class() -> None:
    means = [100, 101, 99, 100, 180]
    flags = qc.add_flags(_frame(5), _hist(means), 256)
    assert flags.qc_outlier.tolist() == [False, False, False, False, True]
    assert not qc.add_flags(_frame(4), _hist(means[1:]), 256).qc_outlier.any()


def test_outlier_is_judged_within_each_class() -> None:
    """Two classes with different typical means: neither class makes the other an outlier."""
    frame = pd.concat([_frame(6, label=0), _frame(6, label=1)], ignore_index=True)
    frame["sha256"] = [f"h{i}" for i in range(12)]
    hist = _hist([60, 61, 59, 60, 62, 58, 190, 191, 189, 190, 192, 188])
    assert not qc.add_flags(frame, hist, 256).qc_outlier.any()


def test_outlier_when_most_images_are_identical() -> None:
    """The MAD is 0 when over half the values are equal; the odd one is still caught."""
    flags = qc.add_flags(_frame(6), _hist([100, 100, 100, 100, 101, 160]), 256)
    assert flags.qc_outlier.tolist() == [False] * 5 + [True]
    assert not qc.add_flags(_frame(6), _hist([100] * 6), 256).qc_outlier.any()


def test_duplicates_of_three_copies_and_unhashed_files() -> None:
    frame = _frame(6)
    frame["sha256"] = ["x", "y", "x", "", "x", ""]
    frame["valid"] = [True, True, True, False, True, False]
    out = qc.add_flags(frame, _hist([100] * 6), 256)
    assert out.duplicate_of.tolist() == [-1, -1, 0, -1, 0, -1]
    assert out.qc_duplicate.tolist() == [True, False, True, False, True, False]


def test_duplicates_match_pandas_on_many_rows() -> None:
    """Correctness at scale: 20,000 rows with duplicate groups, checked against pandas."""
    rng = np.random.default_rng(0)
    n = 20_000
    frame = _frame(n)
    frame["sha256"] = rng.integers(0, n // 2, n).astype(str)
    out = qc.add_flags(frame, _hist([100] * n), 256)
    first = frame.reset_index().groupby("sha256")["index"].transform("min")
    want = np.where(first != frame.index, first, -1)
    assert (out.duplicate_of.to_numpy() == want).all()
    sizes = frame.groupby("sha256").sha256.transform("size")
    assert (out.qc_duplicate.to_numpy() == (sizes > 1).to_numpy()).all()


def test_real_sample_flags_match_an_independent_reading(real_sample: Path,
                                                        tmp_path: Path) -> None:
    """Duplicates, RGB and small originals of the real files, against hashlib and cv2."""
    xraybatch.ingest(real_sample, tmp_path / "x.zarr", labels="kermany3")
    m = xraybatch.open(str(tmp_path / "x.zarr")).manifest
    files = [real_sample / p for p in m.path]
    digests = pd.Series([hashlib.sha256(f.read_bytes()).hexdigest() for f in files])
    decoded = [cv2.imread(str(f), cv2.IMREAD_UNCHANGED) for f in files]
    assert (m.qc_duplicate == digests.duplicated(keep=False)).all()
    assert sorted(m.path[m.qc_duplicate].str.rsplit("/", n=1).str[1]) == [
        "person1430_bacteria_3695.jpeg", "person1430_bacteria_3696.jpeg"]  # data README
    assert m.qc_rgb.tolist() == [im.ndim == 3 for im in decoded] and m.qc_rgb.any()
    assert m.qc_small.tolist() == [min(im.shape[:2]) < 256 for im in decoded] and m.qc_small.any()
    assert not (m.qc_constant | m.qc_dark | m.qc_bright | m.qc_format_mismatch).any()
