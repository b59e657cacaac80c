"""The fuzzing harness (tests/fuzzing.py): a seeded smoke run of 2,000 structure-aware cases
over JPEG, PNG, DICOM, CSV and Parquet through the entry points a user's file goes through, a
hypothesis run that shrinks what it finds, a batch whose good files are stored bit for bit as
without the bad ones, and the minimal inputs of every bug the fuzzer found.

The long run is ``benchmarks/fuzz.py`` (figures in benchmarks/README.md, "Fuzzing").
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fuzzing import (
    FORMATS,
    IMAGE_FORMATS,
    SEEDS,
    SIZE,
    CaseMaker,
    DrawChooser,
    Runner,
    dicom_elements,
    image_case,
    jpeg_segments,
    png_chunk,
    png_chunks,
    schedule,
    set_value,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xraybatch
from xraybatch import cli, decode, store
from xraybatch.sources import tables

SMOKE_CASES = 2000
#: Fuzzer finds kept as files (when no smaller input shows the bug): their names say what.
REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
MAX_RSS_MB = 1024  # the worker's peak: the seeds are small, a bomb would show here


@pytest.fixture(scope="module")
def runner():
    with Runner(seed=0, timeout=20.0) as r:
        yield r


@pytest.fixture(scope="module")
def seeds() -> dict[str, list[bytes]]:
    return {fmt: make() for fmt, make in SEEDS.items()}


def _explain(failures) -> str:
    return "\n".join(f"{f.fmt} case {f.case} ({f.ingest}/{f.inspect}): {p[-600:]}"
                     for f in failures[:5] for p in f.problems)


def test_smoke_run(runner) -> None:
    """2,000 seeded cases: no traceback, no hang, no crash, every case an image or a reason
    code, nothing the reference decoder refuses stored as valid, memory bounded."""
    report = runner.run_many(schedule(SMOKE_CASES, image_turns=10))
    assert not report.failures, _explain(report.failures)
    assert sum(report.cases.values()) == SMOKE_CASES and set(report.cases) == set(FORMATS)
    assert min(report.cases.values()) >= 60
    outcomes = Counter(outcome for (fmt, outcome) in report.outcomes.elements())
    allowed = {"ok", "ok+damaged", "scanned", "ScanError", *decode.REASONS}
    assert set(outcomes) <= allowed, outcomes
    for fmt in IMAGE_FORMATS:  # the mutations reach both sides: stored and refused
        stored = report.outcomes[(fmt, "ok")]
        assert 0.03 * report.cases[fmt] < stored < 0.8 * report.cases[fmt], (fmt, stored)
    for fmt in IMAGE_FORMATS:  # every stored image was checked by the reference decoder
        assert report.checked_by_reference[fmt] >= report.outcomes[(fmt, "ok")]
    assert report.peak_rss_mb < MAX_RSS_MB
    assert report.slowest.seconds < runner.timeout


@settings(max_examples=100, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), fmt=st.sampled_from(IMAGE_FORMATS))
def test_hypothesis_cases(runner, seeds, data, fmt) -> None:
    """The same mutators driven by hypothesis: a failure shrinks to its simplest choices."""
    case = image_case(fmt, seeds[fmt], DrawChooser(data))
    out = runner.run(fmt, -1, case)
    assert not out.problems, _explain([out])


# --- a batch: good files stored bit for bit as without the bad ones ----------------------------

_EXT = {"jpeg": ".jpeg", "png": ".png", "dicom": ".dcm"}


def _ingest(src: Path, out: Path) -> tuple[pd.DataFrame, object]:
    xraybatch.ingest(src, out, size=SIZE, chunk=32, scheduler="sync", interpolation="area")
    import zarr

    return xraybatch.open(str(out)).manifest.set_index("path"), zarr.open_group(str(out), mode="r")


def test_good_files_in_a_fuzzed_batch(runner, seeds, tmp_path) -> None:
    good, dirty = tmp_path / "good" / "A", tmp_path / "dirty" / "A"
    good.mkdir(parents=True)
    dirty.mkdir(parents=True)
    for fmt, files in seeds.items():
        for i, data in enumerate(files):
            for folder in (good, dirty):
                (folder / f"good_{fmt}_{i}{_EXT[fmt]}").write_bytes(data)
    expected = {}
    for fmt, index in schedule(60, IMAGE_FORMATS, start=5000):
        out = runner.run(fmt, index)
        assert not out.problems, _explain([out])
        name = f"fuzz_{fmt}_{index}{_EXT[fmt]}"
        (dirty / name).write_bytes(runner_case_bytes(seeds, fmt, index))
        expected[f"A/{name}"] = out.ingest.removesuffix("+damaged")
    clean_manifest, clean = _ingest(good.parent, tmp_path / "good.zarr")
    manifest, store_ = _ingest(dirty.parent, tmp_path / "dirty.zarr")
    status = manifest.status.drop(list(clean_manifest.index))
    assert status.to_dict() == expected  # the store says what the worker's check said
    assert (clean_manifest.status == "ok").all()
    rows = np.array([manifest.index.get_loc(p) for p in clean_manifest.index])
    for name in ("images", "hist", *store.RECORD_ARRAYS):
        np.testing.assert_array_equal(store_[name].get_orthogonal_selection(rows),
                                      clean[name][:], err_msg=name)


def runner_case_bytes(seeds: dict[str, list[bytes]], fmt: str, index: int) -> bytes:
    """The bytes of the worker's case ``index`` (the same seeded choices, in this process)."""
    from fuzzing import RandomChooser, _case_rng_seed

    return image_case(fmt, seeds[fmt], RandomChooser(_case_rng_seed(0, fmt, index)))


