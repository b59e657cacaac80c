"""Multi-label stores from NIH- and CheXpert-style tables: the findings matrix, per-finding
statistics against an independent cv2/pandas reference, xarray, multi-hot targets, report;
and single-label table input stored bit for bit as folder input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tables_corpus as tc
from corpus import open_group

import xraybatch
from xraybatch import cli
from xraybatch.store import StoreError

SIZE = 32


def reference_hist(path: Path) -> np.ndarray:
    """Histogram of the stored image, computed with plain cv2 (PNG: full decode; the tiny
    JPEGs here are below 2 x SIZE, so fast mode decodes them fully too)."""
    image = cv2.resize(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE), (SIZE, SIZE),
                       interpolation=cv2.INTER_AREA)
    return np.bincount(image.ravel(), minlength=256)


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> tuple[Path, xraybatch.XrayStore]:
    table = tc.nih(tmp_path_factory.mktemp("nih"), n=40, seed=3)
    out = table.parent.parent / "nih.zarr"
    assert cli.main(["ingest", str(table.parent), str(out), "--files", str(table),
                     "--table-preset", "nih", "--size", str(SIZE), "--chunk", "16",
                     "--quiet"]) == 0
    return table, xraybatch.open(str(out))


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> tuple[Path, xraybatch.XrayStore]:
    table = tc.chexpert(tmp_path_factory.mktemp("chexpert"), n=40, seed=4)
    out = table.parent.parent / "chexpert.zarr"
    result = xraybatch.ingest(table, out, size=SIZE, chunk=16, table_preset="chexpert",
                              decode_mode="exact")
    assert result.n_stored == 40
    return table, xraybatch.open(str(out))


def test_nih_findings_and_stats_json_match_pandas(nih, capsys) -> None:
    table, ds = nih
    frame = pd.read_csv(table)
    assert ds.multilabel and ds.classes == [*tc.NIH_FINDINGS, "No Finding"]
    names = pd.Series([p.rsplit("/", 1)[-1] for p in ds.manifest.path])
    frame = frame.set_index("Image Index").loc[names]
    expected = np.array([[int(c in labels.split("|")) for c in ds.classes]
                         for labels in frame["Finding Labels"]], np.int8)
    np.testing.assert_array_equal(ds.findings, expected)
    assert list(ds.array("patient_id")[:]) == [str(p) for p in frame["Patient ID"]]
    assert (ds.labels == -1).all()

    assert cli.main(["stats", ds.ref.url, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    counts = frame["Finding Labels"].str.split("|").explode().value_counts()
    assert stats["class_counts"] == {c: int(counts.get(c, 0)) for c in ds.classes}
    assert stats["finding_counts"]["Edema"] == {
        "positive": int(counts.get("Edema", 0)),
        "negative": len(frame) - int(counts.get("Edema", 0)), "uncertain": 0, "not_stated": 0}
    # Per-finding histograms: an image counts under every finding it has (cv2 reference).
    hists = {p: reference_hist(table.parent / p) for p in ds.manifest.path}
    for i, c in enumerate(ds.classes):
        rows = np.flatnonzero(expected[:, i] == 1)
        want = sum((hists[ds.manifest.path[r]] for r in rows), np.zeros(256, np.int64))
        assert stats["per_class"][c]["hist"] == want.tolist(), c
        assert stats["per_class"][c]["images"] == len(rows)
    assert stats["global"]["hist"] == sum(hists.values()).tolist()
    co = np.array(stats["cooccurrence"]["matrix"])
    np.testing.assert_array_equal(co, expected.astype(int).T @ expected.astype(int))


def test_chexpert_states_match_pandas(chexpert) -> None:
    table, ds = chexpert
    frame = pd.read_csv(table)
    stats = ds.stats()
    for c in tc.CHEXPERT_FINDINGS:
        col = frame[c]
        assert stats["finding_counts"][c] == {
            "positive": int((col == 1).sum()), "negative": int((col == 0).sum()),
            "uncertain": int((col == -1).sum()), "not_stated": int(col.isna().sum())}, c
        assert stats["class_counts"][c] == int((col == 1).sum())
    splits = stats["per_split_class"]
    assert list(splits) == ["train"]
    assert splits["train"]["Edema"]["images"] == int((frame.Edema == 1).sum())
    positive = int((frame.Edema == 1).sum())
    assert stats["pos_weight"]["Edema"] == (len(frame) - positive) / positive


def test_multi_hot_targets(chexpert) -> None:
    _, ds = chexpert
    f = ds.findings
    zeros, ones = ds.multi_hot(), ds.multi_hot(uncertain=1.0)
    assert zeros.dtype == np.float32 and zeros.shape == f.shape
    np.testing.assert_array_equal(zeros, (f == 1).astype(np.float32))
    np.testing.assert_array_equal(ones, ((f == 1) | (f == -1)).astype(np.float32))


@pytest.mark.skipif(importlib.util.find_spec("xarray") is None, reason="needs xarray")
def test_xarray_reads_findings_without_xraybatch(chexpert) -> None:
    import xarray as xr

    _, ds = chexpert
    x = xr.open_zarr(ds.ref.url, zarr_format=3)
    assert x.findings.dims == ("sample", "finding") and x.findings.dtype == np.int8
    assert list(x.finding.values) == tc.CHEXPERT_FINDINGS
    assert x.findings.sel(finding="Edema").values.tolist() == ds.findings[:, 5].tolist()
    assert x.findings.attrs["flag_meanings"] == "not_stated uncertain negative positive"
    assert list(ds.to_xarray().class_name.values) == list(ds.manifest.class_name)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_torch_multi_hot(chexpert) -> None:
    _, ds = chexpert
    from xraybatch.torch_dataset import XrayDataset

    data = XrayDataset(ds.ref.url, uncertain=1.0)
    image, target = data[3]
    assert tuple(image.shape) == (1, SIZE, SIZE)
    assert target.tolist() == ds.multi_hot(1.0)[3].tolist()


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_report_of_a_multilabel_store(nih, tmp_path) -> None:
    _, ds = nih
    result = xraybatch.write_report(ds, tmp_path / "r")
    page = result.index.read_text()
    assert "Co-occurrence" in page and "Findings as stated" in page
    manifest = pd.read_csv(tmp_path / "r" / "manifest.csv", keep_default_na=False)
    assert list(manifest.class_name) == list(ds.manifest.class_name)
    assert "Effusion" in " ".join(manifest.class_name)


def test_single_label_table_stores_as_folder(synth_small: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder.zarr"
    xraybatch.ingest(synth_small, folder, size=SIZE, chunk=16)
    table = tmp_path / "t.csv"
    manifest = xraybatch.scan(synth_small).manifest
    manifest[["path", "class_name"]].iloc[::-1].to_csv(table, index=False)
    via_table = tmp_path / "table.zarr"
    xraybatch.ingest(synth_small, via_table, size=SIZE, chunk=16, files=table,
                     columns={"label": "class_name"})
    a, b = open_group(folder), open_group(via_table)
    assert "findings" not in b
    for name in a.array_keys():
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)  # NaN == NaN
    assert a.attrs["classes"] == b.attrs["classes"]
    assert xraybatch.open(str(folder)).stats() == xraybatch.open(str(via_table)).stats()


def test_single_label_store_arrays_unchanged(synth_small: Path, tmp_path: Path) -> None:
    """A folder ingest writes exactly today's arrays plus the new per-image ones."""
    g = open_group(xraybatch.ingest(synth_small, tmp_path / "s.zarr", size=SIZE).out)
    assert "findings" not in g and "label_kind" not in g.attrs
    hist = g["hist"][:].astype(np.float64)
    n = hist.sum(1)
    valid = g["valid"][:]
    mean = hist @ np.arange(256) / np.where(n, n, 1)
    np.testing.assert_array_equal(g["mean"][:], np.where(valid, mean, 0))
    assert list(g["patient_id"][:]) == list(xraybatch.scan(synth_small).manifest.patient_id)


def test_resume_refuses_changed_findings(tmp_path) -> None:
    table = tc.chexpert(tmp_path, n=20, seed=6)
    out = tmp_path / "r.zarr"
    xraybatch.ingest(table, out, size=SIZE, chunk=8, table_preset="chexpert")
    assert xraybatch.open(str(out)).attrs["label_scheme"] == f"table {table} preset chexpert"
    assert xraybatch.ingest(table, out, size=SIZE, chunk=8, table_preset="chexpert",
                            resume=True).chunks_run == 0
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame.loc[0, "Edema"] = "1.0" if frame.loc[0, "Edema"] != "1.0" else "0.0"
    frame.to_csv(table, index=False)  # same files, one finding changed
    with pytest.raises(StoreError, match="source files changed"):
        xraybatch.ingest(table, out, size=SIZE, chunk=8, table_preset="chexpert", resume=True)
