"""The bad-input corpus (tests/corpus.py): the batch completes, every bad file is named with
its reason code, every storable file is stored exactly as OpenCV reads it and exactly as in
a clean run, and ``--strict`` fails."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from corpus import BOMB_SIDE, Case, make_corpus, open_group, reference_image, running_as_root

import xraybatch
from xraybatch import cli, decode, store

SIZE = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("corpus") / "awkward"
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean") / "awkward"
    make_corpus(root, bad=False)
    return root


def _ingest(src: Path, out: Path, mode: str) -> tuple[xraybatch.IngestResult, pd.DataFrame]:
    result = xraybatch.ingest(src, out, size=SIZE, chunk=8, decode_mode=mode,
                              interpolation="area")
    return result, xraybatch.open(str(out)).manifest.set_index("path")


@pytest.fixture(scope="module")
def exact(corpus, tmp_path_factory):
    return _ingest(corpus[0], tmp_path_factory.mktemp("exact") / "out.zarr", "exact")


@pytest.fixture(scope="module")
def fast(corpus, tmp_path_factory):
    return _ingest(corpus[0], tmp_path_factory.mktemp("fast") / "out.zarr", "fast")


def _ok(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.expect == "ok"]


def test_corpus_has_enough_kinds(corpus):
    cases = corpus[1]
    assert len({c.kind for c in cases}) >= 20
    assert len({c.kind for c in cases if c.expect != "ok"}) >= 12
    assert {c.expect for c in cases} - {"ok"} <= set(decode.REASONS)


def test_batch_completes_and_names_every_bad_file(corpus, exact):
    _, cases = corpus
    result, manifest = exact
    expected = {c.rel: c.expect for c in cases if c.expect != "ok"}
    assert dict(zip(result.failures.path, result.failures.status, strict=True)) == expected
    assert result.n_stored == len(_ok(cases)) and result.n_images == len(cases)
    assert (manifest.status.drop(list(expected)) == "ok").all()
    bad = manifest.loc[list(expected)]
    assert not bad.valid.any() and (bad.message != "").all()
    assert xraybatch.open(str(result.out)).complete


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_storable_files_match_the_opencv_reference(corpus, exact, fast, mode):
    root, cases = corpus
    result, manifest = exact if mode == "exact" else fast
    images = open_group(result.out)["images"]
    for case in _ok(cases):
        path = root / case.rel
        full = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        scale = _dct_scale(full.shape) if mode == "fast" and case.fmt == "jpeg" else 1
        row = manifest.index.get_loc(case.rel)
        assert np.array_equal(images[row], reference_image(path, SIZE, scale)), case.rel
        facts = manifest.loc[case.rel]
        assert (facts.orig_height, facts.orig_width) == full.shape, case.rel
        assert facts.decode_scale == scale, case.rel
        assert (facts.orig_format, facts.orig_bitdepth) == (case.fmt, case.bitdepth), case.rel
        if case.fmt != "bmp":  # BMP headers are left to OpenCV: channels unknown (0)
            assert facts.orig_channels == case.channels, case.rel
        flags = set(facts.qc_flags.split(",")) - {""}
        assert set(case.flags) <= flags, (case.rel, flags)


def _dct_scale(shape: tuple[int, int]) -> int:
    """Largest libjpeg scale whose (rounded-up) output still covers SIZE on both sides."""
    fits = [s for s in (8, 4, 2) if all(math.ceil(side / s) >= SIZE for side in shape)]
    return fits[0] if fits else 1


def test_qc_flags_of_awkward_files(corpus, exact):
    _, manifest = exact
    assert manifest.loc["a/gray16.png"].qc_high_bitdepth
    assert manifest.loc["a/png_named.jpeg"].qc_format_mismatch
    assert manifest.loc["a/small.jpeg"].qc_small
    assert manifest.loc[["a/rgb.jpeg", "a/rgba.png", "a/cmyk.jpeg"]].qc_rgb.all()
    copies = ["b/copy of good_00.jpeg", "b/good_00.jpeg"]
    assert manifest.loc[copies].qc_duplicate.all()
    assert manifest.qc_duplicate.sum() == 2
    first = min(manifest.index.get_loc(p) for p in copies)
    assert sorted(manifest.loc[copies].duplicate_of) == [-1, first]
    ok = manifest[manifest.valid]
    assert not ok.drop(copies).qc_duplicate.any()


def test_storable_files_are_stored_as_in_a_clean_run(corpus, clean, exact, tmp_path):
    result, manifest = exact
    clean_result, clean_manifest = _ingest(clean, tmp_path / "clean.zarr", "exact")
    assert len(clean_result.failures) == 0
    dirty, tidy = open_group(result.out), open_group(clean_result.out)
    rows = [manifest.index.get_loc(p) for p in clean_manifest.index]
    for name in ("images", "hist", "labels", "file_bytes", *store.RECORD_ARRAYS):
        # assert_array_equal: NaN (no DICOM window) equals NaN
        np.testing.assert_array_equal(dirty[name].get_orthogonal_selection(np.array(rows)),
                                      tidy[name][:], err_msg=name)


def test_strict_fails_and_lists_bad_files(corpus, clean, tmp_path, capsys):
    root, cases = corpus
    args = ["--size", str(SIZE), "--quiet", "--strict"]
    assert cli.main(["ingest", str(root), str(tmp_path / "bad.zarr"), *args]) == 1
    printed = capsys.readouterr().out
    bad = [c for c in cases if c.expect != "ok"]
    assert f"failed {len(bad)} files:" in printed
    for case in bad:
        assert f"  {case.expect:<13} {case.rel}: " in printed
    assert cli.main(["ingest", str(clean), str(tmp_path / "clean.zarr"), *args]) == 0


def test_truncated_jpeg_would_decode_as_a_partly_grey_image(corpus, exact):
    """Why the end-of-image check matters: OpenCV returns the truncated file without error."""
    root, _ = corpus
    image = cv2.imread(str(root / "a/truncated.jpeg"), cv2.IMREAD_GRAYSCALE)
    assert image is not None and (image[-10:] == 128).all()  # libjpeg's grey fill
    assert exact[1].loc["a/truncated.jpeg"].status == "truncated"


@pytest.mark.parametrize("name", ["bomb.jpeg", "bomb.png"])
def test_bombs_are_refused_before_any_decode(corpus, monkeypatch, name):
    root, _ = corpus
    def no_decode(*args):
        raise AssertionError("the decoder must not be called")

    monkeypatch.setattr(decode.cv2, "imdecode", no_decode)
    with pytest.raises(decode.ImageError, match=f"{BOMB_SIDE}x{BOMB_SIDE}") as err:
        decode.process((root / "a" / name).read_bytes(), SIZE)
    assert err.value.code == "too_large"


def test_file_without_read_permission(corpus, exact):
    if running_as_root():
        pytest.skip("running as root: a chmod 000 file is still readable (the FIFO and "
                    "/dev/zero cases cover 'unreadable')")
    assert exact[1].loc["a/no_permission.jpeg"].status == "unreadable"
