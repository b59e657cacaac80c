"""Patient ids (Kermany names, --patient-id, DICOM PatientID) and the patient-leakage check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import xraybatch
from xraybatch import patients
from xraybatch.cli import main
from xraybatch.report import write_report
from xraybatch.scan import scan
from xraybatch.synth_dicom import synth_dicom


def test_kermany_names() -> None:
    names = {"person123_bacteria_456.jpeg": "person123", "person1_virus_6.jpeg": "person1",
             "IM-0115-0001.jpeg": "IM-0115", "NORMAL2-IM-0427-0001.jpeg": "NORMAL2-IM-0427",
             "x/IM-0001-0002.jpeg": "IM-0001", "personX_virus_1.jpeg": "", "scan.dcm": "",
             "IM-0115.jpeg": ""}
    assert {n: patients.patient_of(n) for n in names} == names


def test_patient_regex() -> None:
    assert patients.patient_ids(["a/P12_3.png", "b/Q1.png"], r"(P\d+)_") == ["P12", ""]
    assert patients.patient_ids(["s/pat-7/x.png"], r"pat-(?P<patient>\d+)/(x)") == ["7"]
    for bad in [r"P\d+", r"(P)(\d)", r"(unclosed"]:
        with pytest.raises(ValueError, match="--patient-id"):
            patients.compile_regex(bad)


def _leaks_by_hand(frame: pd.DataFrame) -> set[str]:
    splits = frame.groupby("patient_id").split.nunique()
    return set(splits[splits > 1].index)


@pytest.fixture(scope="module")
def dicom_trees(tmp_path_factory) -> dict[int, tuple[Path, pd.DataFrame]]:
    root = tmp_path_factory.mktemp("dicom")
    return {k: (root / f"leak{k}", synth_dicom(root / f"leak{k}", n=40, seed=k, scale=0.05,
                                               leaked=k)) for k in (0, 3)}


@pytest.mark.parametrize("leaked", [0, 3])
def test_leakage_check_finds_every_planted_patient(dicom_trees, tmp_path, leaked) -> None:
    src, frame = dicom_trees[leaked]
    planted = _leaks_by_hand(frame)
    assert len(planted) == leaked
    out = tmp_path / "x.zarr"
    xraybatch.ingest(src, out, size=32, labels="kermany3", scheduler="sync")
    summary = xraybatch.open(str(out)).stats()["patients"]
    assert set(summary["in_several_splits"]["ids"]) == planted
    assert summary["in_several_splits"]["count"] == leaked
    assert summary["patients"] == frame.patient_id.nunique()
    assert summary["per_split"] == frame.groupby("split").patient_id.nunique().to_dict()
    assert summary["images_per_patient"]["max"] == frame.patient_id.value_counts().max()
    for patient in planted:
        assert summary["in_several_splits"]["splits"][patient] == [
            s for s in ("train", "val", "test") if s in set(frame.split[frame.patient_id
                                                                        == patient])]
    # The CLI: text, --json key "patients", --strict fails only on leakage.
    assert main(["stats", str(out), "--strict"]) == (1 if leaked else 0)
    if leaked:  # the report shows them
        page = write_report(out, tmp_path / "report").index.read_text()
        assert "Patients in more than one split" in page
        assert all(f"<td>{p}</td>" in page for p in planted)


def test_kermany_names_leak_across_splits(synth_copy, tmp_path, capsys) -> None:
    """Move one NORMAL file of a train patient into test under a name of the same patient."""
    train = sorted((synth_copy / "train" / "NORMAL").glob("IM-*.jpeg"))[0]
    patient = patients.patient_of(train.name)
    shutil.copy(train, synth_copy / "test" / "NORMAL" / f"{patient}-0009.jpeg")
    found = scan(synth_copy, labels="kermany3")
    frame = found.manifest
    expected = _leaks_by_hand(frame[frame.patient_id != ""])
    assert patient in expected
    out = tmp_path / "x.zarr"
    xraybatch.ingest(synth_copy, out, size=32, labels="kermany3", scheduler="sync")
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert set(stats["patients"]["in_several_splits"]["ids"]) == expected
    assert main(["stats", str(out), "--strict"]) == 1
    captured = capsys.readouterr()
    assert "LEAKAGE" in captured.out and patient in captured.err


def test_header_patient_id_wins_over_the_file_name(dicom_trees, tmp_path) -> None:
    src, frame = dicom_trees[0]
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    first = copy / frame.path[0]
    first.rename(first.with_name("person5_virus_1.dcm"))  # a Kermany-style name
    found = scan(copy, patient_id=r"(PAT\d+)")
    assert (found.manifest.patient_id != "").sum() == len(frame) - 1
    xraybatch.ingest(copy, tmp_path / "x.zarr", size=32, scheduler="sync",
                     patient_id=r"(PAT\d+)")
    manifest = xraybatch.open(str(tmp_path / "x.zarr")).manifest
    assert (manifest.patient_id == manifest.dicom_patient_id).all()
    assert sorted(manifest.patient_id) == sorted(frame.patient_id)


def test_scan_finds_dicom_without_extension(dicom_trees, tmp_path) -> None:
    src, frame = dicom_trees[0]
    copy = tmp_path / "src"
    shutil.copytree(src, copy)
    names = [copy / p for p in frame.path[:2]]
    names[0].rename(names[0].with_suffix(""))
    names[1].rename(names[1].with_name("1.2.840.10008.99.1"))
    (copy / "train" / "NORMAL" / "README").write_text("no preamble here")
    found = scan(copy)
    assert len(found.manifest) == len(frame)
    assert found.skipped.path.tolist() == ["train/NORMAL/README"]
