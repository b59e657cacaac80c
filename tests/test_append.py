"""ingest --append: only new files decoded and stored after the old rows; the result equals a
fresh ingest of the union; statistics from stored partials; kill -9 anywhere, then --resume."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from corpus import assert_same_store, open_group

import xraybatch
from xraybatch import cli, decode, lock, splits, stats, store, zarrio
from xraybatch.store import StoreError, StoreRef

SIZE, CHUNK = 32, 8
REPO = Path(__file__).resolve().parents[1]


def _held_back(root: Path) -> list[Path]:
    """Files left out of the first ingest: a whole class (NORMAL, which sorts first: a new
    class must not renumber PNEUMONIA), a whole split (val) and every 5th other file."""
    files = sorted(root.rglob("*.jpeg"))
    rest = [p for p in files if "NORMAL" not in p.parts and "val" not in p.parts]
    return sorted({*[p for p in files if p not in rest], *rest[::5]})


def _hide(files: list[Path], root: Path, away: Path) -> None:
    for p in files:
        target = away / p.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(p, target)


def _restore(away: Path, root: Path) -> None:
    for p in sorted(away.rglob("*.jpeg")):
        shutil.move(p, root / p.relative_to(away))


@pytest.fixture(scope="module")
def grown(synth_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A source folder ingested without its held-back files (``old``), the same folder
    complete (``src``, plus a byte-identical copy of an old file under a new name), a fresh
    ingest of the complete folder (``fresh``) and an uninterrupted append (``appended``)."""
    base = tmp_path_factory.mktemp("grown")
    src, away = base / "chest_xray", base / "away"
    shutil.copytree(synth_small, src)
    first = sorted((src / "train" / "PNEUMONIA").glob("*.jpeg"))[0]
    copy = first.with_name("copy_of_" + first.name)  # a duplicate among the new files
    _hide(_held_back(src), src, away)
    old = base / "old.zarr"
    xraybatch.ingest(src, old, size=SIZE, chunk=CHUNK, scheduler="sync")
    _restore(away, src)
    shutil.copyfile(first, copy)
    fresh = base / "fresh.zarr"
    xraybatch.ingest(src, fresh, size=SIZE, chunk=CHUNK, scheduler="sync")
    appended = base / "appended.zarr"
    shutil.copytree(old, appended)
    result = xraybatch.ingest(src, appended, size=SIZE, chunk=CHUNK, append=True)
    return {"src": src, "old": old, "fresh": fresh, "appended": appended, "result": result,
            "copy": copy.relative_to(src).as_posix(), "first": first.relative_to(src).as_posix()}


def _copy(path: Path, tmp_path: Path, name: str = "out.zarr") -> Path:
    shutil.copytree(path, tmp_path / name)
    return tmp_path / name


def _normal(s: dict) -> dict:
    """Statistics with the order of split names in the leakage listing set aside (an
    append keeps the store's split order, a fresh ingest sorts them)."""
    leaked = s["patients"]["in_several_splits"]
    leaked["splits"] = {p: sorted(v) for p, v in leaked["splits"].items()}
    return s


def assert_union(appended: Path, fresh: Path, old: Path) -> None:
    """``appended`` holds the rows of ``old`` then the other rows of ``fresh`` in its scan
    order, and equals ``fresh`` array for array (labels and splits by name) and statistic for
    statistic."""
    a, f, o = xraybatch.open(str(appended)), xraybatch.open(str(fresh)), xraybatch.open(str(old))
    fresh_paths, old_paths = list(f.array("path")[:]), list(o.array("path")[:])
    kept = set(old_paths)
    assert list(a.array("path")[:]) == old_paths + [p for p in fresh_paths if p not in kept]
    order = pd.Series(range(len(f)), index=fresh_paths)[a.array("path")[:]].to_numpy()
    ga, gf = open_group(appended), open_group(fresh)
    names = store.sample_arrays(gf)
    assert sorted(store.sample_arrays(ga)) == sorted(names)
    for name in names:
        x, y = ga[name][:], gf[name][:][order]
        if name == "labels":
            x, y = np.asarray(a.classes)[x], np.asarray(f.classes)[y]
        elif name in ("split", "split_original"):
            x, y = np.asarray(a.splits)[x], np.asarray(f.splits)[y]
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert ga["chunk_done"][:].all() and a.complete
    assert _normal(a.stats()) == _normal(f.stats())
    qc = [c for c in a.manifest.columns if c.startswith("qc_")]
    pd.testing.assert_frame_equal(a.manifest[qc].reset_index(drop=True),
                                  f.manifest[qc].iloc[order].reset_index(drop=True))