def test_fuzzed_table_ingest_through_the_cli(seeds, tmp_path, capsys) -> None:
    """A table with awkward cells, through ``xraybatch ingest --files``: a store, never a
    traceback; every row either stored, refused with a reason code or skipped with one."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.png").write_bytes(seeds["png"][0])
    (root / "sub" / "b é.jpeg").write_bytes(seeds["jpeg"][0])
    (root / "c.dcm").write_bytes(seeds["dicom"][4])  # a legacy DICOM, no preamble
    (root / "bad.png").write_bytes(seeds["png"][0][:60])
    rows = [("a.png", "x", "train"), (" ./sub/b é.jpeg ", "y", "VAL"), ("c.dcm", "x", "test"),
            ("bad.png", "y", "train"), ("gone.png", "x", "train"), ("a.png", "y", "train"),
            ("sub/b\u0301.jpeg", "", "train"), ("c.dcm\x00", "x", "x"),
            ("s3://b/a.png", "x", "train"), ("a.png\n", "x", "train")]
    table = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(table, index=False)
    out = tmp_path / "t.zarr"
    code = cli.main(["ingest", str(root), str(out), "--files", str(table), "--label-column",
                     "label", "--split-column", "split", "--size", str(SIZE), "--quiet"])
    assert code == 0, capsys.readouterr()
    manifest = xraybatch.open(str(out)).manifest.set_index("path")
    assert manifest.status.to_dict() == {"a.png": "ok", "sub/b é.jpeg": "ok", "c.dcm": "ok",
                                         "bad.png": "truncated", "gone.png": "missing"}
    assert manifest.loc["c.dcm"].orig_format == "dicom"


# --- the minimal inputs of what the fuzzer found -------------------------------------------------


def _png_idat_length(seeds) -> bytes:
    """OpenCV's PNG reader looped for ever on a chunk length past the end of the file."""
    data = seeds["png"][0]
    idat = next(c for c in png_chunks(data) if c.kind == b"IDAT")
    return data[:idat.start] + struct.pack(">I", 0xFFFFFFFE) + data[idat.start + 4:]


