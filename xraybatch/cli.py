"""Command-line interface: ``xraybatch {demo,synth,ingest,stats,inspect,report,dups,split,verify}``.

Every command reports user errors (missing folder, bad label scheme, existing output...) as
one line on stderr with exit code 2; ``ingest --strict`` exits 1 when any file failed.
This module holds the argument parser and :func:`main`; the commands themselves are in
:mod:`.commands`, imported only once the arguments are parsed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import textwrap
from typing import Any

# Only light imports here, so that --help answers at once: .commands imports what they use.
from .options import (
    DECODE_MODES,
    DEFAULT_CHUNK,
    DEFAULT_INTERPOLATION,
    FITS,
    INTERPOLATION_CHOICES,
    MAX_PIXELS,
    WINDOWS,
)
from .sources import TABLE_PRESETS

EXIT_USAGE = 2
_INGEST_EXAMPLES = """
xraybatch ingest chest_xray xray.zarr --labels kermany3
xraybatch ingest chest_xray xray.zarr --interpolation linear --decode exact
xraybatch ingest data/ out.zarr --labels labels.csv --size 224 --overwrite
xraybatch ingest /shared/xray /shared/xray.zarr --scheduler tcp://10.0.0.5:8786
xraybatch ingest chest_xray s3://bucket/xray.zarr   # needs: pip install 'xraybatch[s3]'
xraybatch ingest chest_xray s3://bucket/xray.zarr --storage-option endpoint_url=http://minio:9000
xraybatch ingest chest_xray xray.zarr --resume      # after an interruption
xraybatch ingest chest_xray xray.zarr --append      # add only the files new under SRC
xraybatch ingest chest_xray xray.zarr --append --resume  # finish an interrupted append
xraybatch ingest dicom_cxr dicom.zarr --window percentile --fit pad  # needs xraybatch[dicom]
xraybatch ingest data/ out.zarr --patient-id '^(P[0-9]+)_'  # patient ids for the leakage check
xraybatch ingest /data/nih nih.zarr --files /data/nih/Data_Entry_2017.csv --table-preset nih
xraybatch ingest CheXpert-v1.0-small/train.csv chexpert.zarr --table-preset chexpert
xraybatch ingest imgs/ out.zarr --files t.parquet --path-column file --labels-column tags
xraybatch ingest s3://bucket/chest_xray/ xray.zarr --storage-option anon=true
"""


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="xraybatch", formatter_class=fmt,
        description="Turn a folder of X-ray images into an analysis-ready zarr dataset.",
        epilog=_examples("""
            xraybatch demo                              # synth -> ingest -> stats -> report
            xraybatch ingest chest_xray xray.zarr --labels kermany3
            xraybatch stats xray.zarr --by split
            xraybatch report xray.zarr --out xray-report  # figures + QC, needs xraybatch[plot]
            xraybatch inspect chest_xray/train/NORMAL/IM-0115-0001.jpeg
            xraybatch ingest chest_xray xray.zarr --labels kermany3 --append  # new files only
            xraybatch verify xray.zarr --sources        # checksums, records, source files
            xraybatch dups xray.zarr                    # near-duplicate films by content
            xraybatch split xray.zarr --by patient,content --stratify  # a leak-free split
        """))
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", formatter_class=fmt,
                       help="synthetic data -> ingest -> stats -> report",
                       description="Generate a synthetic Kermany-shaped dataset, ingest it, "
                                   "print its statistics and write its report (DIR/report/"
                                   "index.html; the figures need xraybatch[plot]).",
                       epilog=_examples("xraybatch demo\nxraybatch demo /tmp/xdemo --n 1000"))
    d.add_argument("dir", nargs="?", default="xraybatch-demo",
                   help="working folder (default: ./xraybatch-demo)")
    d.add_argument("--n", type=int, default=240, help="number of images (default: 240)")
    d.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")

    s = sub.add_parser("synth", formatter_class=fmt,
                       help="write a synthetic Kermany-shaped folder of X-ray-like JPEGs",
                       description="Write OUT/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg with "
                                   "three classes by file name (NORMAL, bacteria, virus).",
                       epilog=_examples("xraybatch synth synth_xray --n 500 --seed 1\n"
                                        "xraybatch synth synth_dicom --n 60 --format dicom"))
    s.add_argument("out", help="folder to create")
    s.add_argument("--n", type=int, default=240, help="number of images (default: 240)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    s.add_argument("--scale", type=float, default=1.0,
                   help="image size factor; 1.0 gives Kermany-like sizes (default: 1.0)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing synthetic folder")
    s.add_argument("--format", choices=("jpeg", "dicom"), default="jpeg",
                   help="jpeg: Kermany-like JPEGs; dicom: a DICOM tree (MONOCHROME1/2, 12/16-bit, "
                        "with and without windows, JPEG-encapsulated and uncompressed, patients "
                        "across splits; needs xraybatch[dicom]) (default: jpeg)")
    s.add_argument("--leaked", type=int, default=2,
                   help="--format dicom: patients planted in more than one split (default: 2)")

    i = sub.add_parser("ingest", formatter_class=fmt,
                       help="read, resize and store every image of SRC into the zarr store OUT",
                       description="Read every image under SRC as 8-bit grayscale, resize it to "
                                   "SIZE x SIZE and write it with its label into the zarr v3 "
                                   "store OUT, one Dask task per chunk.",
                       epilog=_examples(_INGEST_EXAMPLES))
    i.add_argument("src", help="folder of images: SRC/CLASS/* or SRC/{train,val,test}/CLASS/*")
    i.add_argument("out", help="output store: a path or an fsspec URL such as s3://bucket/x.zarr")
    i.add_argument("--size", type=int, default=256, help="output side in pixels (default: 256)")
    i.add_argument("--labels", default="folder", metavar="folder|kermany3|FILE.csv",
                   help="label scheme (default: folder)")
    i.add_argument("--interpolation", choices=INTERPOLATION_CHOICES,
                   default=DEFAULT_INTERPOLATION,
                   help="resize filter; auto: linear after a DCT-reduced decode, else area; "
                        "linear with --decode exact reproduces the tutorial (default: auto)")
    i.add_argument("--decode", choices=DECODE_MODES, default="fast",
                   help="fast: DCT-scaled JPEG decode when big enough; exact: full decode "
                        "(default: fast)")
    i.add_argument("--chunk", type=int, default=DEFAULT_CHUNK,
                   help=f"images per chunk and per task (default: {DEFAULT_CHUNK}; "
                        "--resume keeps the store's)")
    _add_scheduler_options(i)
    i.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"refuse images declaring more pixels (default: {MAX_PIXELS:,})")
    mode = i.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    mode.add_argument("--resume", action="store_true",
                      help="finish an interrupted run: write only the missing chunks")
    i.add_argument("--append", action="store_true",
                   help="add the files of SRC that OUT does not hold (same path and size) "
                        "after its rows; pixel options must be the store's; with --resume, "
                        "finish an interrupted append")
    i.add_argument("--window", choices=WINDOWS, default="header",
                   help="DICOM and images deeper than 8 bits: header (the header's window, "
                        "else min-max), minmax, or percentile (1st-99th) (default: header)")
    i.add_argument("--fit", choices=FITS, default="stretch",
                   help="stretch to a square, pad (keep the aspect ratio, black border) or crop "
                        "the centre (default: stretch)")
    i.add_argument("--patient-id", metavar="REGEX", default=None,
                   help="regex with one group (or a group 'patient') giving the patient from "
                        "the relative path (default: Kermany file names; DICOM PatientID wins)")
    i.add_argument("--strict", action="store_true",
                   help="exit with status 1 if any file could not be stored")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage_option(i)
    i.add_argument("--files", metavar="TABLE",
                   help="CSV or Parquet table naming the images (paths relative to SRC, or "
                        "absolute below it); SRC may also be the table itself (then paths "
                        "are relative to its folder)")
    i.add_argument("--table-preset", choices=TABLE_PRESETS,
                   help="column layout of a public set: nih (Data_Entry_2017.csv) or "
                        "chexpert (train.csv, valid.csv)")
    i.add_argument("--path-column", metavar="NAME", help="table column of the image paths "
                                                           "(default: path)")
    i.add_argument("--label-column", metavar="NAME",
                   help="table column with one class name per image (single-label)")
    i.add_argument("--labels-column", metavar="NAME",
                   help="table column listing each image's findings, e.g. A|B (multi-label)")
    i.add_argument("--label-sep", metavar="SEP", help="separator of --labels-column "
                                                      "(default: |)")
    i.add_argument("--finding-columns", metavar="A,B,...", type=lambda t: tuple(
        c.strip() for c in t.split(",") if c.strip()),
                   help="table columns holding 1, 0, -1 (uncertain) or blank (not stated), "
                        "one per finding (multi-label)")
    i.add_argument("--split-column", metavar="NAME",
                   help="table column of the split (train, val/valid, test); default: a "
                        "train/val/valid/test folder in the path, else none")
    i.add_argument("--patient-column", metavar="NAME",
                   help="table column of the patient id (stored as patient_id)")

    t = sub.add_parser("stats", formatter_class=fmt, help="print a store's exact statistics",
                       description="Print global and per-class pixel statistics of a store.",
                       epilog=_examples("xraybatch stats xray.zarr\n"
                                        "xraybatch stats xray.zarr --by split\n"
                                        "xraybatch stats xray.zarr --json > stats.json\n"
                                        "xraybatch stats xray.zarr --strict  # fails on leakage "
                                        "(patients or near-duplicates across splits)"))
    t.add_argument("out", metavar="STORE", help="store written by xraybatch ingest")
    t.add_argument("--by", choices=["class", "split"], default="class",
                   help="rows per class, or per split x class (default: class)")
    t.add_argument("--json", action="store_true", help="print JSON (global, per_class, "
                                                       "per_split_class, histograms, patients)")
    t.add_argument("--strict", action="store_true",
                   help="exit with status 1 if a patient is in more than one split, or a "
                        "near-duplicate pair crosses splits")
    _add_storage_option(t)

    n = sub.add_parser("inspect", formatter_class=fmt, help="the tutorial's view of one image",
                       description="Height, width, max, min, mean, std and the 256-bin "
                                   "histogram of one image read as 8-bit grayscale.",
                       epilog=_examples("xraybatch inspect IM-0115-0001.jpeg\n"
                                        "xraybatch inspect IM-0115-0001.jpeg --json\n"
                                        "xraybatch inspect IM-0115-0001.jpeg --plot im.png"))
    n.add_argument("image", help="an image file")
    n.add_argument("--json", action="store_true", help="print JSON")
    n.add_argument("--plot", metavar="FILE.png",
                   help="also draw the image beside its histogram (needs xraybatch[plot])")
    n.add_argument("--overwrite", action="store_true", help="replace an existing --plot file")
    _add_storage_option(n)

    r = sub.add_parser("report", formatter_class=fmt,
                       help="figures and a quality-control report of a store (HTML)",
                       description="Write PNG figures (class counts, intensity histograms, a "
                                   "grid of random images, class mean images, per-image "
                                   "mean/std) and DIR/index.html showing them with the "
                                   "statistics tables and the failed, skipped and QC-flagged "
                                   "files. Needs matplotlib: pip install 'xraybatch[plot]'.",
                       epilog=_examples("xraybatch report xray.zarr --out xray-report\n"
                                        "xraybatch report xray.zarr --out xray-report "
                                        "--seed 3 --overwrite"))
    r.add_argument("out", metavar="STORE", help="store written by xraybatch ingest")
    r.add_argument("--out", dest="dir", metavar="DIR", required=True,
                   help="folder to write (refused if not empty, unless --overwrite)")
    r.add_argument("--seed", type=int, default=0,
                   help="chooses the images of the sample grid (default: 0)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the report files of an existing DIR")
    _add_storage_option(r)
    _add_dups_parser(sub, fmt)
    _add_split_parser(sub)
    _add_verify_parser(sub)
    return p


def _add_split_parser(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    s = sub.add_parser(
        "split", formatter_class=fmt, help="write a leak-free train/val/test split of a store",
        description="Rewrite the store's split assignment (not its pixels) so that no patient\n"
                    "and no near-duplicate group is in more than one split. The scan's\n"
                    "assignment is kept: --restore puts it back.",
        epilog=_examples("""
            xraybatch split xray.zarr --by patient,content --ratios 0.8,0.1,0.1 --stratify
            xraybatch split xray.zarr --by patient --ratios 0.8,0.2 --seed 3   # train/test
            xraybatch split xray.zarr --by patient,content --keep test  # official test set
            xraybatch split xray.zarr --by patient --dry-run --json
            xraybatch split xray.zarr --restore       # the scan's split again
        """))
    s.add_argument("out", metavar="STORE", help="store written by xraybatch ingest")
    s.add_argument("--by", metavar="patient,content",
                   help="what joins images into groups that stay together: patient (same "
                        "patient id), content (near-duplicates, see xraybatch dups) or both")
    s.add_argument("--ratios", default="0.8,0.1,0.1", metavar="TRAIN,VAL,TEST",
                   help="fractions of images per split, summing to 1: train,val,test or "
                        "train,test (default: 0.8,0.1,0.1)")
    s.add_argument("--stratify", action="store_true",
                   help="split each class (multi-label: each set of findings) in the ratios")
    s.add_argument("--seed", type=int, default=0,
                   help="the same seed gives the same split (default: 0)")
    s.add_argument("--keep", metavar="SPLIT",
                   help="images of this split stay where they are (e.g. test); images grouped "
                        "with them join it; the rest is split in the other ratios")
    s.add_argument("--threshold", type=float, default=None,
                   help="--by content: near-duplicate threshold (default: that of dups)")
    s.add_argument("--restore", action="store_true",
                   help="put the scan's split back (the assignment written at ingest)")
    s.add_argument("--dry-run", action="store_true", help="report the split, write nothing")
    s.add_argument("--json", action="store_true", help="print JSON (assignment, per split)")
    _add_storage_option(s)


def _add_verify_parser(sub: Any) -> None:
    v = sub.add_parser(
        "verify", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="check every chunk of a store; with --sources, its source files too",
        description="Read every chunk of every array of STORE (format-2 stores check the "
                    "checksum of each chunk file), compare each stored image with its "
                    "recorded histogram, mean and std, and check that every chunk was "
                    "written. With --sources, re-hash every source file against its recorded "
                    "size and SHA-256, and list the files changed, missing or new since the "
                    "store was written. Exit status 0: all good, 1: a mismatch, 2: a usage "
                    "error. Runs as Dask tasks, like ingest.",
        epilog=_examples("""
            xraybatch verify xray.zarr
            xraybatch verify xray.zarr --sources              # re-hash the source files too
            xraybatch verify xray.zarr --json > verify.json   # for scripts (exit 1 on mismatch)
            xraybatch verify s3://bucket/xray.zarr --storage-option anon=true
            xraybatch verify /shared/xray.zarr --scheduler tcp://10.0.0.5:8786
        """))
    v.add_argument("out", metavar="STORE", help="store written by xraybatch ingest")
    v.add_argument("--sources", action="store_true",
                   help="re-hash the source files and list those changed, missing or new")
    v.add_argument("--json", action="store_true",
                   help="print JSON (ok, counts, problems, sources; README 'Verify a store')")
    _add_scheduler_options(v)
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_storage_option(v)


_DUPS_EXAMPLES = """
xraybatch dups xray.zarr                      # groups and pairs, cross-split pairs first
xraybatch dups xray.zarr --json > dups.json   # {"pairs": [[path_a, path_b, score], ...], ...}
xraybatch dups xray.zarr --threshold 0.8      # fewer pairs, only the surest
xraybatch dups nih.zarr chexpert.zarr         # also pairs across the two stores
xraybatch dups big.zarr --scheduler tcp://10.0.0.5:8786  # verification on a Dask cluster
"""


def _add_dups_parser(sub: Any, fmt: type) -> None:
    """``xraybatch dups STORE [STORE ...]``: near-duplicate images by content."""
    d = sub.add_parser(
        "dups", formatter_class=fmt, help="near-duplicate images by content, across splits "
                                          "and stores",
        description="Find near-duplicate images (re-encoded, rescaled, converted, brightened, "
                    "slightly cropped, shifted or rotated copies) from the content fingerprints "
                    "stored at ingest: candidate pairs from their hashes, each verified by "
                    "aligning the two thumbnails. Prints the groups and each pair with its "
                    "score (0.5-1), pairs across splits first; several stores are also compared "
                    "with each other. Exact copies (same SHA-256) are pairs too (score 1) and "
                    "keep their own qc_duplicate flag.",
        epilog=_examples(_DUPS_EXAMPLES))
    d.add_argument("stores", nargs="+", metavar="STORE", help="stores written by xraybatch ingest")
    d.add_argument("--threshold", type=float, default=None,
                   help="lowest score reported, 0.5-1; lower finds more altered copies and more "
                        "false pairs (default: 0.65, chosen on real chest X-rays)")
    d.add_argument("--json", action="store_true",
                   help="print JSON: pairs, cross_split, groups (and stores)")
    _add_scheduler_options(d)
    d.add_argument("--strict", action="store_true",
                   help="exit with status 1 if a pair crosses splits (or stores)")
    _add_storage_option(d)


class _Version(argparse.Action):
    """``--version``: the installed version is looked up only when asked (it costs an import)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from . import __version__

        print(f"xraybatch {__version__}")
        parser.exit()


