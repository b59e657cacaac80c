"""stats.py: every figure against numpy over the stored pixels themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch import stats as xstats

EXACT = ["images", "pixels", "min", "max", "median", "p01", "p99"]


@pytest.fixture(scope="module")
def synth_store(synth_small: Path, tmp_path_factory) -> Path:
    """Synthetic set plus bad files, and a class whose only file is bad (an empty group)."""
    tmp = tmp_path_factory.mktemp("stats_synth")
    src = tmp / "chest_xray"
    shutil.copytree(synth_small, src)
    (src / "train" / "EMPTY").mkdir()
    (src / "train" / "EMPTY" / "only.jpeg").write_bytes(b"")
    (src / "val" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"not a jpeg at all")
    xraybatch.ingest(src, tmp / "x.zarr", size=48, chunk=7, workers=2)
    return tmp / "x.zarr"


@pytest.fixture(scope="module")
def real_store(real_sample: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stats_real") / "x.zarr"
    xraybatch.ingest(real_sample, out, labels="kermany3", workers=2)
    return out


@pytest.fixture(scope="module", params=["synth", "real"])
def store(request) -> tuple[Path, dict]:
    out = request.getfixturevalue(f"{request.param}_store")
    return out, xraybatch.open(out).stats()


def numpy_summary(images: np.ndarray) -> dict:
    """The reference: numpy over the concatenated pixels of a group of images."""
    px = images.ravel()
    out = {"images": len(images), "pixels": px.size}
    if not px.size:
        return out
    p01, p99 = np.percentile(px, [1, 99])
    return out | {"min": px.min(), "max": px.max(), "median": np.median(px), "p01": p01,
                  "p99": p99, "mean": np.mean(px, dtype=np.float64),
                  "std": np.std(px, dtype=np.float64),
                  "hist": np.bincount(px, minlength=256).tolist()}


def check(got: dict, images: np.ndarray, where: str) -> None:
    ref = numpy_summary(images)
    if not ref["pixels"]:
        assert got["images"] == got["pixels"] == 0, where
        assert got["min"] is got["mean"] is got["median"] is None, where
        assert got["hist"] == [0] * 256, where
        return
    for key in EXACT:
        assert got[key] == ref[key], f"{where} {key}: {got[key]} != numpy {ref[key]}"
    assert got["mean"] == pytest.approx(ref["mean"], rel=1e-12, abs=0), where
    assert got["std"] == pytest.approx(ref["std"], rel=1e-12, abs=0), where
    assert got["hist"] == ref["hist"], where


def test_stats_equal_numpy_over_stored_pixels(store) -> None:
    out, stats = store
    group = zarr.open_group(str(out), mode="r")
    images, valid = group["images"][:], group["valid"][:]
    labels, split = group["labels"][:], group["split"][:]
    classes, splits = group.attrs["classes"], group.attrs["splits"]
    assert (stats["images"], stats["valid"], stats["failed"]) == \
        (len(valid), valid.sum(), (~valid).sum())
    check(stats["global"], images[valid], "global")
    assert list(stats["per_class"]) == classes
    assert list(stats["per_split_class"]) == splits
    for c, name in enumerate(classes):
        check(stats["per_class"][name], images[valid & (labels == c)], name)
        for s, split_name in enumerate(splits):
            assert list(stats["per_split_class"][split_name]) == classes
            check(stats["per_split_class"][split_name][name],
                  images[valid & (labels == c) & (split == s)], f"{split_name}/{name}")


def test_class_balance_over_stored_labels(store) -> None:
    out, stats = store
    group = zarr.open_group(str(out), mode="r")
    classes = group.attrs["classes"]
    counts = np.bincount(group["labels"][:][group["valid"][:]], minlength=len(classes))
    assert stats["class_counts"] == dict(zip(classes, counts.tolist(), strict=True))
    present = {c: int(n) for c, n in zip(classes, counts, strict=True) if n}
    assert stats["imbalance_ratio"] == max(present.values()) / min(present.values())
    total = sum(present.values())
    assert list(stats["class_weights"]) == list(present)
    for c, n in present.items():  # weights are exact (not rounded): same formula, same float
        assert stats["class_weights"][c] == total / (len(present) * n)


def test_groups_cover_the_edge_cases(synth_store: Path) -> None:
    """The synthetic store has failed files and a class with no valid image."""
    stats = xraybatch.open(synth_store).stats()
    assert stats["failed"] == 2
    assert stats["class_counts"]["EMPTY"] == 0 and "EMPTY" not in stats["class_weights"]
    assert stats["per_split_class"]["val"]["EMPTY"]["images"] == 0


def test_real_sample_class_counts(real_store: Path) -> None:
    stats = xraybatch.open(real_store).stats()
    assert stats["class_counts"] == {"NORMAL": 60, "BACTERIA": 118, "VIRUS": 70}
    assert stats["imbalance_ratio"] == 118 / 60


# --- unit tests of the reductions ------------------------------------------------------------


@pytest.mark.parametrize("pixels", [
    np.array([7], np.uint8), np.array([0, 255], np.uint8), np.full(1000, 42, np.uint8),
    np.array([0, 3, 3, 7, 255], np.uint8),
    np.random.default_rng(0).integers(0, 256, 9973).astype(np.uint8),
    np.random.default_rng(1).binomial(255, 0.2, 65537).astype(np.uint8),
])
def test_percentile_matches_numpy(pixels: np.ndarray) -> None:
    hist = np.bincount(pixels, minlength=256)
    for q in [*np.linspace(0, 100, 201), 1.0, 33.3, 99.99, 0.001]:
        assert xstats.percentile(hist, q) == np.percentile(pixels, q), q


def test_summarize_matches_numpy() -> None:
    pixels = np.random.default_rng(2).normal(120, 40, 300_000).clip(0, 255).astype(np.uint8)
    got = xstats.summarize(np.bincount(pixels, minlength=256), images=3)
    check(got, pixels.reshape(3, -1), "summarize")


def test_summarize_empty() -> None:
    got = xstats.summarize(np.zeros(256, np.int64), images=0)
    assert got["pixels"] == 0 and got["mean"] is None and got["p99"] is None


def test_group_histograms_any_chunking() -> None:
    rng = np.random.default_rng(3)
    hist = rng.integers(0, 1000, (23, 256)).astype(np.int32)
    ids = rng.integers(-1, 4, 23)
    expected = np.zeros((4, 256), np.int64)
    for row, g in zip(hist, ids, strict=True):
        if g >= 0:
            expected[g] += row
    for chunks in ((1, 256), (5, 256), (23, 256), (7, 64)):
        got = xstats.group_histograms(da.from_array(hist, chunks=chunks), ids, 4)
        np.testing.assert_array_equal(got, expected)


def test_class_balance() -> None:
    assert xstats.class_balance({"A": 30, "B": 10, "C": 20}) == {
        "imbalance_ratio": 3.0, "class_weights": {"A": 60 / 90, "B": 2.0, "C": 1.0}}
    assert xstats.class_balance({"A": 0}) == {"imbalance_ratio": None, "class_weights": {}}
