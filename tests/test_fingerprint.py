"""Content fingerprints (xraybatch.fingerprint): plain numpy/OpenCV references, robustness to
each alteration kind, and the chunk task's fingerprints equal the pure function's."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import benchmark_module

import xraybatch
from xraybatch import decode, dups, fingerprint, store
from xraybatch.phantom import synth_image
from xraybatch.tasks import ChunkTask, process_chunk


def _bench():
    """benchmarks/dups.py: its ``alter`` makes the planted copies."""
    return benchmark_module("dups")


def _reference_thumbnail(image: np.ndarray) -> np.ndarray:
    """Plain numpy: each grey level -> the middle of its rank interval, on the area-shrunk image."""
    counts = np.bincount(image.ravel(), minlength=256).astype(np.float64)
    cum = np.cumsum(counts)
    lut = np.round((cum - counts / 2) / cum[-1] * 255).astype(np.uint8)
    small = cv2.resize(image, (fingerprint.THUMB,) * 2, interpolation=cv2.INTER_AREA)
    return lut[small]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_thumbnail_matches_plain_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = (synth_image(rng, 256, 256, "VIRUS") if seed else
             rng.integers(0, 256, (256, 256), dtype=np.uint8))
    expected = _reference_thumbnail(image)
    assert (fingerprint.equalized_thumbnail(image) == expected).all()
    hist = decode.histogram(image)  # what the chunk task passes
    assert (fingerprint.equalized_thumbnail(image, hist) == expected).all()


def test_simhash_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(3)
    thumb = fingerprint.equalized_thumbnail(synth_image(rng, 256, 256, "NORMAL"))
    codes = []
    for d, planes in zip(fingerprint.descriptors(thumb), fingerprint._PLANES, strict=True):
        codes.append(sum(1 << k for k in range(64) if float(planes[k] @ d) > 0))
    assert fingerprint.hashes(thumb).tolist() == codes


def test_descriptors_remove_the_shared_layout() -> None:
    """Each descriptor is zero-mean with unit norm, and a constant film has no structure."""
    thumb = fingerprint.equalized_thumbnail(synth_image(np.random.default_rng(4), 256, 256,
                                                         "NORMAL"))
    for d in fingerprint.descriptors(thumb):
        assert abs(float(d.mean())) < 1e-5 and abs(float(d @ d) - 1) < 1e-4
    assert np.abs(fingerprint.local_contrast(np.full((64, 64), 77, np.uint8), 2.0)).max() < 1e-4


@pytest.fixture(scope="module")
def films() -> list[np.ndarray]:
    """Full-size synthetic films of different synthetic patients."""
    return [synth_image(np.random.default_rng(100 + i), 520, 640, kind)
            for i, kind in enumerate(["NORMAL", "BACTERIA", "VIRUS"] * 2)]


def _stored_thumb(data: bytes) -> np.ndarray:
    return fingerprint.equalized_thumbnail(decode.process(data).image)


@pytest.mark.parametrize("kind", _bench().KINDS)
def test_altered_copy_verifies(films: list[np.ndarray], kind: str) -> None:
    """A copy altered by each kind scores above the default threshold against its original,
    and above the original's score against every other film."""
    bench = _bench()
    rng = np.random.default_rng(5)
    originals = [_stored_thumb(bench._jpeg(f, 95)) for f in films]
    for i in (0, 1):
        copy = _stored_thumb(bench.alter(films[i], kind, rng)[1])
        score = fingerprint.align_score(originals[i], copy)
        assert score >= dups.DEFAULT_THRESHOLD, (kind, i, score)
        others = [fingerprint.align_score(o, copy) for j, o in enumerate(originals) if j != i]
        assert score > max(others), (kind, i, score, others)


def test_distinct_synthetic_patients_score_well_below_the_threshold() -> None:
    """Films of different synthetic patients (every draw of the generator is a new patient),
    stored as ingest stores them, score like real films of different patients: far below
    the default threshold over every pair (real sample: at most 0.58-0.60)."""
    films = [synth_image(np.random.default_rng(200 + i), 300 + 17 * i, 380 + 11 * i, kind)
             for i, kind in enumerate(["NORMAL", "BACTERIA", "VIRUS"] * 8)]
    thumbs = np.array([_stored_thumb(_bench()._jpeg(f, 90)) for f in films])
    a, b = np.triu_indices(len(thumbs), 1)
    scores = fingerprint.align_scores(thumbs[a], thumbs[b])
    assert scores.max() < dups.DEFAULT_THRESHOLD - 0.1, (a[scores.argmax()], b[scores.argmax()],
                                                         scores.max())


def test_identity_and_symmetry_of_the_score(films: list[np.ndarray]) -> None:
    thumbs = np.array([fingerprint.equalized_thumbnail(decode.resize(f, 256)) for f in films])
    assert np.allclose(fingerprint.align_scores(thumbs, thumbs), 1.0, atol=1e-4)
    # Row by row equals one by one (the cascade is per pair).
    a, b = thumbs[:3], thumbs[3:]
    assert np.allclose(fingerprint.align_scores(a, b),
                       [fingerprint.align_score(x, y) for x, y in zip(a, b, strict=True)])


