"""The command line: exit codes, one-line errors, outputs never overwritten unasked, JSON."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch import store
from xraybatch.cli import main
from xraybatch.commands import COMMANDS
from xraybatch.options import DEFAULT_CHUNK
from xraybatch.scan import scan

SIZE = ["--size", "32", "--quiet"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, expected: int = 2) -> None:
    assert code == expected, err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("xraybatch ")


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """mtime and content of every file below root (and of root itself)."""
    snap = {".": (root.stat().st_mtime_ns, b"")}
    for path in root.rglob("*"):
        if path.is_file():
            snap[path.relative_to(root).as_posix()] = (path.stat().st_mtime_ns, path.read_bytes())
    return snap


@pytest.fixture(scope="module")
def stored(synth_small: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "x.zarr"
    assert main(["ingest", str(synth_small), str(out), *SIZE, "--labels", "kermany3"]) == 0
    return out


# --- user errors: exit 2, one line, nothing written ------------------------------------------


def test_missing_src(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "ingest", tmp_path / "absent", tmp_path / "x.zarr", *SIZE)
    assert_one_line_error(code, err)
    assert "not found" in err and not (tmp_path / "x.zarr").exists()


def test_empty_folder(capsys, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    code, _, err = run(capsys, "ingest", tmp_path / "src", tmp_path / "x.zarr", *SIZE)
    assert_one_line_error(code, err)
    assert "no labelled image" in err and not (tmp_path / "x.zarr").exists()


def test_unknown_label_scheme(capsys, synth_small: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "ingest", synth_small, tmp_path / "x.zarr", "--labels", "colour",
                       *SIZE)
    assert_one_line_error(code, err)
    assert "unknown label scheme" in err


@pytest.mark.parametrize("text", ["path;class\na.jpeg;x\n", "", "path,class\n,x\n"])
def test_malformed_csv(capsys, synth_small: Path, tmp_path: Path, text: str) -> None:
    (tmp_path / "labels.csv").write_text(text)
    code, _, err = run(capsys, "ingest", synth_small, tmp_path / "x.zarr", "--labels",
                       tmp_path / "labels.csv", *SIZE)
    assert_one_line_error(code, err)
    assert "labels.csv" in err and not (tmp_path / "x.zarr").exists()


@pytest.mark.parametrize("args", [["--size", "4"], ["--chunk", "0"]])
def test_invalid_numbers(capsys, synth_small: Path, tmp_path: Path, args) -> None:
    code, _, err = run(capsys, "ingest", synth_small, tmp_path / "x.zarr", "--quiet", *args)
    assert_one_line_error(code, err)


# --- outputs ---------------------------------------------------------------------------------


def test_existing_out_is_left_untouched(capsys, synth_small: Path, stored: Path) -> None:
    before = snapshot(stored)
    code, _, err = run(capsys, "ingest", synth_small, stored, *SIZE)
    assert_one_line_error(code, err)
    assert "--overwrite" in err
    assert snapshot(stored) == before
    assert xraybatch.open(stored).complete


def test_overwrite_replaces(capsys, synth_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.zarr"
    assert run(capsys, "ingest", synth_small, out, *SIZE, "--chunk", "7")[0] == 0
    code, stdout, _ = run(capsys, "ingest", synth_small, out, "--size", "24", "--quiet",
                          "--overwrite")
    n = len(scan(synth_small).manifest)
    assert code == 0 and f"stored {n} of {n} images" in stdout
    group = zarr.open_group(str(out), mode="r")
    assert group["images"].shape == (n, 24, 24) and group.attrs["chunk"] == DEFAULT_CHUNK
    n_chunks = math.ceil(n / DEFAULT_CHUNK)
    assert group["chunk_done"].shape == (n_chunks,)  # nothing left from the old layout
    assert sorted(int(p.name) for p in (out / "chunk_done" / "c").iterdir()) == \
        list(range(n_chunks))


def test_overwrite_refuses_a_folder_that_is_not_a_store(capsys, synth_small, tmp_path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "paper.txt").write_text("keep me")
    before = snapshot(out)
    code, _, err = run(capsys, "ingest", synth_small, out, *SIZE, "--overwrite")
    assert_one_line_error(code, err)
    assert "not a zarr store" in err
    assert snapshot(out) == before


def test_resume_without_a_store(capsys, synth_small: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "ingest", synth_small, tmp_path / "x.zarr", *SIZE, "--resume")
    assert_one_line_error(code, err)
    assert "nothing to resume" in err and not (tmp_path / "x.zarr").exists()


def test_out_is_a_file(capsys, synth_small: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.zarr"
    out.write_text("a file")
    for flag in ([], ["--overwrite"]):
        code, _, err = run(capsys, "ingest", synth_small, out, *SIZE, *flag)
        assert_one_line_error(code, err)
        assert out.read_text() == "a file"
    code, _, err = run(capsys, "ingest", synth_small, out / "inside.zarr", *SIZE)
    assert_one_line_error(code, err)  # an OSError from the file system, not a traceback


def test_strict_with_a_bad_file(capsys, synth_copy: Path, tmp_path: Path) -> None:
    (synth_copy / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"")
    out = tmp_path / "x.zarr"
    code, stdout, _ = run(capsys, "ingest", synth_copy, out, *SIZE, "--strict")
    assert code == 1
    assert "failed 1 files" in stdout and "empty" in stdout and "IM-9999-0001.jpeg" in stdout
    ds = xraybatch.open(out)
    assert ds.complete and len(ds) == 61 and int(ds.valid.sum()) == 60
    code, _, _ = run(capsys, "ingest", synth_copy, out, *SIZE, "--overwrite")
    assert code == 0  # without --strict a bad file is reported, not an error


# --- help ------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_has_examples(capsys, command: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_version(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert xraybatch.__version__ in capsys.readouterr().out


# --- inspect and stats -----------------------------------------------------------------------


def test_inspect_json_matches_numpy(capsys, real_sample: Path) -> None:
    path = sorted(real_sample.glob("train/PNEUMONIA/*.jpeg"))[0]
    rgb = real_sample / "train/PNEUMONIA/person1052_virus_1751.jpeg"  # an RGB JPEG
    for image in (path, rgb):
        code, stdout, _ = run(capsys, "inspect", image, "--json")
        assert code == 0
        got = json.loads(stdout)
        img = cv2.imread(str(image), cv2.IMREAD_GRAYSCALE)
        assert (got["height"], got["width"]) == img.shape
        assert (got["max"], got["min"]) == (img.max(), img.min())
        assert got["mean"] == round(float(np.mean(img)), 4)
        assert got["std"] == round(float(np.std(img)), 4)
        assert got["hist"] == np.bincount(img.ravel(), minlength=256).tolist()


def test_inspect_text_and_errors(capsys, synth_small: Path, tmp_path: Path) -> None:
    image = sorted(synth_small.rglob("*.jpeg"))[0]
    code, stdout, _ = run(capsys, "inspect", image)
    assert code == 0 and "height" in stdout and "histogram" in stdout
    (tmp_path / "fake.jpeg").write_bytes(b"hello")
    code, _, err = run(capsys, "inspect", tmp_path / "fake.jpeg")
    assert_one_line_error(code, err)
    assert "not_image" in err
    code, _, err = run(capsys, "inspect", tmp_path / "absent.jpeg")
    assert_one_line_error(code, err)


def test_stats_json(capsys, stored: Path) -> None:
    code, stdout, _ = run(capsys, "stats", stored, "--json")
    assert code == 0
    got = json.loads(stdout)
    assert {"global", "per_class", "per_split_class"} <= set(got)
    from xraybatch import dups  # stats --json adds the near-duplicate counts

    assert got.pop("near_duplicates") == dups.summarize(xraybatch.open(stored))
    assert got == json.loads(json.dumps(xraybatch.open(stored).stats()))
    assert list(got["per_class"]) == ["NORMAL", "BACTERIA", "VIRUS"]


@pytest.mark.parametrize("by", ["class", "split"])
def test_stats_table(capsys, stored: Path, by: str) -> None:
    code, stdout, _ = run(capsys, "stats", stored, "--by", by)
    assert code == 0 and "imbalance ratio" in stdout
    assert ("train/VIRUS" in stdout) == (by == "split") and "BACTERIA" in stdout


def test_stats_on_incomplete_store(capsys, synth_small: Path, tmp_path: Path) -> None:
    found = scan(synth_small)
    out = tmp_path / "x.zarr"
    group = store.create(store.StoreRef(str(out)), found.manifest, size=32, chunk=16,
                         classes=found.classes, splits=found.splits, attrs={})
    group["chunk_done"][1] = True
    code, _, err = run(capsys, "stats", out)
    assert code != 0
    assert_one_line_error(code, err, expected=code)
    assert "INCOMPLETE" in err and "1 of 4 chunks" in err


def test_stats_when_no_image_is_valid(capsys, tmp_path: Path) -> None:
    (tmp_path / "src" / "A").mkdir(parents=True)
    (tmp_path / "src" / "A" / "empty.jpeg").write_bytes(b"")
    (tmp_path / "src" / "A" / "text.png").write_text("not a png")
    out = tmp_path / "x.zarr"
    assert run(capsys, "ingest", tmp_path / "src", out, *SIZE)[0] == 0
    code, stdout, err = run(capsys, "stats", out)
    assert code == 0 and err == ""
    assert "valid 0, failed 2" in stdout


def test_stats_on_non_store(capsys, tmp_path: Path) -> None:
    code, _, err = run(capsys, "stats", tmp_path)
    assert_one_line_error(code, err)


# --- the real entry point --------------------------------------------------------------------


def test_python_m_xraybatch(synth_small: Path, tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "xraybatch", "ingest", str(synth_small),
                         str(tmp_path / "x.zarr"), "--size", "32", "--quiet",
                         "--scheduler", "sync"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "stored 60 of 60 images" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "xraybatch", "ingest", str(tmp_path / "absent"),
                          str(tmp_path / "y.zarr")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "Traceback" not in bad.stderr