def test_append_equals_fresh_ingest_of_the_union(grown):
    old, appended = xraybatch.open(str(grown["old"])), xraybatch.open(str(grown["appended"]))
    n_old = len(old)
    assert n_old % CHUNK and n_old % store.scan_chunk(CHUNK, n_old)  # partial chunks completed
    assert_union(grown["appended"], grown["fresh"], grown["old"])
    result = grown["result"]
    assert (result.n_new, result.rows, result.version) == (len(appended) - n_old,
                                                            (n_old, len(appended)), 2)
    # New class and split appended to the lists: the old numbering holds.
    assert old.classes == ["PNEUMONIA"] and appended.classes == ["PNEUMONIA", "NORMAL"]
    assert appended.splits == [*old.splits, "val"]
    group = open_group(grown["appended"])
    assert group["labels"].attrs["flag_meanings"] == "PNEUMONIA NORMAL"
    assert group["split"].attrs["flag_values"] == [0, 1, 2]
    np.testing.assert_array_equal(appended.labels[:n_old], old.labels)
    # History and versions.
    assert appended.version == 2 and [h["action"] for h in appended.history] == ["ingest",
                                                                               "append"]
    assert appended.history[-1]["rows"] == [n_old, len(appended)]
    assert "append_pending" not in appended.attrs
    # The new byte-identical copy and the old file are both flagged duplicates.
    m = appended.manifest.set_index("path")
    assert m.loc[grown["copy"], "qc_duplicate"] and m.loc[grown["first"], "qc_duplicate"]