def _apng(data: bytes, pixels_from: bytes) -> bytes:
    """``data`` with an acTL chunk after IHDR (an animated PNG of one frame, IDAT the default
    image), its IDAT taken from ``pixels_from``."""
    chunks = png_chunks(data)
    idat = b"".join(pixels_from[c.start:c.end] for c in png_chunks(pixels_from)
                    if c.kind == b"IDAT")
    return (data[:chunks[0].end] + png_chunk(b"acTL", struct.pack(">II", 1, 0)) + idat
            + data[chunks[-1].start:])


def _apng_bad_zlib(seeds) -> bytes:
    data = seeds["png"][0]
    idat = next(c for c in png_chunks(data) if c.kind == b"IDAT")
    stream = bytearray(data[idat.start + 8:idat.end - 4])
    stream[5:25] = bytes(20)  # deflate blocks that do not decode; CRC recomputed
    broken = data[:idat.start] + png_chunk(b"IDAT", bytes(stream)) + data[idat.end:]
    return _apng(broken, broken)


def _png_iend(data: bytes) -> bytes:
    """Fuzz case 5349 of seed 1, reduced: IEND declares 8 bytes, a chunk of 2**31 follows."""
    end = png_chunks(data)[-1].start
    return (data[:end] + png_chunk(b"IEND", bytes(8)) + struct.pack(">I", 2**31) + b"IDAT"
            + bytes(8))


def _png_resized(data: bytes, width: int, height: int) -> bytes:
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    return data[:8] + png_chunk(b"IHDR", bytes(ihdr[4:])) + data[33:]


def _jpeg_insert_in_scan(seeds, piece: bytes, at: int = 40) -> bytes:
    data = seeds["jpeg"][0]
    _, scan = jpeg_segments(data)
    return data[:scan + at] + piece + data[scan + at:]


def _jpeg_header_tem(data: bytes) -> bytes:
    """A TEM marker (no length) and junk before a table segment: libjpeg skips the junk with
    a warning and OpenCV decodes, Pillow refuses the file (fuzz case 18490 of seed 1)."""
    dht = next(s for s in jpeg_segments(data)[0] if s.marker == 0xC4)
    return data[:dht.start] + b"\xff\x01" + bytes(range(31)) + data[dht.start:]


def _jpeg_second_sos(seeds) -> bytes:
    """A second SOS in a one-component sequential JPEG: libjpeg errors, OpenCV decoded it."""
    data = seeds["jpeg"][0]
    segments, _ = jpeg_segments(data)
    sos = segments[-1]
    return _jpeg_insert_in_scan(seeds, data[sos.start:sos.end])


def _dicom(seeds, **changes) -> bytes:
    data = seeds["dicom"][0]
    for tag, value in changes.items():
        data = set_value(data, int(tag[1:], 16), value)
    return data


def _dicom_without(seeds, tag: int, index: int = 0) -> bytes:
    data = seeds["dicom"][index]
    e = next(e for e in dicom_elements(data) if e.tag == tag)
    return data[:e.start] + data[e.end:]


def _dicom_bad_vr(seeds) -> bytes:
    """RescaleIntercept with VR 'ES': pydicom raised NotImplementedError when the renderer
    first read it, and the traceback escaped ingest."""
    data = seeds["dicom"][0]
    e = next(e for e in dicom_elements(data) if e.tag == 0x00281052)
    return data[:e.start + 4] + b"ES" + data[e.start + 6:]


def _dicom_control_chars(seeds) -> bytes:
    """No pixel data and a SOP class UID full of control characters: the reason's message
    held a newline (the CLI's one-line error broke in two)."""
    data = _dicom_without(seeds, 0x7FE00010)
    for tag in (0x00280010, 0x00280011):
        data = _dicom_without({"dicom": [data]}, tag)
    return set_value(data, 0x00080016, b"1.2\n3\x00\x01", b"UI")


