"""scan.py: the manifest of a folder compared with an independent walk, and the label schemes."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

from xraybatch.scan import ScanError, scan

SPLIT_ORDER = ["train", "val", "test", "none"]
IMAGE_EXT = {".jpeg", ".jpg", ".png"}


def reference_walk(root: Path, kermany3: bool = False) -> list[tuple[str, str, str]]:
    """(path, split, class) of every image below root/{split}/CLASS/, in store order."""
    rows = []
    for path in root.rglob("*"):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXT \
                or path.name.startswith("._"):
            continue
        split, folder = path.relative_to(root).parts[:2]
        cls = kermany3_class(folder, path.name) if kermany3 else folder
        rows.append((path.relative_to(root).as_posix(), split, cls))
    return sorted(rows, key=lambda r: (SPLIT_ORDER.index(r[1]), r[0]))


def kermany3_class(folder: str, name: str) -> str:
    if folder == "NORMAL":
        return "NORMAL"
    match = re.fullmatch(r"person\d+_(bacteria|virus)_\d+\.jpeg", name)
    assert match, name
    return match.group(1).upper()


def manifest_rows(s) -> list[tuple[str, str, str]]:
    return list(s.manifest[["path", "split", "class_name"]].itertuples(index=False, name=None))


def test_folder_scheme_matches_walk(synth_small: Path) -> None:
    s = scan(synth_small)
    assert manifest_rows(s) == reference_walk(synth_small)
    assert s.classes == ["NORMAL", "PNEUMONIA"]
    assert s.splits == ["train", "val", "test"]
    assert s.manifest.label.tolist() == [s.classes.index(c) for c in s.manifest.class_name]
    sizes = [os.path.getsize(synth_small / p) for p in s.manifest.path]
    assert s.manifest.bytes.tolist() == sizes
    assert s.skipped.empty
    assert manifest_rows(scan(synth_small)) == manifest_rows(s)  # deterministic


def test_folder_scheme_sorts_class_names(tmp_path: Path) -> None:
    for cls in ["zebra", "Apple", "mango"]:
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "a.png").write_bytes(b"x")
    s = scan(tmp_path)
    assert s.classes == sorted(["zebra", "Apple", "mango"])
    assert s.splits == ["none"]
    assert s.manifest.label.tolist() == [0, 1, 2]


def test_kermany3_on_synthetic(synth_small: Path) -> None:
    s = scan(synth_small, labels="kermany3")
    assert s.classes == ["NORMAL", "BACTERIA", "VIRUS"]
    assert manifest_rows(s) == reference_walk(synth_small, kermany3=True)


def test_kermany3_counts_on_real_sample(real_sample: Path) -> None:
    s = scan(real_sample, labels="kermany3")
    ref = reference_walk(real_sample, kermany3=True)
    assert manifest_rows(s) == ref
    counts = Counter(cls for _, _, cls in ref)
    assert dict(Counter(s.manifest.class_name)) == dict(counts)
    # The numbers published in ../shared/data/README.md.
    assert counts == {"NORMAL": 60, "BACTERIA": 118, "VIRUS": 70}
    per_split = Counter((split, "NORMAL" if c == "NORMAL" else "PNEUMONIA")
                        for _, split, c in ref)
    assert per_split == {("train", "NORMAL"): 51, ("train", "PNEUMONIA"): 161,
                         ("val", "NORMAL"): 3, ("val", "PNEUMONIA"): 9,
                         ("test", "NORMAL"): 6, ("test", "PNEUMONIA"): 18}


def test_kermany3_rejects_other_layouts(tmp_path: Path) -> None:
    (tmp_path / "train" / "COVID").mkdir(parents=True)
    (tmp_path / "train" / "COVID" / "x.jpeg").write_bytes(b"x")
    with pytest.raises(ScanError, match="NORMAL"):
        scan(tmp_path, labels="kermany3")


def test_junk_files_are_skipped_and_counted(synth_copy: Path) -> None:
    junk = ["train/.DS_Store", "train/NORMAL/Thumbs.db", "notes.txt",
            "train/PNEUMONIA/._person1_virus_1.jpeg", "val/NORMAL/._IM-0001-0001.jpeg"]
    for rel in junk:
        (synth_copy / rel).write_bytes(b"\x00\x05\x16\x07junk")
    s = scan(synth_copy, labels="kermany3")
    assert sorted(s.skipped.path) == sorted(junk)
    assert set(s.skipped.reason) == {"not_image"}
    assert not set(junk) & set(s.manifest.path)
    assert len(s.manifest) == 60


def test_junk_dirs_are_ignored(synth_copy: Path) -> None:
    (synth_copy / "__MACOSX" / "train" / "NORMAL").mkdir(parents=True)
    (synth_copy / "__MACOSX" / "train" / "NORMAL" / "IM-9.jpeg").write_bytes(b"x")
    assert len(scan(synth_copy).manifest) == 60


def test_files_without_class_folder_are_unlabelled(synth_copy: Path) -> None:
    (synth_copy / "train" / "stray.jpeg").write_bytes(b"x")
    s = scan(synth_copy)
    assert s.skipped.values.tolist() == [["train/stray.jpeg", "unlabelled"]]


def test_csv_scheme(synth_small: Path, tmp_path: Path) -> None:
    paths = reference_walk(synth_small)
    listed = [p for p, _, _ in paths[::2]]
    labels = {p: ("even" if i % 3 else "odd") for i, p in enumerate(listed)}
    labels["train/NORMAL/IM-gone-0001.jpeg"] = "odd"  # listed, but not on disk
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,class\n" + "".join(f"{p},{c}\n" for p, c in labels.items()))
    s = scan(synth_small, labels=str(csv_path))
    assert s.classes == ["even", "odd"]
    assert dict(zip(s.manifest.path, s.manifest.class_name, strict=True)) == labels
    gone = s.manifest.set_index("path").loc["train/NORMAL/IM-gone-0001.jpeg"]
    assert gone.bytes == -1 and gone.split == "train"
    assert sorted(s.skipped.path) == sorted(p for p, _, _ in paths if p not in labels)
    assert set(s.skipped.reason) == {"unlabelled"}


@pytest.mark.parametrize("text", [
    "", "path,class\n", "file,kind\na.jpeg,x\n", "path,class\ntrain/a.jpeg,\n",
    "path,class\n,NORMAL\n",
])
def test_malformed_csv(synth_small: Path, tmp_path: Path, text: str) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text(text)
    with pytest.raises(ScanError, match="labels.csv"):
        scan(synth_small, labels=str(csv_path))


def test_csv_not_utf8_or_missing(synth_small: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_bytes(b"path,class\n\xff\xfe\xfa,\xc3\x28\n")
    with pytest.raises(ScanError):
        scan(synth_small, labels=str(csv_path))
    with pytest.raises(ScanError):
        scan(synth_small, labels=str(tmp_path / "absent.csv"))


def test_user_errors(tmp_path: Path, synth_small: Path) -> None:
    with pytest.raises(ScanError, match="not found"):
        scan(tmp_path / "absent")
    with pytest.raises(ScanError, match="no labelled image"):
        scan(tmp_path)
    with pytest.raises(ScanError, match="unknown label scheme"):
        scan(synth_small, labels="by-colour")
