"""``xraybatch split``: groups never straddle splits, --keep, seeds, --restore, ratios,
stratification, the store's records, and the readers that follow the new split."""

from __future__ import annotations

import functools
import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

import xraybatch
from xraybatch import lock, splits, store, zarrio
from xraybatch.cli import main
from xraybatch.location import StoreRef
from xraybatch.report import write_report
from xraybatch.scan import scan
from xraybatch.synth_dicom import synth_dicom

CLASSES = ["NORMAL", "BACTERIA", "VIRUS"]


# --- helpers --------------------------------------------------------------------------------


def make_store(out: Path, patient: list[str] | np.ndarray, label: np.ndarray,
               split: list[str] | np.ndarray, findings: pd.DataFrame | None = None,
               complete: bool = True) -> Path:
    """A store with what a scan knows and no image (all rows invalid), marked complete."""
    n = len(label)
    order = ["train", "val", "test", "none"]
    names = [s for s in order if s in set(split)]
    manifest = pd.DataFrame({"path": [f"img{i}.png" for i in range(n)], "split": split,
                             "label": label, "bytes": np.full(n, 10),
                             "patient_id": np.asarray(patient, dtype=object)})
    classes = list(findings.columns) if findings is not None else CLASSES
    group = store.create(StoreRef(str(out)), manifest, size=8, chunk=64, classes=classes,
                         splits=names, attrs={}, findings=findings)
    if complete:
        store.mark_complete(group, {})
    return out