def test_chunk_task_fingerprints_equal_the_pure_function(synth_small: Path,
                                                         tmp_path: Path) -> None:
    """Bit for bit: the arrays stored by the chunk task are the pure function of the stored
    image; failed rows keep the fill value."""
    out = tmp_path / "s.zarr"
    (synth_small / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8garbage")
    try:
        xraybatch.ingest(synth_small, out, labels="kermany3", chunk=16)
    finally:
        (synth_small / "train" / "NORMAL" / "broken.jpeg").unlink()
    ds = xraybatch.open(out)
    assert ds.has_fingerprints and ds.fingerprint_version == fingerprint.VERSION
    images, valid = ds.images.compute(), ds.valid
    assert not valid.all()
    thumbs, codes = ds.fingerprint_thumbs(np.arange(len(ds))), ds.fingerprint_codes()
    for i in range(len(ds)):
        if not valid[i]:
            assert not thumbs[i].any() and not codes[i].any()
            continue
        expected = fingerprint.fingerprint(images[i])
        assert (thumbs[i] == expected["fp_thumb"]).all()
        assert (codes[i] == expected["fp_hash"]).all()
    # process_chunk hands them to the store in its records dict, under store.py's names.
    task = ChunkTask(store.StoreRef(str(out)), 0, 0, (str(next(synth_small.rglob(
        "*.jpeg"))),), 64, "auto", "fast", decode.MAX_PIXELS)
    _, _, records, _ = process_chunk(task)
    assert set(store.FINGERPRINT_ARRAYS) <= set(records)


# --- the prefilter --------------------------------------------------------------------------


def _reference_spectrum(thumb: np.ndarray) -> np.ndarray:
    """Plain numpy, one image: contrast, area shrink, Hann window, the full 2-D spectrum
    centred, read at each polar sample by bilinear interpolation in a loop."""
    side = fingerprint._SPEC_SIDE
    small = cv2.resize(fingerprint.local_contrast(thumb, fingerprint._SCORE_SIGMA), (side, side),
                       interpolation=cv2.INTER_AREA)
    window = np.outer(np.hanning(side), np.hanning(side))
    magnitude = np.fft.fftshift(np.log1p(np.abs(np.fft.fft2(small * window))))
    out = []
    for i in range(fingerprint._SPEC_ANGLES):
        angle = -np.pi / 2 + np.pi * i / fingerprint._SPEC_ANGLES
        for j in range(fingerprint._SPEC_SKIP, fingerprint._SPEC_RADII):
            r = fingerprint._SPEC_RADIUS * j / fingerprint._SPEC_RADII
            x, y = side // 2 + max(0.0, r * np.cos(angle)), side // 2 + r * np.sin(angle)
            x0, y0 = int(np.floor(x)), int(np.floor(y))
            fx, fy = x - x0, y - y0
            out.append((1 - fy) * ((1 - fx) * magnitude[y0, x0] + fx * magnitude[y0, x0 + 1])
                       + fy * ((1 - fx) * magnitude[y0 + 1, x0] + fx * magnitude[y0 + 1, x0 + 1]))
    out = np.array(out) - np.mean(out)
    return out / np.linalg.norm(out)


def test_spectrum_descriptors_and_scores_match_plain_references() -> None:
    rng = np.random.default_rng(7)
    films = [synth_image(np.random.default_rng(i), 256, 256, "NORMAL") for i in range(3)]
    thumbs = np.array([fingerprint.equalized_thumbnail(f) for f in films]
                      + [rng.integers(0, 256, (64, 64), np.uint8) for _ in range(300)])
    got = fingerprint.spectrum_descriptors(thumbs)  # 303 rows: two batches of 256
    expected = np.array([_reference_spectrum(t) for t in thumbs])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    a, b = rng.integers(0, len(thumbs), (2, 500))
    plain = [max(float(got[i].reshape(fingerprint._SPEC_ANGLES, -1).ravel()
                       @ np.roll(got[j].reshape(fingerprint._SPEC_ANGLES, -1), t, axis=0).ravel())
                 for t in (-1, 0, 1)) for i, j in zip(a, b, strict=True)]
    np.testing.assert_allclose(fingerprint.spectrum_scores(got[a], got[b]), plain, atol=1e-5)


@pytest.mark.parametrize("kind", _bench().KINDS)
def test_prefilter_passes_every_copy_that_verifies(films: list[np.ndarray], kind: str) -> None:
    """The prefilter never drops a copy (each alteration kind) that align_score accepts."""
    bench = _bench()
    rng = np.random.default_rng(6)
    for i in (0, 1, 2):
        original = _stored_thumb(bench._jpeg(films[i], 95))
        copy = _stored_thumb(bench.alter(films[i], kind, rng)[1])
        assert fingerprint.align_score(original, copy) >= dups.DEFAULT_THRESHOLD
        d = fingerprint.spectrum_descriptors(np.array([original, copy]))
        assert fingerprint.spectrum_scores(d[:1], d[1:])[0] >= fingerprint.PREFILTER, (kind, i)
