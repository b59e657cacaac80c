"""sources/tables.py and the table side of scan(): column mappings, presets, path lookup,
reason codes (nothing dropped silently), Parquet, and one-line errors."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tables_corpus as tc

import xraybatch
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


# --- tables as users write them (issue 18) --------------------------------------------------


def _same_scan(a, b) -> None:
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    pd.testing.assert_frame_equal(a.skipped, b.skipped)
    if a.findings is None:
        assert b.findings is None
    else:
        pd.testing.assert_frame_equal(a.findings, b.findings)
    assert (a.classes, a.splits) == (b.classes, b.splits)


def _halves(nih: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two tables read from two files, as train and valid usually are (each 0, 1, 2, ...)."""
    table = pd.read_csv(nih)
    return table.iloc[:18].reset_index(drop=True), table.iloc[18:].reset_index(drop=True)


def test_concatenated_parquet_ingests_as_the_same_rows_in_csv(nih: Path, tmp_path: Path,
                                                              capsys) -> None:
    train, valid = _halves(nih)
    both = pd.concat([train, valid])  # the index repeats, and Parquet saves it
    assert not both.index.is_unique
    pq, csv = nih.parent / "concat.parquet", nih.parent / "concat.csv"
    both.to_parquet(pq)
    both.to_csv(csv, index=False)
    assert not pd.read_parquet(pq).index.is_unique  # the file did keep the repeated index
    spec = tables.PRESETS["nih"]
    _same_scan(scan(nih.parent, files=csv, columns=spec), scan(nih.parent, files=pq, columns=spec))
    codes = [cli.main(["ingest", str(nih.parent), str(tmp_path / f"{t.suffix[1:]}.zarr"),
                       "--files", str(t), "--table-preset", "nih", "--size", "32", "--quiet"])
             for t in (csv, pq)]
    assert codes == [0, 0], capsys.readouterr().err
    a, b = (xraybatch.open(tmp_path / f"{s}.zarr") for s in ("csv", "parquet"))
    assert len(a) == len(b) == 30
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    np.testing.assert_array_equal(a.images[:], b.images[:])


def _bom_names(frame: pd.DataFrame) -> pd.DataFrame:  # csv.DictReader on an Excel export
    return frame.rename(columns={frame.columns[0]: "\ufeff" + frame.columns[0]})


# How people write a table (each from the same rows): all must scan as the plain CSV does.
WRITERS = {
    "csv with the index (Unnamed: 0)": lambda f, p: f.to_csv(p),
    "csv of pd.concat with the index": lambda f, p: pd.concat(_split2(f)).to_csv(p),
    "csv utf-8-sig (Excel)": lambda f, p: f.to_csv(p, index=False, encoding="utf-8-sig"),
    "csv with padded headers": lambda f, p: f.rename(columns=lambda c: f" {c} ").to_csv(
        p, index=False),
    "tsv": lambda f, p: f.to_csv(p, index=False, sep="\t"),
    "csv.gz": lambda f, p: f.to_csv(p, index=False),
    "parquet of pd.concat": lambda f, p: pd.concat(_split2(f)).to_parquet(p),
    "parquet, shuffled": lambda f, p: f.sample(frac=1, random_state=3).to_parquet(p),
    "parquet, path as index": lambda f, p: f.set_index("Image Index").to_parquet(p),
    "parquet, multi-index": lambda f, p: f.set_index(["Patient ID", "Follow-up #"]).to_parquet(p),
    "parquet, unnamed multi-index": lambda f, p: f.set_index(
        [np.zeros(len(f), int), np.arange(len(f)) % 3]).to_parquet(p),
    "parquet, BOM and padded names": lambda f, p: _bom_names(f.rename(
        columns=lambda c: f"{c}  ")).to_parquet(p),
}
SUFFIX = {"tsv": ".tsv", "csv.gz": ".csv.gz"}


def _split2(frame: pd.DataFrame) -> list[pd.DataFrame]:
    return [frame.iloc[:10].reset_index(drop=True), frame.iloc[10:].reset_index(drop=True)]


@pytest.mark.parametrize("how", list(WRITERS))
def test_tables_as_users_write_them(nih: Path, how: str) -> None:
    frame = pd.read_csv(nih).iloc[:, :4]  # Image Index, Finding Labels, Follow-up #, Patient ID
    name = how.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
    path = nih.parent / f"{name}{SUFFIX.get(how, '.parquet' if 'parquet' in how else '.csv')}"
    WRITERS[how](frame, path)
    expected = scan(nih.parent, files=nih, columns=tables.PRESETS["nih"])
    _same_scan(scan(nih.parent, files=path, columns=tables.PRESETS["nih"]), expected)