def _dicom_jpeg_frame(seeds, rows: int, samples: int = 1) -> bytes:
    """A JPEG frame whose DICOM header declares another size or channel count (a 40x32 frame
    declared 8x8 would pass the pixel limit whatever the frame's own size)."""
    data = set_value(seeds["dicom"][2], 0x00280010, struct.pack("<H", rows), b"US")
    return set_value(data, 0x00280002, struct.pack("<H", samples), b"US")


def _legacy_without_photometric_ok(seeds) -> bytes:
    return _dicom_without({"dicom": [seeds["dicom"][4]]}, 0x00280004)


FOUND = [
    ("png chunk length past the end (OpenCV hang)", "png", _png_idat_length, "corrupt"),
    ("png IEND with a length, then a 2 GB chunk (OpenCV allocated it)", "png",
     lambda s: _png_iend(s["png"][0]), "corrupt"),
    ("png IDAT of 2 GB after an empty IEND (OpenCV allocated it)", "png",
     lambda s: s["png"][0][:33] + png_chunk(b"IEND", b"") + struct.pack(">I", 2**31) + b"IDAT",
     "corrupt"),
    ("png bytes after IEND are not read", "png",
     lambda s: s["png"][0] + struct.pack(">I", 2**31) + b"IDAT" + bytes(64), "ok"),
    ("png 8000x8000 declared, 3 KB of pixel data (allocated, then refused)", "png",
     lambda s: _png_resized(s["png"][0], 8000, 8000), "corrupt"),
    ("png IEND missing after a complete IDAT", "png",
     lambda s: s["png"][0][:png_chunks(s["png"][0])[-1].start] + png_chunk(b"tEXt", b"k\0v"),
     "truncated"),
    ("png APNG with damaged pixel data (OpenCV: a black image)", "png",
     lambda s: (REGRESSIONS / "apng_damaged_idat.png").read_bytes(), "corrupt"),
    ("png APNG, pixel data that does not inflate", "png", _apng_bad_zlib, "corrupt"),
    ("png APNG with good pixel data: the default image", "png",
     lambda s: _apng(s["png"][0], s["png"][0]), "ok"),
    ("jpeg TEM marker and junk among the header segments", "jpeg",
     lambda s: _jpeg_header_tem(s["jpeg"][0]), "corrupt"),
    ("jpeg unknown marker in the scan", "jpeg", lambda s: _jpeg_insert_in_scan(s, b"\xff\x5f"),
     "corrupt"),
    ("jpeg DHT after the only scan", "jpeg",
     lambda s: _jpeg_insert_in_scan(s, b"\xff\xc4\x00\x04\x00\x00"), "corrupt"),
    ("jpeg second SOS, one component", "jpeg", _jpeg_second_sos, "corrupt"),
    ("jpeg restart marker in the scan is fine", "jpeg",
     lambda s: _jpeg_insert_in_scan(s, b"\xff\xd3"), "ok"),
    ("dicom unknown VR read lazily", "dicom", _dicom_bad_vr, "corrupt"),
    ("dicom newline in a message", "dicom", _dicom_control_chars, "no_pixels"),
    ("dicom frames not a number", "dicom", lambda s: _dicom(s, x00280008=b"abc"), "corrupt"),
    ("dicom no SamplesPerPixel", "dicom", lambda s: _dicom_without(s, 0x00280002, 2), "corrupt"),
    ("dicom no PhotometricInterpretation", "dicom",
     lambda s: _dicom_without(s, 0x00280004, 2), "corrupt"),
    ("dicom legacy without PhotometricInterpretation", "dicom",
     _legacy_without_photometric_ok, "ok"),
    ("dicom JPEG frame larger than declared", "dicom", lambda s: _dicom_jpeg_frame(s, 8),
     "corrupt"),
    ("dicom JPEG, 8-bit frame in 16 bits allocated", "dicom",
     lambda s: set_value(s["dicom"][2], 0x00280100, struct.pack("<H", 16), b"US"), "corrupt"),
    ("dicom JPEG, BitsAllocated 800", "dicom",
     lambda s: set_value(s["dicom"][2], 0x00280100, struct.pack("<H", 800), b"US"), "corrupt"),
    ("dicom JPEG, PixelRepresentation 3", "dicom",
     lambda s: set_value(s["dicom"][2], 0x00280103, struct.pack("<H", 3), b"US"), "corrupt"),
    ("dicom JPEG, YBR_FULL_422 with one sample", "dicom",
     lambda s: set_value(s["dicom"][2], 0x00280004, b"YBR_FULL_422", b"CS"), "corrupt"),
    ("dicom RescaleSlope 1e308 (every pixel infinite)", "dicom",
     lambda s: set_value(s["dicom"][0], 0x00281053, b"1e308", b"DS"), "corrupt"),
    ("dicom WindowCenter nan", "dicom",
     lambda s: set_value(s["dicom"][0], 0x00281050, b"nan", b"DS"), "corrupt"),
    ("dicom photometric in lower case", "dicom",
     lambda s: set_value(s["dicom"][2], 0x00280004, b"monochrome2", b"CS"), "corrupt"),
    ("dicom JPEG frame with fewer channels", "dicom", lambda s: _dicom_jpeg_frame(s, 40, 3),
     "corrupt"),
]


