"""sources/tables.py and the table side of scan(): column mappings, presets, path lookup,
reason codes (nothing dropped silently), Parquet, and one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tables_corpus as tc

from xraybatch import cli
from xraybatch.scan import ScanError, scan
from xraybatch.sources import TABLE_PRESETS, listing, tables


def _files(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x" * (1 + len(rel)))


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    return tc.nih(tmp_path_factory.mktemp("nih"), n=30)


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> Path:
    return tc.chexpert(tmp_path_factory.mktemp("chexpert"), n=30)


def test_nih_preset_reads_the_real_layout(nih: Path) -> None:
    s = scan(None, files=nih, columns=tables.PRESETS["nih"])
    table = pd.read_csv(nih)  # independent: pandas on the whole table
    assert s.classes == [*tc.NIH_FINDINGS, "No Finding"]
    assert len(s.manifest) == len(table) and s.skipped.empty
    # Bare file names in the table, found below images_00K/images/ by name.
    by_name = {p.rsplit("/", 1)[-1]: i for i, p in enumerate(s.manifest.path)}
    for row in table.itertuples():
        i = by_name[row[1]]
        assert (nih.parent / s.manifest.path[i]).name == row[1]
        expected = {c: int(c in row[2].split("|")) for c in s.classes}
        assert s.findings.iloc[i].to_dict() == expected
        assert s.manifest.patient_id[i] == str(row[4])
        assert s.manifest.bytes[i] == (nih.parent / s.manifest.path[i]).stat().st_size
    assert s.splits == ["none"] and (s.manifest.label == -1).all()
    assert list(s.manifest.path) == sorted(s.manifest.path)  # store order


def test_chexpert_preset_values_split_patient(chexpert: Path) -> None:
    s = scan(chexpert, columns=tables.PRESETS["chexpert"])  # SRC may be the table itself
    table = pd.read_csv(chexpert)
    assert s.classes == tc.CHEXPERT_FINDINGS and s.splits == ["train"]
    # Real CheXpert paths start with the folder the table sits in: that prefix is dropped.
    rel = table.Path.str.removeprefix("CheXpert-v1.0-small/")
    order = {p: i for i, p in enumerate(s.manifest.path)}
    rows = [order[p] for p in rel]
    expected = table[tc.CHEXPERT_FINDINGS].fillna(-2).astype(int).to_numpy()
    np.testing.assert_array_equal(s.findings.to_numpy()[rows], expected)
    assert s.findings.dtypes.unique().tolist() == [np.int8]
    assert list(s.manifest.patient_id[rows]) == list(rel.str.extract(r"(patient\d+)")[0])
    assert (s.manifest.bytes > 0).all()


def test_reason_codes_nothing_dropped(tmp_path: Path) -> None:
    _files(tmp_path, "a.png", "b.png", "c.png", "d.png", "e.png")
    (tmp_path / "t.csv").write_text(
        "file,tags,fold\n"
        "a.png,cat|dog,train\n"
        "b.png,,train\n"          # empty label
        "c.png,cat,holdout\n"     # unknown split
        "a.png,dog,train\n"       # a second row for a.png
        "gone.png,cat,test\n"     # listed but absent: kept, the decoder says 'missing'
        "/elsewhere/x.png,cat,test\n"
        "d.png,dog; cat,val\n"    # with a fixed class list: an unknown finding
        "e.png,dog,valid\n")
    spec = tables.columns_for(None, path="file", labels="tags", split="fold")
    s = scan(tmp_path, files=tmp_path / "t.csv", columns=spec)
    got = dict(zip(s.skipped.path, s.skipped.reason, strict=True))
    assert got == {"b.png": "bad_label", "c.png": "bad_split", "a.png": "duplicate_row",
                   "/elsewhere/x.png": "outside_root"}
    assert set(got.values()) <= set(tables.REASONS)
    assert len(s.manifest) + len(s.skipped) == 8
    assert s.manifest.set_index("path").bytes.to_dict()["gone.png"] == -1
    assert s.splits == ["train", "val", "test"]
    assert s.classes == ["cat", "dog", "dog; cat"]  # no fixed list: every token is a class
    fixed = tables.columns_for(None, path="file", labels="tags", split="fold",
                               classes=("cat", "dog"))
    s = scan(tmp_path, files=tmp_path / "t.csv", columns=fixed)
    assert dict(zip(s.skipped.path, s.skipped.reason, strict=True))["d.png"] == "bad_label"


def test_chexpert_value_not_understood(tmp_path: Path) -> None:
    _files(tmp_path, "x/a.jpg", "x/b.jpg")
    (tmp_path / "t.csv").write_text("Path,Edema,Fracture\nx/a.jpg,1.0,\nx/b.jpg,2,0\n")
    s = scan(tmp_path, files=tmp_path / "t.csv",
             columns=tables.columns_for(None, path="Path", findings=("Edema", "Fracture")))
    assert s.skipped.values.tolist() == [["x/b.jpg", "bad_label"]]
    assert s.findings.values.tolist() == [[1, -2]]


def test_single_label_table_matches_folder_scan(synth_small: Path, tmp_path: Path) -> None:
    folder = scan(synth_small)
    table = tmp_path / "labels.csv"
    folder.manifest[["path", "class_name"]].sample(frac=1, random_state=0).rename(
        columns={"class_name": "diagnosis"}).to_csv(table, index=False)
    s = scan(synth_small, files=table, columns=tables.columns_for(None, label="diagnosis"))
    assert s.findings is None
    cols = ["path", "split", "class_name", "label", "bytes"]
    pd.testing.assert_frame_equal(s.manifest[cols], folder.manifest[cols])
    assert (s.classes, s.splits) == (folder.classes, folder.splits)


def test_parquet_same_as_csv(nih: Path, tmp_path: Path) -> None:
    pq = nih.parent / "entries.parquet"
    pd.read_csv(nih).to_parquet(pq)  # numbers stay numbers in Parquet
    a = scan(None, files=nih, columns=tables.PRESETS["nih"])
    b = scan(nih.parent, files=pq, columns=tables.PRESETS["nih"])
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    pd.testing.assert_frame_equal(a.findings, b.findings)


def test_parquet_without_pyarrow_is_one_line(nih: Path, monkeypatch, capsys) -> None:
    pq = nih.parent / "entries2.parquet"
    pd.read_csv(nih).to_parquet(pq)
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    assert cli.main(["ingest", str(pq), str(nih.parent / "x.zarr"), "--table-preset",
                     "nih"]) == 2
    assert capsys.readouterr().err == ("xraybatch ingest: error: Parquet tables need pyarrow: "
                                       "pip install 'xraybatch[parquet]'\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--path-column", "nope"], "table {t} has no column 'nope'"),
    (["--table-preset", "nih", "--label-column", "Finding Labels", "--labels-column", "x"],
     "a table needs exactly one label mapping"),
])
def test_mapping_errors_are_one_line(nih: Path, tmp_path: Path, capsys, args, message) -> None:
    if "--table-preset" not in args:
        args = [*args, "--label-column", "Finding Labels"]
    code = cli.main(["ingest", str(nih.parent), str(tmp_path / "o.zarr"), "--files", str(nih),
                     *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert message.format(t=nih) in err
    assert not (tmp_path / "o.zarr").exists()


def test_missing_root_and_empty_table(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("path,label\n")
    with pytest.raises(ScanError, match="root folder not found"):
        scan(tmp_path / "nowhere", files=tmp_path / "t.csv",
             columns=tables.columns_for(None, label="label"))
    with pytest.raises(ScanError, match="has no rows"):
        scan(None, files=tmp_path / "t.csv", columns=tables.columns_for(None, label="label"))


def test_presets_and_cli_choices_agree() -> None:
    assert tuple(tables.PRESETS) == TABLE_PRESETS


def test_streamed_listing_matches_os_walk(synth_copy: Path) -> None:
    (synth_copy / "__MACOSX").mkdir()
    (synth_copy / "__MACOSX" / "._x.jpeg").write_bytes(b"junk")
    (synth_copy / "train" / "loop").symlink_to(synth_copy / "train")
    got = dict(listing.walk(str(synth_copy)))
    expected = {p.relative_to(synth_copy).as_posix(): p.stat().st_size
                for p in synth_copy.rglob("*") if p.is_file() and "__MACOSX" not in p.parts
                and "loop" not in p.parts}
    assert got == expected


def test_no_file_found_all_rows_kept_as_missing(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("path,label\na.png,x\nsub/b.png,y\n")
    s = scan(None, files=tmp_path / "t.csv", columns=tables.columns_for(None, label="label"))
    assert s.manifest[["path", "bytes"]].values.tolist() == [["a.png", -1], ["sub/b.png", -1]]
    assert s.skipped.empty
