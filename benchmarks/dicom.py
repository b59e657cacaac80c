"""DICOM ingest benchmark: the same images as JPEG files, as JPEG-baseline DICOM and as
uncompressed 12-bit DICOM, through ``decode.load`` (serial) and ``xraybatch.ingest``.

    python benchmarks/dicom.py [SRC] [--n 96] [--repeat 5] [--size 256] [--workers 2]

SRC is a folder of JPEGs (default: ../shared/data/chest_xray_sample, else a synthetic set).
``--n`` JPEGs (a seeded random choice) are written to a temporary folder three times: the JPEG
file itself, the same JPEG stream encapsulated in DICOM (transfer syntax .50, the fast path)
and its exact-mode pixels ``p`` stored as uncompressed 12-bit MONOCHROME2 (``16 p + 8``,
intercept -1024, a full-range window; decoded by pydicom, rendered by xraybatch.render).
Configurations run interleaved (each round in a rotated order), ``--repeat`` rounds; the
medians are printed as Markdown (for benchmarks/README.md, section "DICOM"). Also measured:
the share of the JPEG damage check in a fast JPEG decode. The temporary folder is removed.
Needs the dicom extra: pip install -e '.[dicom]'.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import xraybatch
from xraybatch import decode
from xraybatch.readers import jpeg
from xraybatch.synth_dicom import to_dicom

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parents[1] / "shared/data/chest_xray_sample"
SETS = ("jpeg", "dicom_jpeg", "dicom_12bit")


def _sources(src: Path | None, n: int, tmp: Path) -> list[Path]:
    if src is None and DEFAULT_SRC.is_dir():
        src = DEFAULT_SRC
    if src is None:
        src = tmp / "synth"
        xraybatch.synth_dataset(src, n=n, seed=0, workers=1)
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
    files = [p for p in files if not decode.read_header(p.read_bytes()).progressive]
    rng = np.random.default_rng(0)
    return sorted(rng.choice(files, min(n, len(files)), replace=False).tolist())


def _write_sets(files: list[Path], root: Path) -> dict[str, Path]:
    """The three copies of every image, as SET/CLASS/NAME.ext (the class: the source folder)."""
    for i, path in enumerate(files):
        data = path.read_bytes()
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        outputs = {
            "jpeg": (".jpeg", data),
            "dicom_jpeg": (".dcm", to_dicom(jpeg=data)),
            "dicom_12bit": (".dcm", to_dicom(16 * pixels.astype(np.uint16) + 8, bits_stored=12,
                                             intercept=-1024.0,
                                             window=(1024.0, 4096.0, "LINEAR"))),
        }
        for name, (suffix, content) in outputs.items():
            folder = root / name / path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}{suffix}").write_bytes(content)
    return {name: root / name for name in SETS}


def _serial(folder: Path, size: int) -> float:
    """Seconds for decode.load of every file, one thread."""
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    t0 = time.perf_counter()
    for path in paths:
        image, record = decode.load(path, size)
        assert image is not None, (path, record.message)
    return time.perf_counter() - t0


def _ingest(folder: Path, out: Path, size: int, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)  # the previous round's store: not timed
    t0 = time.perf_counter()
    xraybatch.ingest(folder, out, size=size, workers=workers)
    return time.perf_counter() - t0


def _damage_share(folder: Path, size: int, repeat: int) -> tuple[float, float]:
    """Median ms per image of a fast JPEG decode, and of the damage check alone."""
    datas = [p.read_bytes() for p in sorted(folder.rglob("*.jpeg"))]
    headers = [decode.read_header(d) for d in datas]
    scales = [jpeg.dct_scale(h, size) for h in headers]
    decodes, checks = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        images = [jpeg.decode_at(d, h, s) for d, h, s in zip(datas, headers, scales, strict=True)]
        t1 = time.perf_counter()
        for d, h, im, s in zip(datas, headers, images, scales, strict=True):
            jpeg.damage(d, h, im, s)
        t2 = time.perf_counter()
        decodes.append((t1 - t0) / len(datas) * 1e3)
        checks.append((t2 - t1) / len(datas) * 1e3)
    return statistics.median(decodes), statistics.median(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="example: python benchmarks/dicom.py --n 96")
    parser.add_argument("src", nargs="?", type=Path, default=None)
    parser.add_argument("--n", type=int, default=96, help="images (default: 96)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (default: 5)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="xraybatch-dicom-bench-") as tmp:
        root = Path(tmp)
        files = _sources(args.src, args.n, root)
        sets = _write_sets(files, root / "sets")
        sizes = {name: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                 for name, folder in sets.items()}
        for folder in sets.values():  # warm the page cache
            _serial(folder, args.size)
        serial: dict[str, list[float]] = {name: [] for name in SETS}
        ingest: dict[str, list[float]] = {name: [] for name in SETS}
        for r in range(args.repeat):
            for name in SETS[r % 3:] + SETS[:r % 3]:
                serial[name].append(_serial(sets[name], args.size))
                ingest[name].append(_ingest(sets[name], root / f"{name}.zarr", args.size,
                                            args.workers))
        decode_ms, check_ms = _damage_share(sets["jpeg"], args.size, args.repeat)
    n = len(files)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}"
          f" Python {platform.python_version()}, OpenCV {cv2.__version__}; {n} images, "
          f"size {args.size}, fast decode, medians of {args.repeat} interleaved rounds\n")
    print("| input | MB | serial decode.load ms/image | vs JPEG | ingest images/s "
          f"({args.workers} threads) | vs JPEG |")
    print("|---|---|---|---|---|---|")
    base_s, base_i = statistics.median(serial["jpeg"]), statistics.median(ingest["jpeg"])
    for name in SETS:
        s, i = statistics.median(serial[name]), statistics.median(ingest[name])
        print(f"| {name} | {sizes[name] / 1e6:.0f} | {s / n * 1e3:.2f} | {s / base_s:.2f}x | "
              f"{n / i:.0f} | {base_i / i:.2f}x |")
    print(f"\nJPEG damage check: {check_ms:.3f} ms per image against {decode_ms:.2f} ms for the "
          f"fast decode itself ({check_ms / decode_ms:.1%}).")


if __name__ == "__main__":
    main()