@pytest.mark.parametrize(("fmt", "make", "code"), [f[1:] for f in FOUND],
                         ids=[f[0] for f in FOUND])
def test_found_by_the_fuzzer(runner, seeds, fmt, make, code) -> None:
    """Through the worker (a regression to a hang fails in 20 s, it does not stop the suite)."""
    out = runner.run(fmt, -1, make(seeds))
    assert not out.problems, _explain([out])
    assert (out.ingest.removesuffix("+damaged"), out.inspect) == (code, code)


def test_nul_byte_in_a_table_path_is_missing(tmp_path) -> None:
    """A table cell with a NUL byte reached ``open()``, whose ValueError escaped ingest."""
    image, record = decode.load(f"{tmp_path}/a.png\x00")
    assert image is None and record.status == "missing" and "NUL" in record.message


# --- table failures of issue 18 (repeated Parquet index, paths climbing out, empty cells) ----


def test_table_cells_of_the_issue_18_failures(tmp_path) -> None:
    """Tables with cells climbing out of the root and Parquet indexes that repeat (in this
    process: the table path does not hang)."""
    maker = CaseMaker(tmp_path, seed=1, reference=False)
    failures = [out for fmt, index in schedule(24, ("csv", "parquet"))
                if (out := maker.run(fmt, index)).problems]
    assert not failures, _explain(failures)


def test_table_of_the_issue_18_failures_minimal(tmp_path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").write_bytes(zlib.compress(b""))  # the bytes do not matter here
    (tmp_path / "outside.png").write_bytes(b"x")
    frame = pd.DataFrame({"path": ["a.png", "../outside.png"], "label": ["x", "y"]})
    pd.concat([frame, frame.iloc[:1]]).to_parquet(root / "t.parquet")
    found = tables.scan_table(str(root / "t.parquet"), str(root),
                              tables.Columns(path="path", label="label"))
    assert list(found.manifest.path) == ["a.png"]
    assert set(found.skipped.reason) == {"outside_root", "duplicate_row"}


def test_table_empty_path_cell_is_skipped(tmp_path) -> None:
    """Found by the fuzzer (a CSV path cell left empty)."""
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "t.csv").write_text("path,label\na.png,x\n,y\n")
    found = tables.scan_table(str(tmp_path / "t.csv"), str(tmp_path),
                              tables.Columns(path="path", label="label"))
    assert list(found.manifest.path) == ["a.png"] and len(found.skipped) == 1
