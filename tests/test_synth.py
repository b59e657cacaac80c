"""synth.py and phantom.py: determinism, Kermany layout and names, quirks, overwrite safety,
calibrated sizes."""

from __future__ import annotations

import doctest
import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from xraybatch import phantom, synth
from xraybatch.phantom import synth_image
from xraybatch.synth import MARKER, synth_dataset

COLUMNS = ["path", "split", "kind", "height", "width", "channels", "progressive", "bytes"]
NAME_KIND = [
    (re.compile(r"^(NORMAL2-)?IM-\d{4,}-\d{4}\.jpeg$"), "NORMAL"),
    (re.compile(r"^person\d+_bacteria_\d+\.jpeg$"), "BACTERIA"),
    (re.compile(r"^person\d+_virus_\d+\.jpeg$"), "VIRUS"),
]
SCALE = 0.25


def kind_from_name(name: str) -> str | None:
    for pattern, kind in NAME_KIND:
        if pattern.match(name):
            return kind
    return None


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def is_progressive(data: bytes) -> bool:
    """True if the first start-of-frame marker is SOF2 (progressive Huffman)."""
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker in (0xC0, 0xC1, 0xC2):
            return marker == 0xC2
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise AssertionError("no SOF marker found")


@pytest.fixture(scope="module")
def ds200(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    root = tmp_path_factory.mktemp("synth200") / "chest_xray"
    return root, synth_dataset(root, n=200, seed=3, scale=SCALE, workers=1)


# ---------------------------------------------------------------------------- synth_image


@pytest.mark.parametrize("kind", phantom.KINDS)
def test_synth_image_is_pure_and_shaped(kind: str) -> None:
    a = synth_image(np.random.default_rng(5), 300, 410, kind)
    b = synth_image(np.random.default_rng(5), 300, 410, kind)
    assert a.shape == (300, 410) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, synth_image(np.random.default_rng(6), 300, 410, kind))
    # X-ray-like grey levels: mid-grey on average, wide spread, dark corners.
    assert 80 < a.mean() < 170 and a.std() > 30


def test_synth_image_kinds_differ_and_validate() -> None:
    imgs = {k: synth_image(np.random.default_rng(0), 200, 240, k) for k in phantom.KINDS}
    assert not np.array_equal(imgs["NORMAL"], imgs["BACTERIA"])
    assert not np.array_equal(imgs["BACTERIA"], imgs["VIRUS"])
    with pytest.raises(ValueError, match="kind"):
        synth_image(np.random.default_rng(0), 10, 10, "normal")
    with pytest.raises(ValueError):
        synth_image(np.random.default_rng(0), 0, 10, "NORMAL")


@pytest.mark.parametrize("shape", [(1, 1), (5, 300), (140, 445), (401, 9)])
def test_synth_image_odd_sizes(shape: tuple[int, int]) -> None:
    assert synth_image(np.random.default_rng(1), *shape, "VIRUS").shape == shape


# -------------------------------------------------------------------------- synth_dataset


def test_dataframe_matches_files(ds200: tuple[Path, pd.DataFrame]) -> None:
    root, df = ds200
    assert list(df.columns) == COLUMNS
    assert len(df) == 200 and df.path.is_unique
    assert df.path.tolist() == sorted(df.path)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert files == sorted([*df.path, MARKER])
    for row in df.itertuples():
        data = (root / row.path).read_bytes()
        assert len(data) == row.bytes
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        channels = 1 if img.ndim == 2 else img.shape[2]
        assert (img.shape[0], img.shape[1], channels) == (row.height, row.width, row.channels)
        assert is_progressive(data) == row.progressive
        if channels == 3:  # grey content in a colour JPEG
            assert np.abs(img.astype(int) - img[..., :1]).max() <= 8
        assert min(row.height, row.width) >= 32


def test_layout_counts_and_mix(ds200: tuple[Path, pd.DataFrame]) -> None:
    root, df = ds200
    assert sorted(p.name for p in root.iterdir()) == [MARKER, "test", "train", "val"]
    for split in synth.SPLITS:
        for cls in ("NORMAL", "PNEUMONIA"):
            assert any((root / split / cls).glob("*.jpeg")), f"{split}/{cls} is empty"
    split_of = df.path.str.split("/").str[0]
    folder = df.path.str.split("/").str[1]
    assert (split_of == df.split).all()
    assert (folder == np.where(df.kind == "NORMAL", "NORMAL", "PNEUMONIA")).all()
    assert df.split.value_counts().to_dict() == {"train": 170, "test": 20, "val": 10}
    share = df.kind.value_counts(normalize=True)
    assert share["NORMAL"] == pytest.approx(0.26, abs=0.03)
    assert share["BACTERIA"] == pytest.approx(0.48, abs=0.03)
    assert share["VIRUS"] == pytest.approx(0.26, abs=0.03)


@pytest.mark.parametrize("n", [30, 31, 47, 100])
def test_every_folder_non_empty_from_30(tmp_path: Path, n: int) -> None:
    df = synth_dataset(tmp_path / "d", n=n, seed=n, scale=0.05, workers=1)
    assert len(df) == n
    folders = set(df.path.str.rsplit("/", n=1).str[0])
    assert folders == {f"{s}/{c}" for s in synth.SPLITS for c in ("NORMAL", "PNEUMONIA")}


