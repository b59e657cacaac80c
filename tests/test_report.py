"""The report: figures are real PNGs, the HTML shows them with every table, nothing is
overwritten unasked; the class mean images match numpy; ``inspect --plot``."""

from __future__ import annotations

import shutil
import struct
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import zarr

import xraybatch
from xraybatch import cli, figures, report

pytest.importorskip("matplotlib", reason="the report needs matplotlib (the plot extra)")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SKIPPED_NAME = "notes & <draft>.txt"  # also checks that the HTML escapes file names


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails on anything that is not a PNG."""
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def store(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> xraybatch.XrayStore:
    """The synthetic set plus a corrupt file, a duplicate and a skipped file, at 64 x 64."""
    src = tmp_path_factory.mktemp("report") / "chest_xray"
    shutil.copytree(synth_small, src)
    folder = src / "train/PNEUMONIA"
    first = sorted(folder.iterdir())[0]
    (folder / "person9999_bacteria_1.jpeg").write_bytes(first.read_bytes())
    (folder / "person9998_virus_1.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / SKIPPED_NAME).write_text("not an image")
    out = src.parent / "xray.zarr"
    xraybatch.ingest(src, out, size=64, labels="kermany3", chunk=8, scheduler="sync")
    return xraybatch.open(str(out))


@pytest.fixture(scope="module")
def written(store: xraybatch.XrayStore, tmp_path_factory: pytest.TempPathFactory):
    return report.write_report(store, tmp_path_factory.mktemp("out") / "report", seed=3)


def test_figures_are_pngs_of_sensible_size(written: report.ReportResult) -> None:
    folder = written.index.parent
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [*report.FIGURES, "index.html", "manifest.csv"])
    for name in report.FIGURES:
        width, height = png_size(folder / name)
        assert 500 <= width <= 2500 and 300 <= height <= 2500, (name, width, height)
        assert (folder / name).stat().st_size > 15_000, name  # not a blank canvas


def test_html_shows_every_figure_and_table(store: xraybatch.XrayStore,
                                          written: report.ReportResult) -> None:
    page = written.index.read_text(encoding="utf-8")
    for name in report.FIGURES:
        assert f'<img src="{name}"' in page
    manifest = store.manifest
    stats = store.stats()
    # summary, counts, patients, 3 stats, QC flags, flagged, failed, skipped; leaked patients
    leaked = stats["patients"]["in_several_splits"]["count"] > 0
    from xraybatch import dups  # and the near-duplicate pairs, when there are any

    near = len(dups.near_duplicate_pairs(store)) > 0
    assert page.count("<table") == 10 + leaked + near
    for split, per in stats["per_split_class"].items():
        for name, s in per.items():
            assert f"<td>{split} / {name}</td>\n      <td>{s['images']}</td>" in page
    assert f"{stats['global']['mean']:.2f}" in page
    for weight in stats["class_weights"].values():
        assert f"<td>{weight:.4f}</td>" in page
    failed = manifest[~manifest.valid]
    assert list(failed.path) == ["train/PNEUMONIA/person9998_virus_1.jpeg"]
    assert f"<td>{failed.path.iloc[0]}</td>\n      <td>{failed.status.iloc[0]}</td>" in page
    for path in manifest.path[manifest.qc_flags != ""]:
        assert f"<td>{path}</td>" in page
    assert "<td>train/PNEUMONIA/person9999_bacteria_1.jpeg</td>" in page
    assert "notes &amp; &lt;draft&gt;.txt" in page and SKIPPED_NAME not in page
    assert 'href="manifest.csv"' in page


def test_manifest_csv_is_the_stores_manifest(store: xraybatch.XrayStore,
                                             written: report.ReportResult) -> None:
    saved = pd.read_csv(written.index.parent / "manifest.csv", index_col="sample",
                        keep_default_na=False, na_values=[""])
    manifest = store.manifest
    assert list(saved.path) == list(manifest.path)
    assert saved.qc_flags.fillna("").tolist() == manifest.qc_flags.tolist()
    np.testing.assert_allclose(saved["mean"], manifest["mean"])
    assert written.n_flagged == (manifest.qc_flags != "").sum() > 0
    assert written.n_failed == 1


def test_class_means_match_numpy(store: xraybatch.XrayStore) -> None:
    means, counts = figures.class_means(store)
    images, labels, valid = store.read_images(slice(None)), store.labels, store.valid
    for k in range(len(store.classes)):
        chosen = images[valid & (labels == k)]
        assert counts[k] == len(chosen)
        np.testing.assert_array_equal(means[k], chosen.astype(np.float64).mean(axis=0))


def test_class_without_valid_images(tmp_path: Path) -> None:
    """A class whose only file is corrupt still gets its panels, marked empty."""
    for name, ok in [("A/a1.png", True), ("A/a2.png", True), ("B/b1.png", False)]:
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        path = tmp_path / "src" / name
        if ok:
            cv2.imwrite(str(path), np.random.default_rng(1).integers(0, 255, (50, 60), np.uint8))
        else:
            path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    xraybatch.ingest(tmp_path / "src", tmp_path / "x.zarr", size=32, scheduler="sync")
    means, counts = figures.class_means(xraybatch.open(str(tmp_path / "x.zarr")))
    assert counts.tolist() == [2, 0] and np.isnan(means[1]).all()
    result = report.write_report(tmp_path / "x.zarr", tmp_path / "rep")
    assert result.n_failed == 1
    for name in report.FIGURES:
        png_size(tmp_path / "rep" / name)


def test_samples_are_seeded_and_valid(store: xraybatch.XrayStore) -> None:
    manifest = store.manifest
    rows = figures.pick_samples(manifest, seed=3)
    assert len(set(rows.tolist())) == 9 and manifest.valid[rows].all()
    assert (figures.pick_samples(manifest, seed=3) == rows).all()
    assert set(figures.pick_samples(manifest, seed=4).tolist()) != set(rows.tolist())


def test_existing_folder_is_not_overwritten_unasked(store: xraybatch.XrayStore,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "rep"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "index.html").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        report.write_report(store, out)
    assert (out / "index.html").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "keep.txt"]
    report.write_report(store, out, overwrite=True)
    assert (out / "index.html").read_text() != "old" and (out / "keep.txt").read_text() == "mine"


def test_cli_report(store: xraybatch.XrayStore, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rep"
    assert cli.main(["report", store.ref.url, "--out", str(out), "--seed", "1"]) == 0
    assert f"wrote {out / 'index.html'}" in capsys.readouterr().out
    assert cli.main(["report", store.ref.url, "--out", str(out)]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert cli.main(["report", store.ref.url, "--out", str(out), "--overwrite"]) == 0


def test_cli_report_refuses_an_incomplete_store(store: xraybatch.XrayStore, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store.ref.local_path, copy)
    zarr.open_group(str(copy), mode="r+").attrs["complete"] = False
    assert cli.main(["report", str(copy), "--out", str(tmp_path / "rep")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "INCOMPLETE" in err and "--resume" in err
    assert not (tmp_path / "rep").exists()


def test_missing_matplotlib_is_one_line_naming_the_extra(
        store: xraybatch.XrayStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    assert cli.main(["report", store.ref.url, "--out", str(tmp_path / "rep")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'xraybatch[plot]'" in err
    assert not (tmp_path / "rep").exists()


def test_cli_inspect_plot(synth_small: Path, tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    image = next(synth_small.rglob("*.jpeg"))
    out = tmp_path / "plots" / "one.png"
    assert cli.main(["inspect", str(image), "--plot", str(out)]) == 0
    assert "mean:" in capsys.readouterr().out
    width, height = png_size(out)
    assert width > height >= 300 and out.stat().st_size > 15_000
    before = out.read_bytes()
    assert cli.main(["inspect", str(image), "--plot", str(out)]) == cli.EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert cli.main(["inspect", str(image), "--plot", str(out), "--overwrite", "--json"]) == 0
    assert capsys.readouterr().out.startswith("{")
