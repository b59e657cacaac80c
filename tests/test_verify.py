"""``xraybatch verify``: damaged chunks, stale records and changed sources are all found.

The damage is done to the files the way a disk or a person would do it (a flipped byte, a
deleted file, a file rewritten through zarr), and each expectation is worked out here from
the store's layout and plain numpy, not from the code under test.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch import cli, store
from xraybatch.verify import KINDS, VerifyResult, verify

SIZE, CHUNK = 32, 16
PROBLEM_KEYS = {"kind", "array", "chunk", "row", "path", "message"}


def _ingest(src: Path, out: Path, monkeypatch: pytest.MonkeyPatch | None = None,
            **kwargs) -> Path:
    """Ingest ``src``; with ``monkeypatch``, as a format-1 store (no checksums)."""
    if monkeypatch is not None:
        monkeypatch.setattr(store, "create", functools.partial(store.create, checksums=False))
    xraybatch.ingest(src, out, size=SIZE, chunk=CHUNK, **kwargs)
    if monkeypatch is not None:
        monkeypatch.undo()
    return out


@pytest.fixture(scope="module")
def clean(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A format-2 store of the 60 synthetic images; tests copy it before damaging it."""
    return _ingest(synth_small, tmp_path_factory.mktemp("verify") / "clean.zarr",
                   labels="kermany3")


@pytest.fixture
def copy(clean: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(clean, tmp_path / "x.zarr"))


