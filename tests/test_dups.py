"""Near-duplicate search (xraybatch.dups), ``xraybatch dups`` and the stats integration."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from conftest import benchmark_module

import xraybatch
from xraybatch import dups, dups_candidates, dups_scoring, fingerprint, zarrio
from xraybatch.cli import main
from xraybatch.store import StoreError


def _bench():
    """benchmarks/dups.py: its ``alter`` makes the planted copies."""
    return benchmark_module("dups")


# --- pure functions against brute force ------------------------------------------------------


def test_candidates_hold_every_close_pair_of_a_brute_force_search() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, (3000, 3), dtype=np.uint64)
    bits = np.uint64(1) << np.arange(64, dtype=np.uint64)
    for i in range(0, 300, 3):  # near copies: 1-4 bits flipped in every code
        flips = rng.choice(64, size=rng.integers(1, 5), replace=False)
        codes[3000 - 1 - i] = codes[i] ^ np.bitwise_or.reduce(bits[flips])
    found = set(map(tuple, dups_candidates.candidate_pairs(codes).tolist()))
    distance = np.bitwise_count(codes[:, None, :] ^ codes[None, :, :]).min(axis=2)
    a, b = np.nonzero(np.triu(distance <= 4, 1))
    assert len(a) >= 100
    assert set(zip(a.tolist(), b.tolist(), strict=True)) <= found
    pairs = np.array(sorted(found))
    assert (pairs[:, 0] < pairs[:, 1]).all()


def test_candidates_respect_new_rows_and_groups() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2**63, (500, 3), dtype=np.uint64)
    codes[400:] = codes[:100] ^ np.uint64(1)
    new = dups_candidates.candidate_pairs(codes, new_from=450)
    assert len(new) and (new[:, 1] >= 450).all()
    group = (np.arange(500) >= 400).astype(int)
    across = dups_candidates.candidate_pairs(codes, group=group)
    assert len(across) >= 95 and (group[across[:, 0]] != group[across[:, 1]]).all()


def test_components_equal_a_plain_union_find() -> None:
    rng = np.random.default_rng(2)
    n = 200
    pairs = np.sort(rng.integers(0, n, (150, 2)), axis=1)
    parent = list(range(n))

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)
    expected = [min(r for r in range(n) if root(r) == root(x)) for x in range(n)]
    assert dups.components(n, pairs).tolist() == expected


def test_exact_pairs_and_threshold_range() -> None:
    sha = np.array(["x", "", "x", "y", "", "x"])
    valid = np.array([True, True, True, True, True, False])
    assert dups_candidates.exact_pairs(sha, valid).tolist() == [[0, 2]]
    with pytest.raises(ValueError, match="between"):
        dups.threshold_or_default(0.2)


# --- stores with planted copies ----------------------------------------------------------------


def _planted_store(src: Path, tmp: Path, name: str, per_kind: int = 1
                   ) -> tuple[xraybatch.XrayStore, pd.DataFrame, set]:
    """SRC copied with altered copies of each kind planted in another split, ingested."""
    bench = _bench()
    root = tmp / name / "set"
    root.parent.mkdir(parents=True)
    truth = bench.build(src, root, per_kind, seed=3)
    natural = bench.natural_pairs(root)
    out = tmp / name / "s.zarr"
    xraybatch.ingest(root, out, labels="folder")
    return xraybatch.open(out), truth, natural


def _path_pairs(ds: xraybatch.XrayStore, pairs: pd.DataFrame) -> set[frozenset[str]]:
    paths = ds.paths
    return {frozenset((paths[a], paths[b])) for a, b in zip(pairs.a, pairs.b, strict=True)}


@pytest.fixture(scope="module")
def real_planted(real_sample: Path, tmp_path_factory: pytest.TempPathFactory):
    return _planted_store(real_sample, tmp_path_factory.mktemp("dups"), "real", per_kind=2)


def test_real_planted_copies_found_and_distinct_films_not(real_planted) -> None:
    """Every planted copy (each kind twice) and the sample's own byte-identical pair are
    found; no pair of different films verifies."""
    ds, truth, natural = real_planted
    assert len(natural) >= 1  # the sample holds a byte-identical pair
    found = _path_pairs(ds, dups.near_duplicate_pairs(ds))
    planted = {frozenset(p) for p in zip(truth.original, truth["copy"], strict=True)}
    assert planted <= found, sorted(truth.kind[[frozenset(p) not in found for p in zip(
        truth.original, truth["copy"], strict=True)]])
    group = _bench().same_content(truth, natural)
    assert [tuple(p) for p in found if len({group.get(x, x) for x in p}) > 1] == []


def test_pairs_are_kept_in_the_store_and_reused(real_planted, monkeypatch) -> None:
    ds, _, _ = real_planted
    first = dups.near_duplicate_pairs(ds)
    reopened = xraybatch.open(ds.ref.url)
    key, stored, scores = reopened.stored_pairs()
    assert key["rows"] == len(ds) and len(stored) >= len(first)

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(dups, "_search", no_search)
    again = dups.near_duplicate_pairs(reopened)
    pd.testing.assert_frame_equal(first, again)
    # A higher threshold is answered from the same pairs.
    assert len(dups.near_duplicate_pairs(reopened, 0.95)) <= len(first)


def test_new_rows_only_are_searched_after_an_append(real_planted, tmp_path: Path,
                                                     monkeypatch) -> None:
    """Stored pairs covering the first rows: only pairs with a newer row are searched."""
    ds, truth, _ = real_planted
    copy = tmp_path / "s.zarr"
    shutil.copytree(ds.ref.url, copy)
    full = dups.near_duplicate_pairs(xraybatch.open(copy), keep=False)
    old = len(ds) - 40
    kept = full[(full.a < old) & (full.b < old)]
    from xraybatch.store import write_pairs

    assert write_pairs(xraybatch.open(copy).ref, kept[["a", "b"]].to_numpy(),
                       kept.score.to_numpy(), dups._search_key(old))
    searched = []
    real_search = dups._search

    def spy(store, new_from, *args):
        searched.append(new_from)
        return real_search(store, new_from, *args)

    monkeypatch.setattr(dups, "_search", spy)
    grown = dups.near_duplicate_pairs(xraybatch.open(copy))
    assert searched == [old]
    assert set(map(tuple, grown[["a", "b"]].to_numpy().tolist())) == set(
        map(tuple, full[["a", "b"]].to_numpy().tolist()))


def test_duplicate_groups(real_planted) -> None:
    ds, truth, natural = real_planted
    ids = dups.duplicate_groups(ds)
    assert ids.dtype == np.int64 and len(ids) == len(ds)
    index = {p: i for i, p in enumerate(ds.paths)}
    for o, c in zip(truth.original, truth["copy"], strict=True):
        assert ids[index[o]] == ids[index[c]]
    for a, b in map(tuple, natural):
        assert ids[index[a]] == ids[index[b]]
    joined = {index[p] for pair in natural for p in pair} | {index[p] for p in truth.original} | {
        index[p] for p in truth["copy"]}
    alone = np.setdiff1d(np.arange(len(ds)), list(joined))
    assert (ids[alone] == alone).all()  # every other row its own id


def test_dups_json_schema_and_strict(real_planted, capsys) -> None:
    ds, truth, _ = real_planted
    assert main(["dups", ds.ref.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"pairs", "cross_split", "groups", "threshold", "stores"}
    paths = set(ds.paths)
    for pair in out["pairs"]:
        assert len(pair) == 3 and pair[0] in paths and pair[1] in paths
        assert dups.DEFAULT_THRESHOLD <= pair[2] <= 1
    planted = {frozenset(p) for p in zip(truth.original, truth["copy"], strict=True)}
    cross = {frozenset(p[:2]) for p in out["cross_split"]}
    assert planted <= cross  # planted in another split
    n_cross = len(out["cross_split"])
    assert [frozenset(p[:2]) for p in out["pairs"][:n_cross]] == [frozenset(p[:2]) for p in
                                                                  out["cross_split"]]
    assert main(["dups", ds.ref.url, "--strict"]) == 1
    text = capsys.readouterr()
    assert "across splits" in text.out and "across splits" in text.err


def test_stats_counts_and_strict_fails_on_cross_split_pairs(real_planted, capsys) -> None:
    ds, truth, _ = real_planted
    assert main(["stats", ds.ref.url, "--json"]) == 0
    near = json.loads(capsys.readouterr().out)["near_duplicates"]
    assert near["cross_split"] >= len(truth) and near["pairs"] >= len(truth)
    assert near["groups"] <= near["pairs"]
    assert main(["stats", ds.ref.url]) == 0
    assert "LEAKAGE: " in capsys.readouterr().out
    assert main(["stats", ds.ref.url, "--strict"]) == 1
    assert "leakage" in capsys.readouterr().err


def test_two_stores_compared_from_their_fingerprints(real_sample: Path, tmp_path: Path,
                                                     capsys) -> None:
    """Store B holds altered copies of films of store A: pairs across the stores are found,
    each with its store's name, without reading any image."""
    bench = _bench()
    a_src, b_src = tmp_path / "a", tmp_path / "b" / "test" / "NORMAL"
    films = sorted((real_sample / "train" / "NORMAL").glob("*.jpeg"))[:12]
    (a_src / "train" / "NORMAL").mkdir(parents=True)
    b_src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    import cv2

    for f in films:
        shutil.copy(f, a_src / "train" / "NORMAL" / f.name)
    for f, kind in zip(films[:6], bench.KINDS, strict=False):
        ext, data = bench.alter(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), kind, rng)
        (b_src / f"{f.stem}_{kind}{ext}").write_bytes(data)
    xraybatch.ingest(a_src, tmp_path / "a.zarr")
    xraybatch.ingest(tmp_path / "b", tmp_path / "b.zarr")
    stores = [xraybatch.open(tmp_path / "a.zarr"), xraybatch.open(tmp_path / "b.zarr")]
    stores[0].read_images = stores[1].read_images = None  # no image is read
    found = dups.find(stores)
    across = found[found.store_a != found.store_b]
    suffix = {k: ".png" if k == "png" else ".jpeg" for k in bench.KINDS}
    expected = {(f"train/NORMAL/{f.name}", f"test/NORMAL/{f.stem}_{k}{suffix[k]}")
                for f, k in zip(films[:6], bench.KINDS, strict=False)}
    assert set(zip(across.path_a, across.path_b, strict=True)) == expected
    assert across.cross_split.all()
    assert main(["dups", str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["stores"] == [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]
    assert all(len(p) == 5 and p[3:] == out["stores"] for p in out["pairs"])


def test_synthetic_planted_copies_found_and_distinct_films_not(synth_small: Path,
                                                              tmp_path: Path) -> None:
    """On synthetic films (no real data needed): every planted copy of each kind is found,
    and no pair of films of different synthetic patients verifies."""
    ds, truth, natural = _planted_store(synth_small, tmp_path, "synth", per_kind=1)
    found = _path_pairs(ds, dups.near_duplicate_pairs(ds, keep=False))
    planted = {frozenset(p) for p in zip(truth.original, truth["copy"], strict=True)}
    assert planted <= found
    group = _bench().same_content(truth, natural)
    assert [tuple(p) for p in found if len({group.get(x, x) for x in p}) > 1] == []


def test_split_by_content_leaves_no_pair_and_no_patient_across_splits(
        synth_small: Path, tmp_path: Path, capsys) -> None:
    """The recipe: planted copies cross splits; after ``split --by patient,content`` neither
    a near-duplicate pair nor a patient is in two splits (stats, stats --strict, dups)."""
    ds, truth, _ = _planted_store(synth_small, tmp_path, "recipe", per_kind=1)
    assert main(["stats", ds.ref.url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["near_duplicates"]["cross_split"] >= len(truth)
    assert main(["split", ds.ref.url, "--by", "patient,content", "--seed", "2"]) == 0
    capsys.readouterr()
    assert main(["stats", ds.ref.url, "--json", "--strict"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["near_duplicates"]["cross_split"] == 0 and stats["near_duplicates"]["pairs"]
    assert stats["patients"]["in_several_splits"]["count"] == 0
    assert main(["dups", ds.ref.url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cross_split"] == [] and len(out["pairs"]) >= len(truth)
    # independently of dups: every planted original sits in its copy's split
    split = dict(zip(ds.paths, xraybatch.open(ds.ref.url).split, strict=True))
    assert all(split[o] == split[c] for o, c in zip(truth.original, truth["copy"], strict=True))


def test_a_store_without_fingerprints_is_refused_in_one_line(synth_small: Path,
                                                             tmp_path: Path, capsys) -> None:
    out = tmp_path / "old.zarr"
    xraybatch.ingest(synth_small, out, labels="kermany3")
    group = zarr.open_group(out, mode="r+")
    for name in ("fp_hash", "fp_thumb"):
        del group[name]
    zarrio.consolidate(group)
    with pytest.raises(StoreError, match="no content fingerprints.*--overwrite"):
        dups.near_duplicate_pairs(xraybatch.open(out))
    assert main(["dups", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert main(["stats", str(out)]) == 0  # stats still work, and say why there are no counts
    assert "no content fingerprints" in capsys.readouterr().out


def test_dups_help_ends_with_examples(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["dups", "--help"])
    help_text = capsys.readouterr().out
    assert "examples:" in help_text and help_text.rstrip().splitlines()[-1].strip().startswith(
        "xraybatch dups")


def test_all_pairs_of_identical_files_are_exact(real_planted) -> None:
    ds, _, natural = real_planted
    found = dups.find([ds])
    for a, b in map(tuple, natural):
        rows = found[((found.path_a == a) & (found.path_b == b))
                     | ((found.path_a == b) & (found.path_b == a))]
        assert len(rows) == 1 and rows.exact.all() and (rows.score >= 0.999).all()
    assert not list(itertools.islice((r for r in found.itertuples() if r.exact and
                                      frozenset((r.path_a, r.path_b)) not in natural), 1))


def test_verification_on_a_distributed_client_equals_threads(real_planted) -> None:
    """The prefilter and verification tasks run on a Dask client as on local threads (the
    workers read the thumbnails from the store themselves)."""
    distributed = pytest.importorskip("distributed")
    ds, _, _ = real_planted
    pairs = dups_candidates.candidate_pairs(ds.fingerprint_codes(), np.flatnonzero(ds.valid))[:300]
    sources = dups_scoring.Sources((ds.ref,), (0,))
    local = dups_scoring.verify(sources, pairs, "threads")
    kept = dups_scoring.prefilter(sources, pairs, "threads")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        remote = dups_scoring.verify(sources, pairs, client)
        np.testing.assert_array_equal(dups_scoring.prefilter(sources, pairs, client), kept)
    np.testing.assert_array_equal(local, remote)
    assert len(local) == len(pairs) == len(kept)


def test_benchmark_quick_smoke(synth_small: Path, tmp_path: Path) -> None:
    """benchmarks/dups.py --quick (seeded): the set, the scoring, the search alone and the cost."""
    bench = _bench()
    assert bench.main([str(synth_small), "--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "dups.json").read_text())
    default = [r for r in result["table"] if "(default)" in r["tool"]][0]
    assert default["planted"] == 2 * len(bench.KINDS) and default["found"] == default["planted"]
    assert result["search"][0]["n"] == 20_000 and result["search"][0]["candidates"] > 0
    whole = result["pipeline"][0]
    assert whole["n"] == 5000 and 0 < whole["verified"] <= whole["candidates"]
    assert whole["planted_found"] <= whole["planted_past_prefilter"] <= whole[
        "planted_in_candidates"]
    assert 0 < result["fingerprint_cost"]["fingerprint_ms"] < result["fingerprint_cost"][
        "decode_ms"]


def test_prefilter_keeps_every_pair_that_verifies_and_drops_most_others(real_planted) -> None:
    """On real films: every candidate pair that align_score (the plain reference, on every
    candidate) scores at or above the default threshold passes the prefilter; most candidate
    pairs of different films do not; the reported pairs carry align_score's own scores."""
    ds, truth, natural = real_planted
    pairs = dups_candidates.candidate_pairs(ds.fingerprint_codes(), np.flatnonzero(ds.valid))
    thumbs = ds.fingerprint_thumbs(np.arange(len(ds)))
    reference = fingerprint.align_scores(thumbs[pairs[:, 0]], thumbs[pairs[:, 1]])
    keep = dups_scoring.prefilter(dups_scoring.Sources((ds.ref,), (0,)), pairs)
    verified = reference >= dups.DEFAULT_THRESHOLD
    assert verified.sum() >= len(truth) and keep[verified].all()
    group = _bench().same_content(truth, natural)
    paths = ds.paths
    different = np.array([group.get(paths[a], paths[a]) != group.get(paths[b], paths[b])
                          for a, b in pairs])
    assert different.sum() > 1000 and keep[different].mean() < 0.1
    found = dups.near_duplicate_pairs(ds, keep=False)
    expected = dict(zip(map(tuple, pairs.tolist()), reference, strict=True))
    for a, b, score in zip(found.a, found.b, found.score, strict=True):
        assert score == expected.get((a, b), 1.0)  # exact copies: 1.0