def test_mixed_types_and_missing_cells(tmp_path: Path) -> None:
    _files(tmp_path, "1.png", "a.png", "b.png", "c.png", "007.png")
    frame = pd.DataFrame({
        "file": [1, "a.png", "b.png", "c.png", "007.png"],  # an int where names are text
        "dx": [0, "1", np.nan, 2.0, "pneumonia"],          # ints, text, NaN, a float
        "subject": [12, "p7", None, 12.0, "0042"],
    })
    frame.loc[0, "file"] = "1.png"
    frame = pd.concat([frame, pd.DataFrame({"file": [np.nan, " "], "dx": "1"})])  # no path
    frame.to_csv(tmp_path / "t.csv", index=False)
    spec = tables.columns_for(None, path="file", label="dx", patient="subject")
    s = scan(tmp_path, files=tmp_path / "t.csv", columns=spec)
    assert s.skipped.values.tolist() == [["", "no_path"], [" ", "no_path"],
                                         ["b.png", "bad_label"]]  # NaN label: not a class
    got = s.manifest.set_index("path")
    assert got.class_name.to_dict() == {"1.png": "0", "a.png": "1", "c.png": "2.0",
                                        "007.png": "pneumonia"}
    assert got.patient_id.to_dict() == {"1.png": "12", "a.png": "p7", "c.png": "12.0",
                                        "007.png": "0042"}  # as written: leading zeros kept
    # Typed columns in Parquet (a float label with NaN, nullable ints, categories, booleans)
    # read as the same rows in CSV.
    typed = pd.DataFrame({"file": ["1.png", "a.png", "b.png", "c.png", None],
                          "dx": [0.0, 1.0, np.nan, 2.0, 1.0],
                          "subject": pd.array([12, None, 3, 12, 42], dtype="Int64"),
                          "fold": pd.Categorical(["train", "val", "train", "test", "val"]),
                          "flag": [True, False, True, True, False]})
    typed.to_parquet(tmp_path / "t.parquet")
    typed.to_csv(tmp_path / "t2.csv", index=False)
    spec = tables.columns_for(None, path="file", label="dx", patient="subject", split="fold")
    a = scan(tmp_path, files=tmp_path / "t.parquet", columns=spec)
    _same_scan(a, scan(tmp_path, files=tmp_path / "t2.csv", columns=spec))
    assert a.classes == ["0.0", "1.0", "2.0"]
    assert a.skipped.reason.tolist() == ["no_path", "bad_label"]


def test_duplicated_column_names_are_one_line(nih: Path, tmp_path: Path, capsys) -> None:
    frame = pd.read_csv(nih).iloc[:, :4]
    doubled = pd.concat([frame, frame[["Image Index"]]], axis=1)  # e.g. a careless merge
    doubled.to_csv(tmp_path / "dup.csv", index=False)
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pandas(doubled.set_axis(range(5), axis=1), preserve_index=False)
                   .rename_columns(list(doubled.columns)), tmp_path / "dup.parquet")
    for table, at in (("dup.csv", "1, 5"), ("dup.parquet", "1, 5")):
        code = cli.main(["ingest", str(nih.parent), str(tmp_path / "o.zarr"), "--files",
                         str(tmp_path / table), "--table-preset", "nih"])
        assert code == 2
        assert capsys.readouterr().err == (
            f"xraybatch ingest: error: table {tmp_path / table} has 2 columns named "
            f"'Image Index' (columns {at}): rename or drop all but one\n")
    # A repeated column that is not mapped is no one's business.
    pd.concat([frame, frame[["Follow-up #"]]], axis=1).to_csv(tmp_path / "ok.csv", index=False)
    assert len(scan(nih.parent, files=tmp_path / "ok.csv",
                    columns=tables.PRESETS["nih"]).manifest) == 30


def test_relative_paths_that_climb_out_are_outside_root(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _files(root, "a.png", "sub/b.png")
    _files(tmp_path, "elsewhere/x.png")
    climbing = ["../elsewhere/x.png", "../../../../etc/passwd", "sub/../../elsewhere/x.png",
                "..", "..\\elsewhere\\x.png", "sub/..\\..\\x.png",
                f"{root}/../elsewhere/x.png", "./../elsewhere/x.png"]
    rows = ["a.png", "sub/./b.png", "sub//../a.png", *climbing]
    pd.DataFrame({"path": rows, "label": "x"}).to_csv(root / "t.csv", index=False)
    s = scan(None, files=root / "t.csv", columns=tables.columns_for(None, label="label"))
    assert s.manifest.path.tolist() == ["a.png", "sub/b.png"]  # normalised, found
    got = dict(zip(s.skipped.path, s.skipped.reason, strict=True))
    assert got == {**dict.fromkeys(climbing, "outside_root"), "sub//../a.png": "duplicate_row"}


def test_a_table_never_makes_ingest_read_outside_its_root(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    root = tmp_path / "download"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(tc.image(rng, ".png"))
    secret = tmp_path / "private" / "scan.png"  # a real image elsewhere on the machine
    secret.parent.mkdir()
    secret.write_bytes(tc.image(rng, ".png"))
    rows = ["img/a.png", "../private/scan.png", "img/../../private/scan.png",
            str(secret), "../../../../etc/passwd"]
    pd.DataFrame({"file": rows, "dx": "x"}).to_csv(root / "labels.csv", index=False)
    result = xraybatch.ingest(root, tmp_path / "o.zarr", files=root / "labels.csv", size=32,
                              columns={"path": "file", "label": "dx"})
    ds = xraybatch.open(tmp_path / "o.zarr")
    assert ds.manifest.path.tolist() == ["img/a.png"] and result.n_stored == 1
    assert hashlib.sha256(secret.read_bytes()).hexdigest() not in set(ds.manifest.sha256)
    assert sorted(map(tuple, result.skipped.values.tolist())) == sorted(
        (r, "outside_root") for r in rows[1:])


def test_label_csv_of_a_folder_scan_keeps_to_its_root(tmp_path: Path) -> None:
    root = tmp_path / "set"
    _files(root, "a.png", "b.png")
    _files(tmp_path, "secret.png")
    labels = tmp_path / "labels.csv"  # Excel-style: a BOM, padded headers
    pd.DataFrame({" path": ["a.png", "x/../b.png", "../secret.png", str(tmp_path / "secret.png")],
                  "class ": ["cat", "dog", "cat", "dog"]}).to_csv(labels, index=False,
                                                                 encoding="utf-8-sig")
    s = scan(root, labels=str(labels))
    assert s.manifest.path.tolist() == ["a.png", "b.png"]
    assert sorted(s.skipped.values.tolist()) == [["../secret.png", "outside_root"],
                                                 [str(tmp_path / "secret.png"), "outside_root"]]