def test_names_parse_into_kinds(ds200: tuple[Path, pd.DataFrame]) -> None:
    _, df = ds200
    names = df.path.str.rsplit("/", n=1).str[1]
    assert [kind_from_name(name) for name in names] == df.kind.tolist()
    assert names.str.startswith("NORMAL2-").any() and names.str.startswith("IM-").any()


def test_quirks_present(ds200: tuple[Path, pd.DataFrame]) -> None:
    _, df = ds200
    assert 1 <= (df.channels == 3).sum() <= 8  # ~2%
    assert 2 <= df.progressive.sum() <= 10  # ~3%
    small = df[df[["height", "width"]].min(axis=1) < 256 * SCALE]
    assert len(small) >= 1
    # At full scale the same plan has real sides under 256 px (like 140x445).
    plan = synth._plan(200, 3, 1.0)
    assert (plan[["height", "width"]].min(axis=1) < 256).sum() >= 1
    assert plan.width.max() <= 2900 and plan.height.max() <= 2500


def test_tiny_n(tmp_path: Path) -> None:
    assert len(synth_dataset(tmp_path / "zero", n=0, workers=1)) == 0
    df = synth_dataset(tmp_path / "three", n=3, scale=0.05, workers=1)
    assert len(df) == 3 and list(df.columns) == COLUMNS
    with pytest.raises(ValueError):
        synth_dataset(tmp_path / "neg", n=-1)
    with pytest.raises(ValueError):
        synth_dataset(tmp_path / "s", n=2, scale=0)


def test_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    kw = {"n": 40, "seed": 11, "scale": 0.15}
    a = synth_dataset(tmp_path / "a", workers=1, **kw)
    b = synth_dataset(tmp_path / "b", workers=2, **kw)
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    pd.testing.assert_frame_equal(a, b)
    c = synth_dataset(tmp_path / "c", workers=1, **{**kw, "seed": 12})
    assert digests(tmp_path / "a") != digests(tmp_path / "c")
    assert not c.equals(a)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "set"
    synth_dataset(out, n=20, seed=1, scale=0.05, workers=1)
    before = digests(out)
    with pytest.raises(FileExistsError, match="overwrite=True") as err:
        synth_dataset(out, n=20, seed=2, scale=0.05, workers=1)
    assert "\n" not in str(err.value)
    assert digests(out) == before

    # overwrite=True replaces a synthetic set, leaving no stale files.
    df = synth_dataset(out, n=10, seed=2, scale=0.05, workers=1, overwrite=True)
    assert sorted(digests(out)) == sorted([*df.path, MARKER])


def test_overwrite_refuses_a_kermany_shaped_folder_it_did_not_write(tmp_path: Path) -> None:
    out = tmp_path / "real"
    synth_dataset(out, n=6, seed=1, scale=0.05, workers=1)
    (out / MARKER).unlink()  # now shaped like the real dataset, but not ours
    before = digests(out)
    with pytest.raises(FileExistsError, match="not a synthetic set"):
        synth_dataset(out, n=6, seed=1, scale=0.05, workers=1, overwrite=True)
    assert digests(out) == before


@pytest.mark.parametrize("extra", ["notes.txt", "train/NORMAL/readme.md", "train/x/y/z.jpeg",
                                   "other/a.jpeg"])
def test_overwrite_never_deletes_foreign_files(tmp_path: Path, extra: str) -> None:
    out = tmp_path / "set"
    synth_dataset(out, n=6, seed=1, scale=0.05, workers=1)
    (out / extra).parent.mkdir(parents=True, exist_ok=True)
    (out / extra).write_text("keep me")
    before = digests(out)
    with pytest.raises(FileExistsError):
        synth_dataset(out, n=6, seed=1, scale=0.05, workers=1, overwrite=True)
    assert digests(out) == before


def test_out_may_be_an_empty_dir_but_not_a_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(synth_dataset(empty, n=2, scale=0.05, workers=1)) == 2
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(FileExistsError):
        synth_dataset(afile, n=2, workers=1, overwrite=True)
    assert afile.read_text() == "x"


# ------------------------------------------------------------------ calibration at scale 1


@pytest.mark.parametrize(("kind", "shape", "quality", "lo", "hi"), [
    ("NORMAL", (1390, 1650), 100, 400_000, 800_000),  # real sample: ~600 KB on average
    ("BACTERIA", (810, 1150), 75, 50_000, 150_000),  # real sample: ~80 KB
    ("VIRUS", (870, 1250), 75, 50_000, 150_000),  # real sample: ~100 KB
])
def test_full_size_jpeg_bytes_in_calibrated_range(
    kind: str, shape: tuple[int, int], quality: int, lo: int, hi: int
) -> None:
    sizes = []
    for seed in range(3):
        img = synth_image(np.random.default_rng(seed), *shape, kind)
        sizes.append(len(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]))
    assert lo <= np.mean(sizes) <= hi, sizes


def test_full_scale_dataset_bytes_per_pixel(tmp_path: Path) -> None:
    df = synth_dataset(tmp_path / "full", n=12, seed=0, scale=1.0, workers=1)
    bpp = df.bytes / (df.height * df.width)
    normal = bpp[df.kind == "NORMAL"].median()
    pneumonia = bpp[df.kind != "NORMAL"].median()
    assert 0.18 < normal < 0.35  # real sample: 0.26 B/px at quality 100
    assert 0.05 < pneumonia < 0.12  # real sample: 0.08 B/px at quality 75
    assert (df[df.kind == "NORMAL"].width >= 1000).all()


@pytest.mark.parametrize("module", [phantom, synth])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 4 and result.failed == 0