def _add_scheduler_options(parser: argparse.ArgumentParser) -> None:
    """``--scheduler`` and ``--workers`` of the commands that run Dask tasks."""
    parser.add_argument("--scheduler", default="threads",
                        metavar="threads|processes|sync|ADDRESS",
                        help="Dask scheduler, or a distributed scheduler address "
                             "(default: threads)")
    parser.add_argument("--workers", type=int, default=None,
                        help="local workers (default: one per core; a cluster has its own)")


def _add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-option", type=_storage_option, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="fsspec option for URLs (SRC, table, store), repeatable (e.g. "
                             "endpoint_url=http://127.0.0.1:9000, anon=true)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``xraybatch`` command."""
    args = _parser().parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):  # keep stdout in step with progress lines on stderr
        sys.stdout.reconfigure(line_buffering=True)  # in a log, a pipe, a notebook
    # Imported once the arguments are parsed: --help and usage errors never load them.
    from . import decode
    from .commands import COMMANDS
    from .scan import ScanError
    from .schedulers import SchedulerError
    from .store import StoreError

    try:
        return COMMANDS[args.command](args)
    except (ScanError, StoreError, SchedulerError, OSError, ValueError,
            ImportError) as e:
        print(f"xraybatch {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except decode.ImageError as e:
        print(f"xraybatch {args.command}: error: {e} [{e.code}]", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\nxraybatch {args.command}: interrupted{_resume_hint(args, argv)}",
              file=sys.stderr)
        if argv is None:  # the command itself: leave now, as a kill would (the store is
            sys.stdout.flush()  # kill-safe), before zarr's event-loop thread and Dask's
            sys.stderr.flush()  # workers print their interrupted tasks at interpreter exit
            os._exit(130)
        return 130


def _resume_hint(args: argparse.Namespace, argv: list[str] | None) -> str:
    """For an interrupted ingest that left a store: the command that finishes it."""
    if args.command != "ingest" or ("://" not in args.out and not os.path.exists(args.out)):
        return ""
    words = [w for w in (sys.argv[1:] if argv is None else argv)
             if not (w.startswith("--o") and "--overwrite".startswith(w))]
    command = shlex.join(["xraybatch", *words, *([] if args.resume else ["--resume"])])
    if getattr(args, "append", False):
        return (f"; {args.out} reads as its previous version, finish the append with: "
                f"{command}")
    return f"; {args.out} is incomplete, finish it with: {command}"


def _storage_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, value); JSON values (true, 3, {...}) are decoded."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