def _run(*argv: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main(["verify", *argv, "--quiet"])
    return code, capsys.readouterr().out


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_clean_store_verifies(clean: Path, capsys) -> None:
    code, out = _run(str(clean), capsys=capsys)
    assert code == 0 and out.rstrip().endswith("verify: OK"), out
    assert "format 2, checksums checked" in out
    result = xraybatch.verify(clean)
    assert isinstance(result, VerifyResult) and result.ok and result.checksums
    assert (result.images_checked, result.image_chunks) == (60, store.n_chunks(60, CHUNK))
    # Every chunk file the store holds was read (zarr.json files are metadata).
    files = [p for p in clean.rglob("*") if p.is_file() and p.name != "zarr.json"
             and not p.name.startswith(".")]
    assert result.chunks_checked == len(files)


def test_flipped_byte_in_an_images_chunk(copy: Path, capsys) -> None:
    _flip(copy / "images/c/2/0/0", 5 * SIZE * SIZE + 17)  # image 37, inside chunk 2
    code, out = _run(str(copy), capsys=capsys)
    assert code == 1
    bad = [line for line in out.splitlines() if line.strip().startswith("checksum")]
    assert len(bad) == 1 and "images chunk 2" in bad[0] and "checksum" in bad[0].lower(), out
    result = verify(copy)
    assert [(p.kind, p.array, p.chunk) for p in result.problems] == [("checksum", "images", 2)]
    # The other chunks are still compared image by image.
    assert result.images_checked == 60 - CHUNK


@pytest.mark.parametrize("name", ["hist", "status", "sha256"])
def test_flipped_byte_in_a_zstd_chunk(copy: Path, name: str) -> None:
    target = copy / name / "c" / ("1/0" if name == "hist" else "1")
    _flip(target, target.stat().st_size // 2)
    result = verify(copy)
    assert [(p.kind, p.array, p.chunk) for p in result.problems] == [("checksum", name, 1)]
    assert not result.ok


def test_deleted_chunk_files(copy: Path) -> None:
    (copy / "chunk_done/c/3").unlink()  # chunk 3 never marked done
    (copy / "hist/c/0/0").unlink()      # a histogram chunk gone
    (copy / "labels/c/0").unlink()      # a column of the scan gone
    found = {(p.kind, p.array, p.chunk) for p in verify(copy).problems}
    assert found == {("not_done", None, 3), ("missing_chunk", "hist", 0),
                     ("missing_chunk", "labels", 0)}


def test_stale_records_found_without_checksums(copy: Path) -> None:
    """Rows rewritten through zarr (valid checksums) that disagree with the pixels."""
    group = zarr.open_group(str(copy), mode="r+")
    images = group["images"][:]
    hist = group["hist"][:]
    value = int(images[5, 0, 0])
    hist[5, value] -= 1  # one pixel counted in the next bin
    hist[5, (value + 1) % 256] += 1
    group["hist"][5] = hist[5]
    group["mean"][40] = group["mean"][40] + 0.5
    result = verify(copy)
    found = {(p.kind, p.row) for p in result.problems}
    assert found == {("hist", 5), ("moments", 40)}
    paths = group["path"][:]
    assert {p.row: p.path for p in result.problems} == {5: paths[5], 40: paths[40]}


@pytest.mark.parametrize("name", ["sha256", "status", "file_bytes", "path"])
def test_stale_row_named_beside_a_damaged_record(copy: Path, name: str, capsys) -> None:
    """A stale hist row is named by its path alone: a damaged sha256, status or file_bytes
    chunk (not needed for that) is only reported; a damaged path chunk leaves it unnamed."""
    group = zarr.open_group(str(copy), mode="r+")
    paths, hist = group["path"][:], group["hist"][5]
    hist[int(group["images"][5, 0, 0])] -= 1
    hist[(int(group["images"][5, 0, 0]) + 1) % 256] += 1
    group["hist"][5] = hist
    _flip(copy / name / "c" / "0", (copy / name / "c" / "0").stat().st_size // 2)
    code, out = _run(str(copy), capsys=capsys)
    assert code == 1 and out.rstrip().endswith("verify: FAILED: 2 problems"), out
    found = {(p.kind, p.array, p.row, p.path) for p in verify(copy).problems}
    named = None if name == "path" else paths[5]
    assert found == {("checksum", name, None, None), ("hist", None, 5, named)}


def test_invalid_row_must_be_zero(synth_copy: Path, tmp_path: Path) -> None:
    bad = sorted(synth_copy.rglob("*.jpeg"))[3]
    bad.write_bytes(b"not an image")
    out = _ingest(synth_copy, tmp_path / "x.zarr")
    group = zarr.open_group(str(out), mode="r+")
    row = int(np.flatnonzero(~group["valid"][:])[0])
    assert verify(out).ok
    group["images"][row, 0, 0] = 7  # rewritten by zarr: checksum valid, content wrong
    assert [(p.kind, p.row) for p in verify(out).problems] == [("invalid_not_zero", row)]


def test_json_schema(copy: Path, capsys) -> None:
    _flip(copy / "images/c/0/0/0", 100)
    code, out = _run(str(copy), "--json", capsys=capsys)
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False
    assert set(doc) == {"store", "ok", "format_version", "checksums", "complete",
                        "chunks_checked", "image_chunks", "n_images", "images_checked", "seconds",
                        "problems", "sources"}
    assert doc["format_version"] == 2 and doc["checksums"] is True and doc["sources"] is None
    assert [set(p) for p in doc["problems"]] == [PROBLEM_KEYS]
    assert doc["problems"][0]["kind"] in KINDS and doc["problems"][0]["chunk"] == 0


def test_format1_store_checks_histograms(synth_small: Path, tmp_path: Path, capsys,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out = _ingest(synth_small, tmp_path / "old.zarr", monkeypatch)
    group = zarr.open_group(str(out), mode="r")
    assert "format_version" not in group.attrs and group["images"].compressors == ()
    code, text = _run(str(out), capsys=capsys)
    assert code == 0 and "checksums ABSENT" in text
    # A flipped byte in the uncompressed pixels: no checksum, but the histogram differs.
    row = 2 * CHUNK + 9
    before = zarr.open_group(str(out))["images"][row]
    _flip(out / "images/c/2/0/0", 9 * SIZE * SIZE + 3 * SIZE + 4)
    after = zarr.open_group(str(out))["images"][row]
    assert (before != after).sum() == 1
    counts = np.bincount(after.ravel(), minlength=256) - np.bincount(before.ravel(),
                                                                     minlength=256)
    assert np.abs(counts).sum() == 2  # one pixel moved from one bin to another
    result = verify(out)
    assert not result.checksums and result.format_version == 1
    assert [(p.kind, p.chunk, p.row) for p in result.problems] == [("hist", 2, row)]
    assert "in 2 bins" in result.problems[0].message


def test_sources_changed_missing_new(synth_copy: Path, tmp_path: Path, capsys) -> None:
    out = _ingest(synth_copy, tmp_path / "x.zarr", labels="kermany3")
    assert verify(out, sources=True).ok
    files = sorted(synth_copy.rglob("*.jpeg"))
    same_size, resized, gone = files[0], files[1], files[2]
    data = bytearray(same_size.read_bytes())
    data[len(data) // 2] ^= 1
    same_size.write_bytes(bytes(data))
    resized.write_bytes(resized.read_bytes() + b"\0")
    gone.unlink()
    new = files[3].with_name("person999_virus_9.jpeg")
    shutil.copy(files[3], new)
    rel = {p: p.relative_to(synth_copy).as_posix() for p in (same_size, resized, gone, new)}
    code, text = _run(str(out), "--sources", capsys=capsys)
    assert code == 1
    heads = [line.split()[:2] for line in text.splitlines()]
    for kind, path in [("changed", same_size), ("changed", resized), ("missing", gone),
                       ("new", new)]:  # one line each, naming the file
        assert [kind, rel[path] + (":" if kind == "changed" else "")] in heads, (kind, text)
    result = verify(out, sources=True)
    assert not result.problems  # the store itself is intact
    check = result.sources
    changed = {c["path"]: c for c in check.changed}
    assert set(changed) == {rel[same_size], rel[resized]}
    assert changed[rel[same_size]]["bytes"] == changed[rel[same_size]]["stored_bytes"]
    assert changed[rel[resized]]["bytes"] == changed[rel[resized]]["stored_bytes"] + 1
    assert [m["path"] for m in check.missing] == [rel[gone]]
    assert [(n["path"], n["bytes"]) for n in check.new] == [(rel[new], new.stat().st_size)]
    doc = result.to_dict()["sources"]
    assert set(doc) == {"source", "files_checked", "changed", "missing", "new", "note"}
    assert doc["files_checked"] == 60


def test_sources_of_a_table(tmp_path: Path) -> None:
    import tables_corpus as tc

    table = tc.nih(tmp_path / "nih", n=12, seed=3)
    out = tmp_path / "nih.zarr"
    xraybatch.ingest(table.parent, out, files=table, table_preset="nih", size=SIZE, chunk=4)
    assert verify(out, sources=True).ok
    images = sorted(table.parent.rglob("*.png"))
    images[0].write_bytes(images[0].read_bytes()[:-1] + b"\1")
    lines = table.read_text().splitlines()
    shutil.copy(images[1], images[1].with_name("00099999_000.png"))
    row = next(line for line in lines if line.startswith(images[1].name))
    lines.append(row.replace(images[1].name, "00099999_000.png", 1))
    table.write_text("\n".join(lines) + "\n")
    check = verify(out, sources=True).sources
    assert [c["path"] for c in check.changed] == [images[0].relative_to(table.parent)
                                                  .as_posix()]
    assert [n["path"] for n in check.new] == [images[1].with_name("00099999_000.png")
                                              .relative_to(table.parent).as_posix()]
    assert check.note == ""


def test_sources_at_a_url(synth_small: Path, tmp_path: Path) -> None:
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    root = "memory://verify-src/chest_xray"
    for p in sorted(synth_small.rglob("*.jpeg"))[:20]:
        fs.pipe_file(f"/verify-src/chest_xray/{p.relative_to(synth_small).as_posix()}",
                     p.read_bytes())
    try:
        out = tmp_path / "url.zarr"
        xraybatch.ingest(root, out, size=SIZE, chunk=CHUNK)
        assert verify(out, sources=True).ok
        victim = sorted(fs.find("/verify-src/chest_xray"))[4]
        fs.pipe_file(victim, fs.cat_file(victim) + b"x")
        check = verify(out, sources=True).sources
        assert [c["path"] for c in check.changed] == [victim.split("chest_xray/", 1)[1]]
    finally:
        fs.rm("/verify-src", recursive=True)


def test_incomplete_store_is_summarized(synth_small: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """An ingest stopped after two of 30 chunks: one line says so and how to finish it,
    damage to a written chunk is still listed, ``--json`` lists every problem."""
    written = []

    def stopping(*args, **kwargs):  # Ctrl-C once two chunks are written
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(args[1])
        return write_chunk(*args, **kwargs)

    write_chunk = store.write_chunk
    monkeypatch.setattr(store, "write_chunk", stopping)
    out = tmp_path / "x.zarr"
    with pytest.raises(KeyboardInterrupt):
        xraybatch.ingest(synth_small, out, size=SIZE, chunk=2, scheduler="sync")
    monkeypatch.undo()
    (out / f"hist/c/{written[0]}/0").unlink()  # damage to a written chunk
    code, text = _run(str(out), capsys=capsys)
    listed = [line.split() for line in text.splitlines() if line.startswith("  ")]
    assert code == 1 and len(listed) == 2, text
    first = ", ".join(map(str, sorted(set(range(30)) - set(written))[:5]))
    assert " ".join(listed[0]) == (f"incomplete the ingest did not finish: 28 of 30 chunks not "
                                   f"written (chunks {first}, ...): run xraybatch ingest SRC "
                                   f"{out} --resume")
    assert listed[1][:3] == ["missing_chunk", "hist", "chunk"]
    assert cli.main(["verify", str(out), "--json", "--quiet"]) == 1
    kinds = [p["kind"] for p in json.loads(capsys.readouterr().out)["problems"]]
    assert (kinds.count("incomplete"), kinds.count("not_done"),
            kinds.count("missing_chunk")) == (1, 28, 2 * 28 + 1)


def test_interrupted_split_is_reported_then_mended_by_split(
        clean: Path, copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys) -> None:
    """A split killed before its commit: verify says so (as stats does); ``split`` run again
    finishes it as an uninterrupted one would; ``--keep`` waits for a restore."""
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(store.versions, "history_attrs", killed)  # called by write_split
        assert cli.main(["split", str(copy), "--by", "patient"]) == 130
    code, out = _run(str(copy), capsys=capsys)
    assert code == 1 and "interrupted 'xraybatch split'" in out and "--restore" in out, out
    assert [(p.kind, p.array) for p in verify(copy).problems] == [("split_pending", "split")]
    assert cli.main(["split", str(copy), "--by", "patient", "--keep", "test"]) == 2
    err = capsys.readouterr().err
    assert "half rewritten" in err and "--restore" in err and len(err.strip().splitlines()) == 1
    assert cli.main(["split", str(copy), "--by", "patient"]) == 0
    assert verify(copy).ok
    whole = Path(shutil.copytree(clean, tmp_path / "whole.zarr"))
    assert cli.main(["split", str(whole), "--by", "patient"]) == 0
    mended, fresh = xraybatch.open(str(copy)), xraybatch.open(str(whole))
    assert (mended.split == fresh.split).all() and "split_pending" not in mended.attrs
    assert mended.attrs["split_token"] == fresh.attrs["split_token"]


def test_distributed_client(clean: Path) -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        result = verify(clean, sources=False, scheduler=client)
    assert result.ok and result.images_checked == 60


def test_processes_scheduler(clean: Path) -> None:
    """The tasks pickle: worker processes open the store themselves."""
    result = verify(clean, sources=True, scheduler="processes", workers=2)
    assert result.ok and result.images_checked == 60 and result.sources.files_checked == 60


def test_store_at_a_url(synth_small: Path) -> None:
    """A store in object storage (fsspec's memory filesystem): the same checks."""
    fsspec = pytest.importorskip("fsspec")
    fs, url = fsspec.filesystem("memory"), "memory://verify-store/x.zarr"
    try:
        xraybatch.ingest(synth_small, url, size=SIZE, chunk=CHUNK)
        assert verify(url).ok
        key = "/verify-store/x.zarr/images/c/1/0/0"
        data = bytearray(fs.cat_file(key))
        data[7] ^= 1
        fs.pipe_file(key, bytes(data))
        assert [(p.kind, p.array, p.chunk) for p in verify(url).problems] == [
            ("checksum", "images", 1)]
    finally:
        fs.rm("/verify-store", recursive=True)


def test_not_a_store_is_a_usage_error(tmp_path: Path, capsys) -> None:
    assert cli.main(["verify", str(tmp_path / "none.zarr")]) == 2
    assert "no store at" in capsys.readouterr().err


def test_benchmark_smoke(tmp_path: Path) -> None:
    """benchmarks/verify.py runs end to end (a seeded synthetic set; nothing timed here)."""
    import subprocess
    import sys

    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "verify.py"
    proc = subprocess.run([sys.executable, str(bench), "--synth", "12", "--synth-scale", "0.1",
                           "--size", "32", "--rounds", "1", "--workers", "1",
                           "--out", str(tmp_path / "out"), "--tmp", str(tmp_path)],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["medians"]) == {"ingest, format 1 (no checksums)",
                                       "ingest, format 2 (checksums)", "verify, format 2",
                                       "verify --sources, format 2",
                                       "verify, format 1 (histograms)"}
    assert all(r["n"] == 12 and r["images_per_second"] > 0 for r in results["medians"].values())
    assert set(results["ratios"]) and "| verify, format 2 |" in proc.stdout