def small_groups(n: int, seed: int, max_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Patient ids of many small groups (a tenth of rows without id) and their class
    (60/25/15 by patient)."""
    rng = np.random.default_rng(seed)
    patient = np.repeat(np.arange(n), rng.integers(1, max_size + 1, n))[:n]
    label = rng.choice(3, patient.max() + 1, p=[0.6, 0.25, 0.15])[patient].astype(np.int16)
    ids = np.char.add("p", patient.astype(str)).astype(object)
    ids[rng.random(n) < 0.1] = ""
    return ids, label


def leaky_split(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.array(["train", "val", "test"]), n,
                                              p=[0.7, 0.15, 0.15])


def reference_components(*partitions: np.ndarray) -> np.ndarray:
    """Plain union-find over rows, labels in order of each component's first row."""
    n = len(partitions[0])
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for codes in partitions:
        first: dict[int, int] = {}
        for i, c in enumerate(codes.tolist()):
            if c in first:
                a, b = root(i), root(first[c])
                parent[max(a, b)] = min(a, b)
            else:
                first[c] = i
    labels: dict[int, int] = {}
    return np.array([labels.setdefault(root(i), len(labels)) for i in range(n)])


def spread(keys: np.ndarray, split: np.ndarray) -> int:
    """How many keys (not "") are in more than one split."""
    frame = pd.DataFrame({"k": keys, "s": split})
    frame = frame[frame.k != ""]
    return int((frame.groupby("k").s.nunique() > 1).sum())


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def dicom_store(tmp_path_factory) -> Path:
    """A DICOM tree with two patients planted across splits, ingested."""
    pytest.importorskip("pydicom")
    root = tmp_path_factory.mktemp("split_dicom")
    synth_dicom(root / "src", n=40, seed=2, scale=0.05, leaked=2)
    xraybatch.ingest(root / "src", root / "x.zarr", size=16, labels="kermany3",
                     scheduler="sync")
    return root / "x.zarr"


@pytest.fixture
def dicom_copy(dicom_store: Path, tmp_path: Path) -> Path:
    shutil.copytree(dicom_store, tmp_path / "x.zarr")
    return tmp_path / "x.zarr"


# --- groups ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_components_equal_a_plain_union_find(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    a = rng.integers(0, 120, n)
    b = rng.integers(0, 200, n)
    c = np.arange(n)  # all alone: changes nothing
    assert splits.components(a, b, c).tolist() == reference_components(a, b, c).tolist()
    assert splits.components(a).tolist() == reference_components(a).tolist()
    chain = np.arange(n) // 2  # rows 2k, 2k+1 ...
    shifted = (np.arange(n) + 1) // 2  # ... and 2k+1, 2k+2: one chain through every row
    assert set(splits.components(chain, shifted).tolist()) == {0}
    assert splits.components(np.zeros(0, np.int64)).tolist() == []  # no rows


def test_rows_without_patient_are_alone() -> None:
    codes = splits.patient_partition(np.array(["", "a", "", "a", "b"], dtype=object))
    assert codes[1] == codes[3] and len(set(codes.tolist())) == 4


# --- the split on real stores ---------------------------------------------------------------


def test_split_by_patient_removes_planted_leaks(dicom_copy: Path, capsys) -> None:
    code, out, _ = cli(capsys, "stats", dicom_copy, "--json")
    assert json.loads(out)["patients"]["in_several_splits"]["count"] == 2
    code, out, err = cli(capsys, "split", dicom_copy, "--by", "patient", "--seed", "1")
    assert code == 0, err
    assert "no group is in more than one split" in out
    code, out, _ = cli(capsys, "stats", dicom_copy, "--json")
    stats = json.loads(out)
    assert code == 0 and stats["patients"]["in_several_splits"]["count"] == 0
    assert cli(capsys, "stats", dicom_copy, "--strict")[0] == 0
    ds = xraybatch.open(str(dicom_copy))
    manifest = ds.manifest
    assert spread(manifest.patient_id.to_numpy(), manifest.split.to_numpy()) == 0
    # stats per split follow the new split (counted here from the manifest)
    valid = manifest[manifest.valid]
    for s in ds.splits:
        assert sum(v["images"] for v in stats["per_split_class"][s].values()) == int(
            (valid.split == s).sum())
    pytest.importorskip("matplotlib")
    page = write_report(dicom_copy, dicom_copy.parent / "report").index.read_text()
    assert "Patients in more than one split" not in page  # (test_patients: shown before)


def test_kermany_names_in_a_folder(synth_copy: Path, tmp_path: Path, capsys) -> None:
    """Plant a train patient in test under a Kermany name; the split puts it in one split."""
    train = sorted((synth_copy / "train" / "NORMAL").glob("IM-*.jpeg"))[0]
    patient = train.name.rsplit("-", 1)[0]
    shutil.copy(train, synth_copy / "test" / "NORMAL" / f"{patient}-0009.jpeg")
    out = tmp_path / "k.zarr"
    xraybatch.ingest(synth_copy, out, size=16, labels="kermany3", scheduler="sync")
    assert xraybatch.open(str(out)).stats()["patients"]["in_several_splits"]["count"] >= 1
    assert cli(capsys, "split", out, "--by", "patient", "--stratify")[0] == 0
    assert xraybatch.open(str(out)).stats()["patients"]["in_several_splits"]["count"] == 0


def test_readers_follow_the_new_split(tmp_path: Path, capsys) -> None:
    """A store without split folders ("none") gets train/val/test appended: every reader."""
    ids, label = small_groups(400, 0)
    out = make_store(tmp_path / "s.zarr", ids, label, ["none"] * 400)
    code, _, err = cli(capsys, "split", out, "--by", "patient", "--ratios", "0.6,0.2,0.2")
    assert code == 0, err
    ds = xraybatch.open(str(out))
    assert ds.splits == ["none", "train", "val", "test"]
    counts = ds.attrs["split_assignment"]["counts"]
    assert counts == {s: int((ds.split == i).sum()) for i, s in enumerate(ds.splits)}
    assert counts["none"] == 0 and (ds.original_split == 0).all()
    assert (ds.manifest.split.value_counts().to_dict()
            == {s: n for s, n in counts.items() if n})
    xr = pytest.importorskip("xarray")
    x = ds.to_xarray()
    assert (x.split_name.values == np.asarray(ds.splits)[ds.split]).all()
    assert x.split.attrs["flag_meanings"] == "none train val test"
    # the consolidated metadata was rewritten: zarr and xarray read it alone
    consolidated = zarr.open_group(str(out), mode="r", use_consolidated=True)
    assert consolidated["split"].attrs["flag_values"] == [0, 1, 2, 3]
    assert consolidated["split_original"].attrs["flag_meanings"] == "none"
    assert xr.open_zarr(str(out), consolidated=True).split.attrs["flag_values"] == [0, 1, 2, 3]


def test_torch_dataset_follows_the_new_split(dicom_copy: Path, capsys) -> None:
    pytest.importorskip("torch")
    from xraybatch.torch_dataset import XrayDataset

    assert cli(capsys, "split", dicom_copy, "--by", "patient", "--ratios", "0.5,0.5")[0] == 0
    ds = xraybatch.open(str(dicom_copy))
    for name in ("train", "test"):
        expected = np.flatnonzero((ds.split == ds.splits.index(name)) & ds.valid)
        assert XrayDataset(str(dicom_copy), split=name).rows.tolist() == expected.tolist()


# --- content groups (monkeypatched duplicate_groups) ---------------------------------------


def test_content_and_patient_groups_are_joined(tmp_path: Path, monkeypatch, capsys) -> None:
    n = 600
    ids, label = small_groups(n, 3)
    out = make_store(tmp_path / "c.zarr", ids, label, leaky_split(n, 3))
    rng = np.random.default_rng(5)
    content = np.arange(n)
    a, b = rng.choice(n, (2, 80), replace=False)  # 80 near-duplicate pairs across patients
    content[b] = content[a]
    seen = {}

    def groups(ds, threshold=None):
        seen["threshold"] = threshold
        return content.copy()

    monkeypatch.setattr(splits, "content_groups", groups)
    for by in ("content", "patient,content"):
        code, _, err = cli(capsys, "split", out, "--by", by, "--threshold", "0.9")
        assert code == 0, err
        assert seen["threshold"] == 0.9
        split = xraybatch.open(str(out)).split
        assert spread(content.astype(str).astype(object), split) == 0
        if by == "content":
            assert spread(ids, split) > 0  # patients alone are not joined
    assert spread(ids, split) == 0
    # each joined group (an independent union-find) is in exactly one split
    joined = reference_components(splits.patient_partition(ids), content)
    assert (pd.Series(split).groupby(joined).nunique() == 1).all()
    assert xraybatch.open(str(out)).attrs["split_assignment"]["by"] == ["patient", "content"]


# --- --keep, seeds, --restore ---------------------------------------------------------------


def test_keep_test_leaves_test_rows_and_pulls_in_their_groups(tmp_path: Path, capsys) -> None:
    n = 2000
    ids, label = small_groups(n, 1)
    out = make_store(tmp_path / "k.zarr", ids, label, leaky_split(n, 1))
    before = xraybatch.open(str(out)).split
    test = before == 2
    code, _, err = cli(capsys, "split", out, "--by", "patient", "--keep", "test")
    assert code == 0, err
    after = xraybatch.open(str(out)).split
    assert (after[test] == 2).all()
    touching = np.isin(ids, ids[test & (ids != "")]) & (ids != "")
    assert (after[touching] == 2).all()
    assert ((after == 2) == (test | touching)).all()  # nobody else joins test
    assert spread(ids, after) == 0
    rest = ~(test | touching)  # split 8:1 between train and val
    assert abs((after[rest] == 0).mean() - 8 / 9) < 0.01
    assert xraybatch.open(str(out)).attrs["split_assignment"]["keep"] == "test"


def test_same_seed_same_split_other_seed_another(tmp_path: Path, capsys) -> None:
    n = 1000
    ids, label = small_groups(n, 2)
    out = make_store(tmp_path / "r.zarr", ids, label, leaky_split(n, 2))
    results = {}
    for seed in (0, 1, 0):
        assert cli(capsys, "split", out, "--by", "patient", "--stratify", "--seed", seed)[0] == 0
        ds = xraybatch.open(str(out))
        results.setdefault(seed, []).append((ds.split, ds.attrs["split_token"]))
    (first, token), (again, token_again) = results[0]
    assert (first == again).all() and token == token_again
    other, other_token = results[1][0]
    assert (first != other).mean() > 0.05 and other_token != token


def test_restore_gives_back_the_scan_split(dicom_copy: Path, capsys) -> None:
    src = Path(xraybatch.open(str(dicom_copy)).attrs["source"])
    found = scan(src, labels="kermany3").manifest
    scanned = found.split.map({s: i for i, s in enumerate(["train", "val", "test"])})
    first = xraybatch.open(str(dicom_copy))
    assert (first.split == scanned.to_numpy()).all()
    for args in (["--by", "patient"], ["--by", "patient", "--ratios", "0.5,0.5", "--seed", "4"]):
        assert cli(capsys, "split", dicom_copy, *args)[0] == 0
    assert (xraybatch.open(str(dicom_copy)).split != scanned.to_numpy()).any()
    code, out, _ = cli(capsys, "split", dicom_copy, "--restore")
    assert code == 0 and "scan's split" in out
    ds = xraybatch.open(str(dicom_copy))
    assert (ds.split == scanned.to_numpy()).all() and (ds.original_split == ds.split).all()
    assert ds.attrs["split_token"] == store.split_token(ds.split, ds.splits)
    assert ds.attrs["split_assignment"]["method"] == "scan"
    history = ds.attrs["history"]
    assert [h["action"] for h in history] == ["ingest"] + ["split"] * 3
    assert [h["version"] for h in history] == [1, 2, 3, 4] and ds.attrs["version"] == 4
    assert history[-1]["source"] == "xraybatch split --restore"
    assert "split_pending" not in ds.attrs


def test_store_without_split_original_saves_it_first(tmp_path: Path, capsys) -> None:
    """Stores written before split_original existed: it is made from split, then restored."""
    ids, label = small_groups(300, 4)
    out = make_store(tmp_path / "old.zarr", ids, label, leaky_split(300, 4))
    group = zarr.open_group(str(out), mode="r+")
    original = group["split"][:]
    del group["split_original"]
    zarrio.consolidate(group)
    assert "split_original" not in xraybatch.open(str(out)).group
    assert cli(capsys, "split", out, "--by", "patient", "--ratios", "0.5,0.5")[0] == 0
    ds = xraybatch.open(str(out))
    assert (ds.original_split == original).all() and (ds.split != original).any()
    saved, active = ds.array("split_original"), ds.array("split")
    assert (saved.compressors, saved.chunks) == (active.compressors, active.chunks)
    assert cli(capsys, "split", out, "--restore")[0] == 0
    assert (xraybatch.open(str(out)).split == original).all()


def test_dry_run_writes_nothing(tmp_path: Path, capsys) -> None:
    ids, label = small_groups(300, 5)
    out = make_store(tmp_path / "d.zarr", ids, label, leaky_split(300, 5))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, text, _ = cli(capsys, "split", out, "--by", "patient", "--dry-run", "--json")
    summary = json.loads(text)
    assert code == 0 and summary["written"] is False and summary["version"] is None
    assert sum(s["images"] for s in summary["per_split"].values()) == 300
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


# --- ratios and stratification --------------------------------------------------------------


@pytest.mark.parametrize("ratios", ["0.8,0.1,0.1", "0.7,0.3", "0.6,0,0.4"])
def test_ratios_are_honoured_within_a_group(tmp_path: Path, capsys, ratios: str) -> None:
    n = 3000
    ids, label = small_groups(n, 6)
    out = make_store(tmp_path / "r.zarr", ids, label, leaky_split(n, 6))
    code, text, _ = cli(capsys, "split", out, "--by", "patient", "--ratios", ratios, "--json")
    assert code == 0
    per_split = json.loads(text)["per_split"]
    largest = pd.Series(ids[ids != ""]).value_counts().max()
    for name, r in splits.parse_ratios(ratios).items():
        assert abs(per_split[name]["images"] - r * n) <= largest, (name, per_split)


@pytest.mark.parametrize("seed", range(3))
def test_stratified_classes_within_one_point(tmp_path: Path, capsys, seed: int) -> None:
    n = 6000
    ids, label = small_groups(n, 10 + seed)
    out = make_store(tmp_path / "s.zarr", ids, label, leaky_split(n, seed))
    code, _, err = cli(capsys, "split", out, "--by", "patient", "--stratify", "--seed", seed)
    assert code == 0, err
    split = xraybatch.open(str(out)).split
    whole = np.bincount(label, minlength=3) / n
    for s in range(3):
        share = np.bincount(label[split == s], minlength=3) / (split == s).sum()
        assert np.abs(share - whole).max() < 0.01, (s, share, whole)
    assert spread(ids, split) == 0


def test_stratified_multilabel_findings_within_one_point(tmp_path: Path, capsys) -> None:
    n = 8000
    ids, _ = small_groups(n, 20)
    rng = np.random.default_rng(20)
    names = [f"F{i}" for i in range(6)]
    positive = rng.random((n, 6)) < np.array([0.3, 0.2, 0.1, 0.08, 0.05, 0.03])
    findings = pd.DataFrame(np.where(positive, 1, rng.choice([0, -1, -2], (n, 6))).astype(
        np.int8), columns=names)
    out = make_store(tmp_path / "m.zarr", ids, np.full(n, -1, np.int16), leaky_split(n, 20),
                     findings=findings)
    assert cli(capsys, "split", out, "--by", "patient", "--stratify")[0] == 0
    split = xraybatch.open(str(out)).split
    for s in range(3):
        assert np.abs(positive[split == s].mean(0) - positive.mean(0)).max() < 0.01


def test_deal_honours_ratios_for_singletons() -> None:
    where = splits.deal(np.arange(1000), np.array([0.8, 0.1, 0.1]), np.random.default_rng(0))
    assert np.bincount(where).tolist() == [800, 100, 100]


def test_large_groups_are_placed_first() -> None:
    """One group of 30% and 70 singletons: 70/30 is reachable, and found."""
    groups = np.r_[np.zeros(30, int), np.arange(1, 71)]
    where = splits.deal(groups, np.array([0.7, 0.3]), np.random.default_rng(0))
    assert np.bincount(where[groups]).tolist() == [70, 30]


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--by", "patient", "--ratios", "0.8,0.3"], "sum to"),
    (["--by", "patient", "--ratios", "0.5,0.2,0.2,0.1"], "--ratios"),
    (["--by", "patient", "--ratios", "a,b"], "--ratios"),
    (["--by", "file"], "--by 'file'"),
    ([], "--by is needed"),
    (["--restore", "--by", "patient"], "--restore"),
    (["--by", "patient", "--keep", "holdout"], "no split holdout"),
])
def test_bad_arguments_are_one_line(tmp_path: Path, capsys, args, message) -> None:
    ids, label = small_groups(50, 0)
    out = make_store(tmp_path / "b.zarr", ids, label, leaky_split(50, 0))
    code, _, err = cli(capsys, "split", out, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_incomplete_and_busy_stores_are_refused(tmp_path: Path, capsys) -> None:
    ids, label = small_groups(50, 0)
    out = make_store(tmp_path / "i.zarr", ids, label, leaky_split(50, 0), complete=False)
    code, _, err = cli(capsys, "split", out, "--by", "patient")
    assert code == 2 and "INCOMPLETE" in err and len(err.strip().splitlines()) == 1
    out = make_store(tmp_path / "l.zarr", ids, label, leaky_split(50, 0))
    with lock.locked(StoreRef(str(out))):
        code, _, err = cli(capsys, "split", out, "--by", "patient")
    assert code == 2 and "being written" in err
    code, _, err = cli(capsys, "split", tmp_path / "nothing.zarr", "--by", "patient")
    assert code == 2 and "no store" in err


def test_format1_store_is_refused_untouched(tmp_path: Path, monkeypatch, capsys) -> None:
    """A store of format 1 (written before versions and history, and before split_original)
    has no version 1 for a split to follow: refused in one line, nothing written; a dry run
    still shows what a split would do."""
    ids, label = small_groups(100, 3)
    with monkeypatch.context() as m:
        m.setattr(store, "create", functools.partial(store.create, checksums=False))
        out = make_store(tmp_path / "old.zarr", ids, label, leaky_split(100, 3))
    group = zarr.open_group(str(out), mode="r+")
    del group["split_original"]
    zarrio.consolidate(group)
    assert "format_version" not in group.attrs
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for args in (["--by", "patient"], ["--restore"]):
        code, _, err = cli(capsys, "split", out, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "format-1 store" in err and "ingest it anew once with --overwrite" in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files
    assert cli(capsys, "split", out, "--by", "patient", "--dry-run")[0] == 0


# --- the benchmark --------------------------------------------------------------------------


def test_benchmark_smoke(monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    bench = importlib.import_module("split")
    monkeypatch.setattr(bench, "CONFIGS", {"both": ["--by", "patient,content", "--stratify"]})
    assert bench.main(["--n", "3000", "--rounds", "1", "--no-sklearn"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.lstrip().startswith("xraybatch split")]
    assert len(rows) == 1 and "leaked_patients  leaked_duplicates" in out
    assert rows[0].split()[-4:-2] == ["0", "0"]  # no patient, no near-duplicate group leaks
    scan = next(line for line in out.splitlines() if line.startswith("scan's split"))
    assert "'leaked_patients': 0," not in scan  # (the scan's split leaks)


@pytest.mark.parametrize("members", [False, True])
def test_the_cut_alone_splits_each_stratum_in_the_ratios(monkeypatch, members: bool) -> None:
    """Large stores go through the vectorised cut: here with nothing placed one by one."""
    monkeypatch.setattr(splits, "RESERVE_GROUPS", 0)
    monkeypatch.setattr(splits, "GREEDY_GROUPS", 0)
    ids, label = small_groups(20_000, 7, max_size=3)
    groups = splits.components(splits.patient_partition(ids))
    member = label[:, None] == np.arange(3)
    ratios = np.array([0.8, 0.1, 0.1])
    split = splits.deal(groups, ratios, np.random.default_rng(1),
                        member if members else None)[groups]
    share = np.bincount(split, minlength=3) / len(split)
    assert np.abs(share - ratios).max() < 0.002
    if members:  # each class's own cut: within a few groups
        for s in range(3):
            assert np.abs(member[split == s].mean(0) - member.mean(0)).max() < 0.005


def test_an_interrupted_split_is_known_and_mended(tmp_path: Path, monkeypatch, capsys) -> None:
    """Killed after the split chunks, before the commit: the store says so until a split or
    a restore commits."""
    ids, label = small_groups(300, 8)
    out = make_store(tmp_path / "x.zarr", ids, label, leaky_split(300, 8))
    scanned = xraybatch.open(str(out)).split

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(store.versions, "history_attrs", killed)  # called by write_split
        assert cli(capsys, "split", out, "--by", "patient")[0] == 130
    ds = xraybatch.open(str(out))
    assert "split_pending" in ds.attrs and "split_assignment" not in ds.attrs
    code, _, err = cli(capsys, "stats", out)
    assert code == 0 and "interrupted 'xraybatch split'" in err
    assert cli(capsys, "split", out, "--restore")[0] == 0
    ds = xraybatch.open(str(out))
    assert "split_pending" not in ds.attrs and (ds.split == scanned).all()
    assert cli(capsys, "stats", out)[2] == ""


def test_properties_of_components_and_deal() -> None:
    """Any partitions, ratios and classes: the union equals a plain union-find, and every
    group gets one split of positive ratio."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies

    @hypothesis.settings(max_examples=40, deadline=None, database=None)
    @hypothesis.given(st.integers(1, 60).flatmap(lambda n: st.tuples(
        st.lists(st.integers(0, n), min_size=n, max_size=n),
        st.lists(st.integers(0, n), min_size=n, max_size=n),
        st.lists(st.integers(0, 2), min_size=n, max_size=n))),
        st.lists(st.integers(0, 5), min_size=2, max_size=3).filter(any),
        st.booleans(), st.integers(0, 2**32 - 1))
    def check(rows, weights, stratify, seed) -> None:
        a, b, label = (np.array(x) for x in rows)
        groups = splits.components(a, b)
        assert groups.tolist() == reference_components(a, b).tolist()
        ratios = np.array(weights, float) / sum(weights)
        where = splits.deal(groups, ratios, np.random.default_rng(seed),
                            (label[:, None] == np.arange(3)) if stratify else None)
        assert len(where) == groups.max() + 1
        assert set(where.tolist()) <= set(np.flatnonzero(ratios > 0).tolist())

    check()