def test_full_chunks_never_rewritten(grown, tmp_path):
    out = _copy(grown["old"], tmp_path)
    n_old = len(xraybatch.open(str(out)))
    full = out / "images" / "c" / "0" / "0" / "0"
    before = (full.stat().st_ino, full.stat().st_mtime_ns)
    boundary = out / "images" / "c" / str(n_old // CHUNK) / "0" / "0"
    boundary_before = boundary.stat().st_ino
    xraybatch.ingest(grown["src"], out, size=SIZE, chunk=CHUNK, append=True, scheduler="sync")
    assert (full.stat().st_ino, full.stat().st_mtime_ns) == before
    assert boundary.stat().st_ino != boundary_before  # completed: replaced by a rename


def test_nothing_held_is_decoded_again(grown, tmp_path, monkeypatch):
    out = _copy(grown["old"], tmp_path)
    decoded: list[str] = []
    load = decode.load

    def counting(path, *args, **kwargs):
        decoded.append(Path(path).relative_to(grown["src"]).as_posix())
        return load(path, *args, **kwargs)

    monkeypatch.setattr(decode, "load", counting)
    result = xraybatch.ingest(grown["src"], out, size=SIZE, chunk=CHUNK, append=True,
                              scheduler="sync")
    held = set(open_group(grown["old"])["path"][:])
    new = list(open_group(out)["path"][len(held):])
    assert sorted(decoded) == sorted(new) and len(decoded) == result.n_new
    assert not held & set(decoded)
    assert_union(out, grown["fresh"], grown["old"])


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_nothing_new_leaves_the_store_unchanged(grown, tmp_path, capsys):
    out = _copy(grown["appended"], tmp_path)
    before = _snapshot(out)
    code = cli.main(["ingest", str(grown["src"]), str(out), "--append", "--size", str(SIZE),
                     "--quiet"])
    assert code == 0 and "nothing to append" in capsys.readouterr().out
    assert _snapshot(out) == before


def test_changed_file_is_reported_not_replaced(grown, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(grown["src"], src)
    old_paths = list(open_group(grown["appended"])["path"][:])
    out = tmp_path / "out.zarr"
    xraybatch.ingest(src, out, size=SIZE, chunk=CHUNK, scheduler="sync")
    target = src / old_paths[3]
    target.write_bytes(target.read_bytes() + b"\0" * 10)  # same path, another size
    before = {n: open_group(out)[n][:] for n in ("sha256", "file_bytes", "images")}
    code = cli.main(["ingest", str(src), str(out), "--append", "--size", str(SIZE), "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0 and "NOT replaced" in printed and old_paths[3] in printed
    after = open_group(out)
    assert len(xraybatch.open(str(out))) == len(old_paths)
    for name, values in before.items():
        np.testing.assert_array_equal(after[name][:], values)
    result = xraybatch.ingest(src, out, size=SIZE, append=True, scheduler="sync")
    assert result.changed.path.tolist() == [old_paths[3]] and result.n_new == 0
    assert result.changed.bytes.iloc[0] == result.changed.stored_bytes.iloc[0] + 10


def test_mismatched_pixel_options_refused_in_one_line(grown, tmp_path, capsys):
    out = _copy(grown["old"], tmp_path)
    code = cli.main(["ingest", str(grown["src"]), str(out), "--append", "--size", "64",
                     "--fit", "pad", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--size 64 differs from the store's 32" in err and "--fit pad" in err
    assert "interpolation" not in err
    assert _snapshot(out) == _snapshot(grown["old"])


def test_refusals(grown, tmp_path):
    out = _copy(grown["old"], tmp_path)
    with pytest.raises(StoreError, match="nothing to resume: no append is in progress"):
        xraybatch.ingest(grown["src"], out, size=SIZE, append=True, resume=True)
    with pytest.raises(ValueError, match="--overwrite and --append exclude"):
        xraybatch.ingest(grown["src"], out, size=SIZE, append=True, overwrite=True)
    with pytest.raises(StoreError, match="does not exist"):
        xraybatch.ingest(grown["src"], tmp_path / "none.zarr", size=SIZE, append=True)
    with pytest.raises(StoreError, match="--labels kermany3 differs"):
        xraybatch.ingest(grown["src"], out, size=SIZE, labels="kermany3", append=True)
    with lock.locked(StoreRef(str(out))), pytest.raises(StoreError, match="being written"):
        xraybatch.ingest(grown["src"], out, size=SIZE, append=True)
    zarrio.consolidate(zarr.open_group(str(out), mode="r+"), drop=("format_version",))
    with pytest.raises(StoreError, match="format-1 store .* --overwrite"):
        xraybatch.ingest(grown["src"], out, size=SIZE, append=True)


def test_split_original_is_appended_when_present(grown, tmp_path):
    """A store with ``split_original`` (written at creation by `xraybatch split`'s branch)
    gets the new rows' scan splits there too, with the new split names."""
    out = _copy(grown["old"], tmp_path)
    group = zarr.open_group(str(out), mode="r+")
    if "split_original" not in group:  # (made here as creation makes it with that branch)
        split = group["split"]
        copy = group.create_array("split_original", shape=split.shape, dtype="int8",
                                  chunks=split.chunks, dimension_names=("sample",),
                                  attributes=dict(split.attrs))
        copy[:] = split[:]
        zarrio.consolidate(group)
    xraybatch.ingest(grown["src"], out, size=SIZE, append=True, scheduler="sync")
    after = open_group(out)
    np.testing.assert_array_equal(after["split_original"][:], after["split"][:])
    assert after["split_original"].attrs["flag_meanings"] == after["split"].attrs[
        "flag_meanings"] == " ".join(xraybatch.open(str(out)).splits)


def test_ingest_records_version_one_once(synth_small, tmp_path):
    out = tmp_path / "x.zarr"
    xraybatch.ingest(synth_small, out, size=SIZE, chunk=30, scheduler="sync")
    xraybatch.ingest(synth_small, out, size=SIZE, chunk=30, scheduler="sync", resume=True)
    ds = xraybatch.open(str(out))
    assert ds.attrs["format_version"] == 2 and ds.version == 1
    assert [(h["action"], h["rows"], h["version"]) for h in ds.history] == [("ingest", [0, 60],
                                                                            1)]


# --- statistics partials ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_patient_table_gives_the_summary_of_its_rows(seed):
    """The stored per-patient table, split in two and merged (an append), gives exactly
    what patients.summarize computes from every row (the independent reference)."""
    from xraybatch import patients

    rng = np.random.default_rng(seed)
    n, splits, classes = 300, ["train", "val", "test"], ["A", "B", "C"]
    ids = np.array([f"p{i}" for i in rng.integers(0, 80, n)], dtype=object)
    ids[rng.random(n) < 0.2] = ""
    split, label = rng.integers(0, 3, n), rng.integers(0, 3, n)
    cut = int(rng.integers(0, n))
    first = patients.table(ids[:cut], np.minimum(split[:cut], 1), label[:cut], 2, 3)  # 2 splits
    merged = patients.merge(first, patients.table(ids[cut:], split[cut:], label[cut:], 3, 3))
    expected = patients.summarize(ids, np.array(splits, dtype=object)[split],
                                  np.array(classes, dtype=object)[label], splits, classes)
    whole = patients.table(ids, split, label, 3, 3)
    assert patients.summary_of(whole, n, splits, classes) == expected
    ids_first = np.array(splits, dtype=object)[np.minimum(split[:cut], 1)]
    expected_cut = patients.summarize(ids, np.concatenate(
        [ids_first, np.array(splits, dtype=object)[split[cut:]]]),
        np.array(classes, dtype=object)[label], splits, classes)
    assert patients.summary_of(merged, n, splits, classes) == expected_cut
    assert patients.summary_of(merged, n, splits, []) == patients.summarize(
        ids, np.concatenate([ids_first, np.array(splits, dtype=object)[split[cut:]]]),
        np.array(classes, dtype=object)[label], splits, [])


def _rows_reduced(monkeypatch) -> list[int]:
    """Rows of histograms that stats reduces, call by call."""
    rows: list[int] = []
    reduce = stats.group_histograms

    def counting(hist, ids, n):
        rows.append(hist.shape[0])
        return reduce(hist, ids, n)

    monkeypatch.setattr(stats, "group_histograms", counting)
    return rows


def test_stats_after_append_read_no_old_histogram(grown, monkeypatch):
    rows = _rows_reduced(monkeypatch)
    ds = xraybatch.open(str(grown["appended"]))
    meta, sums = ds.stats_partials()
    assert meta["rows"] == len(ds) and sums["hist"].sum() == ds.hist.sum().compute()
    read: list[int] = []
    ids = store.XrayStore.patient_ids
    monkeypatch.setattr(store.XrayStore, "patient_ids",
                        lambda self, start=0: read.append(start) or ids(self, start))
    ds.stats()
    assert rows == [] and read == []  # the partials cover every committed row


def test_changed_split_assignment_invalidates_partials(grown, tmp_path, monkeypatch):
    out = _copy(grown["appended"], tmp_path)
    group = zarr.open_group(str(out), mode="r+")
    split = group["split"][:]
    group["split"][:] = np.where(split == 0, 1, 0).astype(np.int8)  # what `xraybatch split` does
    group.update_attributes(store.history_attrs(dict(group.attrs), {
        "action": "split", "source": "test", "rows": [0, len(split)]}))
    ds = xraybatch.open(str(out))
    assert ds.version == 3
    rows = _rows_reduced(monkeypatch)
    got = ds.stats()
    assert rows == [len(ds)]  # recomputed from every histogram
    monkeypatch.setattr(store.XrayStore, "stats_partials", lambda self: None)
    assert got == ds.stats()


def test_partials_cover_a_prefix(grown, monkeypatch):
    """Partials of fewer rows (a store whose partials predate rows) are extended by the
    histograms of the rest only, to the same figures."""
    ds = xraybatch.open(str(grown["appended"]))
    old = xraybatch.open(str(grown["old"]))
    stored = old.stats_partials()
    full, meta = stats.sums_with(ds.array("hist"), None, ds.labels, ds.split, ds.valid,
                                 ds.classes, ds.splits, None, ds.patient_ids)
    rows = _rows_reduced(monkeypatch)
    extended, meta2 = stats.sums_with(ds.array("hist"), None, ds.labels, ds.split, ds.valid,
                                      ds.classes, ds.splits, stored, ds.patient_ids)
    assert rows == [len(ds) - len(old)] and meta == meta2
    order = np.argsort(full["patient_ids"])
    assert full["patient_ids"].tolist()  # (Kermany names: patients from the file names)
    for key in full:
        x, y = full[key], extended[key]
        if key.startswith("patient_"):  # the same patients, listed in another order
            x, y = x[order], y[np.argsort(y if key == "patient_ids" else
                                          extended["patient_ids"])]
        np.testing.assert_array_equal(x, y, err_msg=key)


# --- table input --------------------------------------------------------------------------------


def _table(src: Path, path: Path, rows: list[str], multi: bool) -> Path:
    if multi:  # a labels column: every 3rd image also shows an effusion
        findings = [("Pneumonia" if "PNEUMONIA" in r else "") + ("|Effusion" if i % 3 == 0
                                                                 else "")
                    for i, r in enumerate(rows)]
        frame = pd.DataFrame({"path": rows, "labels": [f.strip("|") for f in findings]})
    else:
        frame = pd.DataFrame({"path": rows, "label": [r.split("/")[1] for r in rows]})
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("multi", [False, True])
def test_table_append_equals_fresh_ingest(grown, tmp_path, multi):
    src = grown["src"]
    rows = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.jpeg"))
    columns = {"labels": "labels"} if multi else {"label": "label"}
    union = _table(src, tmp_path / "all.csv", rows, multi)
    first = _table(src, tmp_path / "first.csv", rows[::2], multi)
    # Same rows of the union table and of the first: the findings of a row do not depend on
    # which table named it (its index in the union decides them).
    if multi:
        frame = pd.read_csv(union).fillna("")
        frame.iloc[::2].to_csv(first, index=False)
    kw = dict(size=SIZE, chunk=CHUNK, scheduler="sync", columns=columns)
    old, out, fresh = tmp_path / "old.zarr", tmp_path / "out.zarr", tmp_path / "fresh.zarr"
    xraybatch.ingest(src, old, files=first, **kw)
    shutil.copytree(old, out)
    result = xraybatch.ingest(src, out, files=union, append=True, **kw)
    xraybatch.ingest(src, fresh, files=union, **kw)
    n_old = len(xraybatch.open(str(old)))
    assert result.n_new == len(xraybatch.open(str(fresh))) - n_old > 0
    assert_union(out, fresh, old)
    if multi:
        np.testing.assert_array_equal(xraybatch.open(str(out)).findings[:n_old],
                                      xraybatch.open(str(old)).findings)


def test_multilabel_new_finding_refused_in_one_line(grown, tmp_path, capsys):
    src = grown["src"]
    rows = sorted(p.relative_to(src).as_posix() for p in src.rglob("*.jpeg"))
    pd.DataFrame({"path": rows[:10], "labels": "Pneumonia"}).to_csv(tmp_path / "a.csv",
                                                                    index=False)
    pd.DataFrame({"path": rows, "labels": "Nodule"}).to_csv(tmp_path / "b.csv", index=False)
    out = tmp_path / "out.zarr"
    xraybatch.ingest(src, out, files=tmp_path / "a.csv", size=SIZE, scheduler="sync",
                     columns={"labels": "labels"})
    code = cli.main(["ingest", str(src), str(out), "--files", str(tmp_path / "b.csv"),
                     "--labels-column", "labels", "--append", "--size", str(SIZE), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "findings new to the store (Nodule)" in err


# --- kill -9 during an append, then --resume ----------------------------------------------------

_CHILD = textwrap.dedent("""
    import os, signal, sys
    import xraybatch
    from xraybatch import store
    point, src, out, size, chunk = sys.argv[1:6]
    calls = []

    def killing(original, after):
        def run(*args, **kwargs):
            if not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            calls.append(1)
            if len(calls) >= after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return run

    # grow: pending recorded, nothing grown; rows: arrays grown, scan columns written;
    # chunks: two chunk tasks written; commit: everything but the commit.
    name, after = {"grow": ("grow", 0), "rows": ("write_rows", 1),
                   "chunks": ("write_chunk", 2), "commit": ("commit", 0)}[point]
    setattr(store, name, killing(getattr(store, name), after))
    xraybatch.ingest(src, out, size=int(size), chunk=int(chunk), append=True,
                     scheduler="sync")
""")


def _killed_append(src: Path, out: Path, point: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD, point, str(src), str(out), str(SIZE),
                           str(CHUNK)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def assert_reads_as(out: Path, previous: Path) -> None:
    """Every reader sees ``previous``: XrayStore, zarr's consolidated metadata, xarray."""
    a, b = xraybatch.open(str(out)), xraybatch.open(str(previous))
    assert (len(a), a.version, a.complete) == (len(b), b.version, True)
    for name in b.group.array_keys():
        np.testing.assert_array_equal(a.group[name][:], b.group[name][:], err_msg=name)
    assert a.stats() == b.stats()
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(out, consolidated=True, zarr_format=3)
    assert ds.sizes["sample"] == len(b)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["grow", "rows", "chunks", "commit"])
def test_kill_during_append_then_resume(grown, tmp_path, point):
    out = _copy(grown["old"], tmp_path)
    _killed_append(grown["src"], out, point)
    assert "append_pending" in open_group(out).attrs
    assert_reads_as(out, grown["old"])
    scheduler = "processes" if point == "chunks" else "sync"  # tasks in other processes
    code = cli.main(["ingest", str(grown["src"]), str(out), "--append", "--resume", "--size",
                     str(SIZE), "--quiet", "--scheduler", scheduler, "--workers", "2"])
    assert code == 0
    assert_same_store(open_group(out), open_group(grown["appended"]))
    assert xraybatch.open(str(out)).stats() == xraybatch.open(str(grown["appended"])).stats()
    assert [h["version"] for h in xraybatch.open(str(out)).history] == [1, 2]


@pytest.mark.slow
def test_kill_then_append_anew_discards_the_interrupted_append(grown, tmp_path):
    """A killed append whose files then changed: --resume refuses, --append starts again
    and leaves nothing of the abandoned one (its chunks beyond the old rows are deleted)."""
    src, away = tmp_path / "src", tmp_path / "away"
    shutil.copytree(grown["src"], src)
    _hide(_held_back(src), src, away)
    old = tmp_path / "old.zarr"
    xraybatch.ingest(src, old, size=SIZE, chunk=CHUNK, scheduler="sync")
    _restore(away, src)
    out = _copy(old, tmp_path)
    _killed_append(src, out, "chunks")
    held = set(open_group(old)["path"][:])
    new = sorted(p for p in src.rglob("*.jpeg") if p.relative_to(src).as_posix() not in held)
    for p in new[::2]:
        p.unlink()
    with pytest.raises(StoreError, match="changed since it started"):
        xraybatch.ingest(src, out, size=SIZE, append=True, resume=True)
    xraybatch.ingest(src, out, size=SIZE, append=True, scheduler="sync")
    fresh = tmp_path / "fresh.zarr"
    xraybatch.ingest(src, fresh, size=SIZE, chunk=CHUNK, scheduler="sync")
    assert_union(out, fresh, old)


@pytest.mark.slow
def test_kill_then_nothing_new_discards_the_interrupted_append(grown, tmp_path):
    """A killed append whose new files are all gone: --append (nothing to add) drops it, so
    the store is its previous version again, without append_pending, and writable (split)."""
    src, away = grown["src"], tmp_path / "away"
    out = _copy(grown["old"], tmp_path)
    _killed_append(src, out, "chunks")
    held = set(open_group(grown["old"])["path"][:])
    _hide([p for p in src.rglob("*.jpeg") if p.relative_to(src).as_posix() not in held], src,
          away)  # the new files are gone again
    try:
        result = xraybatch.ingest(src, out, size=SIZE, append=True, scheduler="sync")
    finally:
        _restore(away, src)  # (the fixture's source, shared by the module)
    assert result.n_new == 0 and result.discarded
    assert "append_pending" not in open_group(out).attrs
    assert_same_store(open_group(out), open_group(grown["old"]))
    images = zarr.open_array(str(out / "images"), mode="r")  # its own metadata: cut back too
    assert images.shape[0] == len(xraybatch.open(str(grown["old"])))
    assert cli.main(["split", str(out), "--by", "patient"]) == 0


def test_plain_resume_of_an_appended_store_points_to_append(grown, tmp_path, capsys):
    """``--resume`` (an ingest's) on a store with an append pending, or appended since its
    ingest, says what to run instead of advising --overwrite, and changes nothing."""
    done = _copy(grown["appended"], tmp_path, "done.zarr")
    args = ["ingest", str(grown["src"]), "--size", str(SIZE), "--quiet", "--resume"]
    assert cli.main(args[:2] + [str(done)] + args[2:]) == 2
    err = capsys.readouterr().err
    assert "is complete (version 2" in err and "--append" in err and "--overwrite" not in err
    assert xraybatch.open(str(done)).complete
    pending = _copy(grown["old"], tmp_path, "pending.zarr")
    zarr.open_group(str(pending), mode="r+").update_attributes(
        {"append_pending": {"rows": [0, 1], "token": "t"}})
    assert cli.main(args[:2] + [str(pending)] + args[2:]) == 2
    assert "finish it with --append --resume" in capsys.readouterr().err


def test_append_after_a_computed_split_says_to_split_again(grown, tmp_path, capsys):
    out = _copy(grown["old"], tmp_path)
    assert cli.main(["split", str(out), "--by", "patient", "--seed", "1"]) == 0
    capsys.readouterr()
    assert cli.main(["ingest", str(grown["src"]), str(out), "--size", str(SIZE), "--quiet",
                     "--append", "--scheduler", "sync"]) == 0
    assert "run it again so that no patient" in capsys.readouterr().out
    plain = _copy(grown["old"], tmp_path, "plain.zarr")  # the scan's split: nothing to say
    assert cli.main(["ingest", str(grown["src"]), str(plain), "--size", str(SIZE), "--quiet",
                     "--append", "--scheduler", "sync"]) == 0
    assert "note:" not in capsys.readouterr().out


def test_split_racing_an_append_is_refused_in_one_line(grown, tmp_path, monkeypatch, capsys):
    """``xraybatch split`` with an append that finishes, or still runs, while the split
    computes its groups, or that was interrupted: one line each, nothing of the split written.
    """
    real = splits.groups_of
    out = _copy(grown["old"], tmp_path)

    def appended_meanwhile(*args, **kwargs):
        xraybatch.ingest(grown["src"], out, size=SIZE, append=True, scheduler="sync")
        return real(*args, **kwargs)

    monkeypatch.setattr(splits, "groups_of", appended_meanwhile)
    assert cli.main(["split", str(out), "--by", "patient"]) == 2
    err = capsys.readouterr().err
    assert "changed while the split was computed" in err and "run the split again" in err
    assert len(err.strip().splitlines()) == 1, err
    ds = xraybatch.open(str(out))
    assert [h["action"] for h in ds.history] == ["ingest", "append"]
    assert "split_assignment" not in ds.attrs and "split_pending" not in ds.attrs
    monkeypatch.setattr(splits, "groups_of", real)
    assert cli.main(["split", str(out), "--by", "patient"]) == 0  # run again: written
    running = _copy(grown["old"], tmp_path, "running.zarr")
    with contextlib.ExitStack() as writer:

        def append_running(*args, **kwargs):
            writer.enter_context(lock.locked(StoreRef(str(running))))
            return real(*args, **kwargs)

        monkeypatch.setattr(splits, "groups_of", append_running)
        assert cli.main(["split", str(running), "--by", "patient"]) == 2
    monkeypatch.setattr(splits, "groups_of", real)
    err = capsys.readouterr().err
    assert "is being written by" in err and len(err.strip().splitlines()) == 1, err
    pending = _copy(grown["old"], tmp_path, "pending.zarr")
    zarr.open_group(str(pending), mode="r+").update_attributes(
        {"append_pending": {"rows": [0, 1], "token": "t"}})
    files = {p: p.read_bytes() for p in pending.rglob("*") if p.is_file()}
    for args in (["--by", "patient"], ["--restore"]):
        assert cli.main(["split", str(pending), *args]) == 2
        err = capsys.readouterr().err
        assert "has an interrupted append" in err and "--append --resume" in err
        assert len(err.strip().splitlines()) == 1, err
    assert {p: p.read_bytes() for p in pending.rglob("*") if p.is_file()} == files


# --- object storage --------------------------------------------------------------------------


@pytest.fixture
def s3_endpoint() -> str:
    """A moto S3 server on 127.0.0.1 with the bucket ``xrb`` (as in test_s3.py); killed at
    teardown."""
    s3fs = pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from corpus import free_port, wait_until

    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                s3fs.S3FileSystem(**_s3(url)).mkdir("xrb")
                return True
            except Exception:  # not listening yet
                return False

        wait_until(up, 60, "the moto server", 0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=30)


def _s3(endpoint: str) -> dict:
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}


@pytest.mark.slow
def test_append_to_object_storage(grown, s3_endpoint, tmp_path):
    """The same append with OUT in S3: the same arrays as the local append, pending and
    commit included (there the commit is one PUT of the root zarr.json)."""
    url, options = "s3://xrb/grown.zarr", _s3(s3_endpoint)
    away = tmp_path / "away"
    # The same source folder as the local stores': hide the held-back files in place.
    local = open_group(grown["old"])
    held = set(local["path"][:])
    moved = [p for p in grown["src"].rglob("*.jpeg")
             if p.relative_to(grown["src"]).as_posix() not in held]
    _hide(moved, grown["src"], away)
    try:
        xraybatch.ingest(grown["src"], url, size=SIZE, chunk=CHUNK, storage_options=options)
    finally:
        _restore(away, grown["src"])
    result = xraybatch.ingest(grown["src"], url, size=SIZE, append=True,
                              storage_options=options)
    assert result.n_new == grown["result"].n_new
    assert_same_store(StoreRef(url, options).open("r"), open_group(grown["appended"]))
    ds = xraybatch.open(url, storage_options=options)
    assert ds.version == 2 and ds.stats() == xraybatch.open(str(grown["appended"])).stats()


@pytest.mark.slow
def test_append_on_a_distributed_client(grown, tmp_path):
    """Through a ``distributed.Client`` (in-process cluster, no network): the arrays grow
    before the tasks are submitted, the tasks open the pending store themselves."""
    distributed = pytest.importorskip("distributed")
    out = _copy(grown["old"], tmp_path)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        result = xraybatch.ingest(grown["src"], out, size=SIZE, append=True, scheduler=client)
    assert result.n_new == grown["result"].n_new
    assert_same_store(open_group(out), open_group(grown["appended"]))


@pytest.mark.slow
def test_benchmark_smoke(synth_small):
    """benchmarks/append.py end to end on a tiny synthetic set: it runs every configuration
    and its appended store equals the ingest of the union (nothing timed here)."""
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "append.py"),
                           str(synth_small), "--n", "30", "--repeat", "1", "--size", "32"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "30 images (3 appended)" in proc.stdout and "check: = union" in proc.stdout
    for config in ("append 10%", "ingest 10% alone", "ingest union", "stats fresh"):
        assert f"| {config} |" in proc.stdout


def _with_whole_chunk_images(path: Path, out: Path) -> Path:
    """A copy of the store at ``path`` with the images layout of stores written before the
    images were sharded: one plain chunk file (bytes + CRC-32C) per ``CHUNK`` images."""
    from zarr.codecs import Crc32cCodec

    shutil.copytree(path, out)
    group = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    values = group["images"][:]
    group.create_array("images", shape=values.shape, dtype="uint8", fill_value=0,
                       chunks=(CHUNK, SIZE, SIZE), compressors=Crc32cCodec(),
                       dimension_names=("sample", "y", "x"), overwrite=True)[:] = values
    zarrio.consolidate(group)
    return out


def test_append_to_a_store_with_whole_chunk_images(grown, tmp_path):
    """Stores written before the images were sharded keep their layout through an append,
    and read, load and verify as before."""
    from xraybatch.torch_dataset import XrayDataset, XrayLoader

    out = _with_whole_chunk_images(grown["old"], tmp_path / "plain.zarr")
    xraybatch.ingest(grown["src"], out, size=SIZE, chunk=CHUNK, append=True, scheduler="sync")
    images = zarr.open_array(str(out), path="images", mode="r")
    assert images.shards is None and images.chunks == (CHUNK, SIZE, SIZE)
    fresh = zarr.open_array(str(grown["appended"]), path="images", mode="r")  # sharded
    np.testing.assert_array_equal(images[:], fresh[:])
    assert xraybatch.verify(str(out)).ok
    ds = XrayDataset(str(out), dtype="uint8", valid_only=False)
    assert ds._cache().files is None  # read by whole chunks
    batches = [x[:, 0].numpy() for x, _ in XrayLoader(ds, batch_size=7, shuffle=False,
                                                           streams=1)]
    np.testing.assert_array_equal(np.concatenate(batches), fresh[:])
