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
from xraybatch.ingest import ChunkTask, process_chunk
from xraybatch.phantom import synth_image


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
