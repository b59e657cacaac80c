"""ingest(): the stored arrays against an independent serial cv2 reference, bit for bit.

The reference walks the folder itself, reads every file with plain ``cv2.imread`` and resizes
with ``cv2.resize`` (the tutorial's loop), so it shares no code with xraybatch.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr

import xraybatch
from xraybatch import decode, store, tasks

SPLIT_ORDER = ["train", "val", "test", "none"]
KERMANY3 = ["NORMAL", "BACTERIA", "VIRUS"]
INTER = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
REDUCED = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
           4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}
SYNTH_SIZE = 64  # small enough that quarter-size synthetic JPEGs get DCT-reduced decodes
REAL_SIZE = 256
CONFIGS = [("exact", "area"), ("exact", "linear"), ("fast", "area")]
PER_IMAGE = ["images", "hist", "labels", "split", "valid", "status", "message", "path",
             "file_bytes", "sha256", "orig_height", "orig_width", "orig_channels",
             "orig_bitdepth", "orig_format", "decode_scale"]


# --- the independent reference ---------------------------------------------------------------


def kermany3_label(rel: str) -> int:
    folder, name = rel.split("/")[-2:]
    if folder == "NORMAL":
        return 0
    kind = re.fullmatch(r"person\d+_(bacteria|virus)_\d+\.jpeg", name).group(1)
    return KERMANY3.index(kind.upper())


def walk(root: Path) -> dict[str, np.ndarray]:
    """Path, split and kermany3 label of every .jpeg below root, in split-then-path order."""
    rels = sorted((p.relative_to(root).as_posix() for p in root.rglob("*.jpeg")),
                  key=lambda r: (SPLIT_ORDER.index(r.split("/")[0]), r))
    splits = [s for s in SPLIT_ORDER if any(r.startswith(s + "/") for r in rels)]
    return {"path": np.array(rels, dtype=object),
            "split": np.array([splits.index(r.split("/")[0]) for r in rels]),
            "labels": np.array([kermany3_label(r) for r in rels]),
            "file_bytes": np.array([os.path.getsize(root / r) for r in rels]),
            "splits": splits}


def fast_scale(h: int, w: int, size: int) -> int:
    """Largest of 8, 4, 2 whose reduced decode (ceil(side / s)) still covers size; else 1."""
    for s in (8, 4, 2):
        if -(-h // s) >= size and -(-w // s) >= size:
            return s
    return 1


def reference(root: Path, rels: np.ndarray, size: int, configs) -> dict:
    """Serial cv2 loop: per-config image stacks and the source facts, one file at a time."""
    n = len(rels)
    out: dict = {cfg: np.zeros((n, size, size), np.uint8) for cfg in configs}
    facts = {k: np.zeros(n, np.int64) for k in ("orig_height", "orig_width", "orig_channels",
                                                "decode_scale")}
    for i, rel in enumerate(rels):
        path = str(root / rel)
        full = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        h, w = full.shape
        unchanged = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        s = fast_scale(h, w, size)
        facts["orig_height"][i], facts["orig_width"][i] = h, w
        facts["orig_channels"][i] = 1 if unchanged.ndim == 2 else unchanged.shape[2]
        facts["decode_scale"][i] = s
        for mode, interp in configs:
            src = full if mode == "exact" else cv2.imread(path, REDUCED[s])
            out[mode, interp][i] = cv2.resize(src, (size, size), interpolation=INTER[interp])
    return out | facts


def arrays(out: Path) -> dict[str, np.ndarray]:
    """Every per-image array of a store, read with zarr alone."""
    group = zarr.open_group(str(out), mode="r")
    return {name: group[name][:] for name in PER_IMAGE}


def run(src: Path, out: Path, **kwargs) -> xraybatch.IngestResult:
    kwargs.setdefault("labels", "kermany3")
    kwargs.setdefault("workers", 2)
    return xraybatch.ingest(src, out, **kwargs)


# --- fixtures: one ingest per configuration, shared by the module ----------------------------


@pytest.fixture(scope="module")
def synth_walk(synth_small: Path) -> dict:
    return walk(synth_small)


@pytest.fixture(scope="module")
def synth_reference(synth_small: Path, synth_walk: dict) -> dict:
    return reference(synth_small, synth_walk["path"], SYNTH_SIZE,
                     [*CONFIGS, ("fast", "linear")])


@pytest.fixture(scope="module", params=[*CONFIGS, ("fast", "linear")], ids="-".join)
def synth_store(request, synth_small: Path, tmp_path_factory) -> tuple[tuple, Path]:
    mode, interp = request.param
    out = tmp_path_factory.mktemp("synth_store") / "x.zarr"
    run(synth_small, out, size=SYNTH_SIZE, decode_mode=mode, interpolation=interp, chunk=16)
    return request.param, out


@pytest.fixture(scope="module")
def synth_baseline(synth_small: Path, tmp_path_factory) -> Path:
    """Fast/area ingest, threads, chunk 32: what the other runs are compared with."""
    out = tmp_path_factory.mktemp("baseline") / "x.zarr"
    run(synth_small, out, size=SYNTH_SIZE, chunk=32, scheduler="threads")
    return out


@pytest.fixture(scope="module")
def real_walk(real_sample: Path) -> dict:
    return walk(real_sample)


@pytest.fixture(scope="module")
def real_reference(real_sample: Path, real_walk: dict) -> dict:
    return reference(real_sample, real_walk["path"], REAL_SIZE, CONFIGS)


@pytest.fixture(scope="module", params=CONFIGS, ids="-".join)
def real_store(request, real_sample: Path, tmp_path_factory) -> tuple[tuple, Path]:
    mode, interp = request.param
    out = tmp_path_factory.mktemp("real_store") / "x.zarr"
    run(real_sample, out, size=REAL_SIZE, decode_mode=mode, interpolation=interp)
    return request.param, out


# --- bit-exact images and per-image facts ----------------------------------------------------


def check_store(out: Path, config: tuple, ref: dict, truth: dict) -> None:
    got = arrays(out)
    assert got["path"].tolist() == truth["path"].tolist()
    for name in ("labels", "split", "file_bytes"):
        np.testing.assert_array_equal(got[name], truth[name], err_msg=name)
    n_diff = int((got["images"] != ref[config]).any(axis=(1, 2)).sum())
    assert n_diff == 0, f"{n_diff} images differ from plain cv2 for {config}"
    for name in ("orig_height", "orig_width", "orig_channels"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    expected_scale = ref["decode_scale"] if config[0] == "fast" else np.ones(len(got["path"]))
    np.testing.assert_array_equal(got["decode_scale"], expected_scale)
    hist = np.stack([np.bincount(img.ravel(), minlength=256) for img in got["images"]])
    np.testing.assert_array_equal(got["hist"], hist)
    assert got["valid"].all() and set(got["status"]) == {"ok"} and set(got["message"]) == {""}
    assert set(got["orig_format"]) == {"jpeg"} and set(got["orig_bitdepth"]) == {8}
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["splits"] == truth["splits"] and group.attrs["classes"] == KERMANY3
    assert group.attrs["complete"] is True


def test_synth_store_equals_cv2_reference(synth_store, synth_reference, synth_walk) -> None:
    config, out = synth_store
    check_store(out, config, synth_reference, synth_walk)


def test_real_store_equals_cv2_reference(real_store, real_reference, real_walk) -> None:
    config, out = real_store
    check_store(out, config, real_reference, real_walk)


def check_quirks(ref: dict, size: int) -> None:
    """Guard the guards: the data must hold what the bit-exact tests claim to cover."""
    assert {1, 3} <= set(ref["orig_channels"])
    assert len(set(ref["decode_scale"])) >= 2  # reduced and full decodes
    assert (np.minimum(ref["orig_height"], ref["orig_width"]) < size).any()  # upscaled
    # area and linear differ, so the interpolation really reaches cv2.resize.
    assert (ref["exact", "area"] != ref["exact", "linear"]).any(axis=(1, 2)).all()


def test_synth_reference_exercises_the_quirks(synth_reference) -> None:
    check_quirks(synth_reference, SYNTH_SIZE)


def test_real_reference_exercises_the_quirks(real_reference) -> None:
    check_quirks(real_reference, REAL_SIZE)
    assert {1, 2, 4, 8} == set(real_reference["decode_scale"])


def test_sha256_and_duplicates_on_real_sample(real_store, real_sample: Path) -> None:
    import hashlib

    _, out = real_store
    got = arrays(out)
    sha = [hashlib.sha256((real_sample / p).read_bytes()).hexdigest() for p in got["path"]]
    assert got["sha256"].tolist() == sha
    twins = [i for i, p in enumerate(got["path"]) if "person1430_bacteria_369" in p]
    assert len(twins) == 2 and got["sha256"][twins[0]] == got["sha256"][twins[1]]


# --- schedulers and chunk sizes --------------------------------------------------------------


@pytest.mark.parametrize(("scheduler", "chunk"), [("threads", 7), ("sync", 32), ("sync", 7),
                                                  ("processes", 7)])
def test_schedulers_and_chunks_give_identical_stores(synth_small, synth_baseline, tmp_path,
                                                     scheduler: str, chunk: int) -> None:
    out = tmp_path / "x.zarr"
    result = run(synth_small, out, size=SYNTH_SIZE, chunk=chunk, scheduler=scheduler)
    assert result.chunks_total == -(-60 // chunk) == result.chunks_run
    base, got = arrays(synth_baseline), arrays(out)
    for name in PER_IMAGE:
        np.testing.assert_array_equal(got[name], base[name], err_msg=name)
    group = zarr.open_group(str(out), mode="r")
    assert group["images"].shards == (chunk, SYNTH_SIZE, SYNTH_SIZE)
    assert group["chunk_done"][:].all()
    assert xraybatch.open(out).stats() == xraybatch.open(synth_baseline).stats()


# --- bad files, CSV labels, junk -------------------------------------------------------------


BAD = {"train/PNEUMONIA/person9001_bacteria_1.jpeg": "empty",
       "val/NORMAL/IM-9999-0001.jpeg": "truncated",
       "test/PNEUMONIA/person9002_virus_2.jpeg": "not_image"}


def add_bad_files(root: Path) -> None:
    donor = sorted(root.glob("train/NORMAL/*.jpeg"))[0].read_bytes()
    noise = np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    contents = [b"", donor[: len(donor) // 2], b"\x00" + noise]
    for rel, data in zip(BAD, contents, strict=True):
        (root / rel).write_bytes(data)


def test_bad_files_reported_and_good_images_untouched(synth_copy, synth_baseline, tmp_path):
    add_bad_files(synth_copy)
    out = tmp_path / "x.zarr"
    result = run(synth_copy, out, size=SYNTH_SIZE, chunk=32)
    assert result.n_images == 63 and result.n_stored == 60
    assert dict(zip(result.failures.path, result.failures.status, strict=True)) == BAD
    assert all(result.failures.message)

    got, clean = arrays(out), arrays(synth_baseline)
    bad = np.isin(got["path"], list(BAD))
    assert got["status"][bad].tolist() == [BAD[p] for p in got["path"][bad]]
    assert not got["valid"][bad].any() and got["valid"][~bad].all()
    assert not got["images"][bad].any() and not got["hist"][bad].any()
    assert not got["orig_height"][bad].any() and not got["orig_width"][bad].any()
    # Every good image is byte-identical to the clean run's, with the same facts.
    assert got["path"][~bad].tolist() == clean["path"].tolist()
    for name in PER_IMAGE:
        if name not in ("split", "labels"):  # indexes may shift; compared via names below
            np.testing.assert_array_equal(got[name][~bad], clean[name], err_msg=name)
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["complete"] is True
    assert group.attrs["summary"]["reasons"] == {"empty": 1, "truncated": 1, "not_image": 1}

    stats, clean_stats = xraybatch.open(out).stats(), xraybatch.open(synth_baseline).stats()
    assert (stats["images"], stats["valid"], stats["failed"]) == (63, 60, 3)
    assert stats["global"] == clean_stats["global"]
    assert stats["per_class"] == clean_stats["per_class"]


def test_csv_labels_and_missing_files(synth_small: Path, tmp_path: Path) -> None:
    rels = sorted(p.relative_to(synth_small).as_posix() for p in synth_small.rglob("*.jpeg"))
    listed = {r: ("a" if i % 2 else "b") for i, r in enumerate(rels[:12])}
    listed["train/NORMAL/IM-0000-0404.jpeg"] = "a"
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c in listed.items()))
    out = tmp_path / "x.zarr"
    result = run(synth_small, out, labels=str(csv_path), size=SYNTH_SIZE, chunk=5)
    assert result.failures.values.tolist()[0][:2] == ["train/NORMAL/IM-0000-0404.jpeg",
                                                      "missing"]
    assert len(result.failures) == 1 and result.n_stored == 12
    assert len(result.skipped) == len(rels) - 12
    got = arrays(out)
    classes = zarr.open_group(str(out), mode="r").attrs["classes"]
    assert classes == ["a", "b"]
    assert {p: classes[c] for p, c in zip(got["path"], got["labels"], strict=True)} == listed
    missing = got["path"] == "train/NORMAL/IM-0000-0404.jpeg"
    assert got["status"][missing].tolist() == ["missing"] and not got["valid"][missing].any()
    assert got["file_bytes"][missing].tolist() == [-1]


def test_junk_files_are_never_decoded(synth_copy: Path, tmp_path: Path, monkeypatch) -> None:
    junk = ["train/.DS_Store", "train/NORMAL/Thumbs.db", "val/notes.txt",
            "train/PNEUMONIA/._person5_virus_5.jpeg"]
    for rel in junk:
        (synth_copy / rel).write_bytes(b"\x00\x05\x16\x07 not an image")
    opened: list[str] = []
    real_read = decode.read_bytes

    def spy(path):
        opened.append(Path(path).relative_to(synth_copy).as_posix())
        return real_read(path)

    monkeypatch.setattr(decode, "read_bytes", spy)
    result = run(synth_copy, tmp_path / "x.zarr", size=SYNTH_SIZE, scheduler="sync")
    assert sorted(opened) == sorted(arrays(tmp_path / "x.zarr")["path"])
    assert len(opened) == 60 and result.failures.empty
    assert sorted(result.skipped.path) == sorted(junk)
    assert zarr.open_group(str(tmp_path / "x.zarr"), mode="r").attrs["n_skipped"] == 4


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"size": 4}, "size"), ({"chunk": 0}, "chunk"), ({"interpolation": "cubic"}, "interp"),
    ({"decode_mode": "quick"}, "decode"), ({"overwrite": True, "resume": True}, "resume"),
])
def test_invalid_parameters(synth_small: Path, tmp_path: Path, kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        run(synth_small, tmp_path / "x.zarr", **kwargs)
    assert not (tmp_path / "x.zarr").exists()


def test_ingest_result(synth_small: Path, tmp_path: Path) -> None:
    files = sorted(synth_small.rglob("*.jpeg"))  # synth's only image files are .jpeg
    chunk = 25  # does not divide the image count: the last chunk is partial
    result = run(synth_small, tmp_path / "x.zarr", size=SYNTH_SIZE, chunk=chunk)
    assert result.n_images == len(files) and len(files) % chunk
    assert result.n_stored + len(result.failures) == result.n_images
    assert result.failures.empty and result.skipped.empty
    assert result.chunks_run == result.chunks_total == math.ceil(len(files) / chunk)
    assert result.bytes_read == sum(os.path.getsize(f) for f in files)
    assert sum(r.n for r in result.reports) == result.n_images  # each image decoded once
    assert result.seconds > 0
    assert result.images_per_second == result.n_images / result.seconds


def test_heaviest_chunks_run_first(synth_small: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Load balance relies on dask starting the tasks in the order build_tasks gives them
    (by key name); this notices a dask release that changes that."""
    ran: list[int] = []
    original = tasks.process_chunk

    def recording(task):
        ran.append(task.index)
        return original(task)

    monkeypatch.setattr(tasks, "process_chunk", recording)
    chunk = 8
    xraybatch.ingest(synth_small, tmp_path / "out.zarr", size=32, chunk=chunk, scheduler="sync")
    sizes = xraybatch.scan(synth_small).manifest.bytes.to_numpy()
    weight = [sizes[i:i + chunk].sum() for i in range(0, len(sizes), chunk)]
    assert ran == sorted(range(len(weight)), key=lambda i: -weight[i])


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_store_created_while_chunks_decode(synth_small: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           scheduler: str) -> None:
    """Local tasks decode before the store exists and wait for it to write; a creation that
    fails fails the run with its own error, and no task is left waiting."""
    create = store.create

    def slow_create(*args, **kwargs):
        import time

        time.sleep(0.3)  # longer than a chunk's decode here: tasks must wait
        return create(*args, **kwargs)

    monkeypatch.setattr(store, "create", slow_create)
    out = tmp_path / "x.zarr"
    result = xraybatch.ingest(synth_small, out, size=32, chunk=16, scheduler=scheduler)
    stored = xraybatch.open(out)
    assert stored.complete and result.n_stored == len(stored) == len(stored.valid)
    assert stored.valid.all() and tasks._CREATING == {}

    def failing_create(*args, **kwargs):
        raise xraybatch.store.StoreError("cannot create the store (test)")

    monkeypatch.setattr(store, "create", failing_create)
    with pytest.raises(xraybatch.store.StoreError, match="cannot create the store"):
        xraybatch.ingest(synth_small, tmp_path / "y.zarr", size=32, chunk=16,
                         scheduler=scheduler)
    assert tasks._CREATING == {}
