"""Regenerate the README's figures: the demo's report, run on the real Kermany sample.

    python benchmarks/readme_figures.py [SRC] [--out benchmarks/figures]

Ingests SRC (default: ../shared/data/chest_xray_sample, three classes by file name) into a
temporary store exactly as ``xraybatch demo`` does, writes its report with the tutorial's
one-image view, and keeps the tutorial's three pictures (class counts, a grid of labelled
X-rays, one image and its histogram) as small palette PNGs: they are committed as
documentation, so they must stay well under 1 MB in all. Needs ``pip install '.[plot]'``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import xraybatch
from xraybatch.report import first_source_image

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[1] / "shared" / "data" / "chest_xray_sample"
#: Report figure -> width in pixels of the README copy.
FIGURES = {"class_counts.png": 640, "samples.png": 720, "one_image.png": 900}
COLORS = 64  # palette size: the figures are grey images, black text and a few bar colours


def shrink(src: Path, dst: Path, width: int) -> int:
    """Resize ``src`` to ``width`` pixels and save it as an optimised palette PNG."""
    from PIL import Image  # matplotlib's own image library

    image = Image.open(src).convert("RGB")
    height = round(image.height * width / image.width)
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    image.quantize(COLORS, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)
    return dst.stat().st_size


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", nargs="?", default=str(SAMPLE), help=f"image folder ({SAMPLE})")
    p.add_argument("--out", default=str(HERE / "figures"), help="folder of the README figures")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "xray.zarr"
        xraybatch.ingest(args.src, store, labels="kermany3", progress=True)
        ds = xraybatch.open(str(store))
        report = xraybatch.write_report(ds, Path(tmp) / "report",
                                        inspect=first_source_image(ds))
        total = 0
        for name, width in FIGURES.items():
            total += shrink(report.index.parent / name, out / name, width)
            print(f"{out / name}: {(out / name).stat().st_size / 1e3:.0f} kB")
    print(f"{len(FIGURES)} figures, {total / 1e3:.0f} kB in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
