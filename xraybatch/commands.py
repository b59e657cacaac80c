"""The commands of :mod:`.cli`: one function per subcommand, run on the parsed arguments.

:func:`.cli.main` imports this module only once the arguments are parsed, so ``--help`` and
usage errors never load it; each command imports the heavy modules it uses itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .append import AppendResult
    from .tasks import IngestResult

#: Exit status of ``ingest --strict`` when a file failed and of ``stats`` on an incomplete
#: store or, with ``--strict``, on patient or near-duplicate leakage (``dups --strict`` too).
EXIT_FAILED_FILES = 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .figures import require_matplotlib
    from .ingest import ingest
    from .report import first_source_image, write_report
    from .store import StoreRef, XrayStore, check_target
    from .synth import synth_dataset

    root = Path(args.dir)
    src, out, report = root / "chest_xray", root / "xray.zarr", root / "report"
    # Both steps refuse what they did not write themselves; check the store before synth.
    check_target(StoreRef(str(out)), overwrite=args.overwrite)
    print(f"1/4 synth: writing {args.n} synthetic X-rays to {src}")
    synth_dataset(src, n=args.n, seed=0, overwrite=args.overwrite)
    print(f"2/4 ingest: {src} -> {out}")
    result = ingest(src, out, labels="kermany3", progress=True, overwrite=args.overwrite)
    _print_summary(result)
    print("3/4 stats:")
    ds = XrayStore(str(out))
    _print_stats(ds.stats(), "split")
    try:
        require_matplotlib()
    except ImportError as e:  # the statistics are done; the figures are optional
        print(f"4/4 report: skipped, {e}")
        report = None
    else:
        print(f"4/4 report: figures and index.html in {report}")
        written = write_report(ds, report, overwrite=args.overwrite, inspect=first_source_image(ds))
        print(f"wrote {len(written.files) - 2} figures, manifest.csv and index.html")
        print(f"\nopen the report in a browser:\n  {written.index.resolve().as_uri()}")
    print("\nthen try it on your own folder of X-rays (SRC/CLASS/*.jpeg, or "
          "SRC/{train,val,test}/CLASS/*.jpeg):")
    program, python = _invocation()
    commands = [
        (f"{program} ingest SRC xray.zarr", "labels = folder names; --labels kermany3|FILE.csv"),
        (f"{program} stats xray.zarr --by split", "exact statistics per split and class"),
        (f"{program} split xray.zarr --by patient,content --stratify",
         "a split that no patient or near-duplicate straddles"),
        (f"{program} report xray.zarr --out xray-report", "these figures for your data"
         + ("" if report else ", needs xraybatch[plot]")),
        (f"{python} benchmarks/run.py SRC", "loader speed here (in the repository, '.[bench]')")]
    width = max(len(command) for command, _ in commands)
    for command, note in commands:
        print(f"  {command:<{width}}  # {note}")
    return 0


def _invocation() -> tuple[str, str]:
    """This ``xraybatch`` and its Python as the user can type them again: the bare names when
    the shell finds these very files, else their paths (``.venv/bin/xraybatch``)."""
    def typed(path: str, name: str) -> str:
        found = shutil.which(name)
        if found and os.path.abspath(found) == os.path.abspath(path):
            return name
        relative = os.path.relpath(path)
        return os.path.abspath(path) if relative.startswith("..") else relative

    python = typed(sys.executable, "python")
    script = sys.argv[0]
    if os.path.basename(script) == "xraybatch":
        return typed(script, "xraybatch"), python
    return f"{python} -m xraybatch", python  # python -m xraybatch, or main() called from Python


def _cmd_synth(args: argparse.Namespace) -> int:
    if args.format == "dicom":
        from .synth_dicom import synth_dicom as synth_dataset
    else:
        from .synth import synth_dataset
    extra = {"leaked": args.leaked} if args.format == "dicom" else {}
    frame = synth_dataset(args.out, n=args.n, seed=args.seed, scale=args.scale,
                          overwrite=args.overwrite, **extra)
    print(f"wrote {len(frame)} images ({frame.bytes.sum() / 1e6:.1f} MB) to {args.out}")
    print(frame.groupby(["split", "kind"]).size().unstack(fill_value=0).to_string())
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from .ingest import ingest

    result = ingest(args.src, args.out, size=args.size, labels=args.labels,
                    interpolation=args.interpolation, decode_mode=args.decode, chunk=args.chunk,
                    scheduler=args.scheduler, workers=args.workers, overwrite=args.overwrite,
                    resume=args.resume, progress=not args.quiet, max_pixels=args.max_pixels,
                    storage_options=dict(args.storage_option), window=args.window,
                    fit=args.fit, patient_id=args.patient_id, files=args.files,
                    table_preset=args.table_preset, columns=_columns(args),
                    append=args.append)
    if args.append:
        _print_append(result)
    else:
        _print_summary(result)
    print(f"next: {_next_commands(args.out)}")
    return EXIT_FAILED_FILES if args.strict and len(result.failures) else 0


def _columns(args: argparse.Namespace) -> dict[str, Any]:
    """The table column options that were given (they replace the preset's)."""
    given = {"path": args.path_column, "label": args.label_column,
             "labels": args.labels_column, "sep": args.label_sep,
             "findings": args.finding_columns, "split": args.split_column,
             "patient": args.patient_column}
    return {k: v for k, v in given.items() if v}


def _print_summary(result: IngestResult) -> None:
    if result.chunks_run == 0:
        print(f"{result.out} already had all {result.chunks_total} chunks: nothing to write; "
              f"{result.n_stored} of {result.n_images} images stored")
    else:
        resumed = (f" (resumed: {result.chunks_run} of {result.chunks_total} chunks written now)"
                   if result.chunks_run < result.chunks_total else "")
        print(f"stored {result.n_stored} of {result.n_images} images in {result.out} in "
              f"{result.seconds:.1f} s ({result.images_per_second:.0f} images/s){resumed}")
    if len(result.skipped):
        reasons = result.skipped.reason.value_counts().to_dict()
        print(f"skipped {len(result.skipped)} files that are not labelled images: {reasons}")
    if len(result.failures):
        print(f"failed {len(result.failures)} files:")
        for row in result.failures.head(50).itertuples():
            print(f"  {row.status:<13} {row.path}: {row.message}")
        if len(result.failures) > 50:
            print(f"  ... and {len(result.failures) - 50} more (see the store's manifest)")


def _print_append(result: AppendResult) -> None:
    start, stop = result.rows
    if not result.n_new:
        kept = ("the interrupted append was discarded, the store is its last committed version"
                if result.discarded else "the store is unchanged")
        print(f"nothing to append: every file under the source is already in {result.out} "
              f"({result.n_images} images, version {result.version}); {kept}")
    else:
        print(f"appended {result.n_new} images to {result.out} as rows {start}-{stop - 1} in "
              f"{result.seconds:.1f} s ({result.images_per_second:.0f} images/s): "
              f"{result.n_stored} of {result.n_images} images stored, version {result.version}")
        if result.resplit:  # the new rows' patients and copies may sit in other splits
            by = ",".join(result.resplit.get("by", ["patient"]))
            print(f"note: the new rows are in the splits of their scan, not placed by the "
                  f"store's 'xraybatch split --by {by}': run it again so that no patient or "
                  f"near-duplicate straddles splits (xraybatch stats {shlex.quote(result.out)} "
                  "--strict checks)")
    if len(result.changed):
        print(f"{len(result.changed)} stored files changed size since they were stored and "
              "were NOT replaced (--append adds, it does not edit):")
        for row in result.changed.head(50).itertuples():
            print(f"  {row.path}: {row.stored_bytes} bytes stored, {row.bytes} now")
        if len(result.changed) > 50:
            print(f"  ... and {len(result.changed) - 50} more")
    if len(result.failures):
        print(f"failed {len(result.failures)} new files:")
        for row in result.failures.head(50).itertuples():
            print(f"  {row.status:<13} {row.path}: {row.message}")


def _cmd_stats(args: argparse.Namespace) -> int:
    from .store import XrayStore

    ds = XrayStore(args.out, dict(args.storage_option))
    if not ds.complete:
        done, total = ds.progress
        print(f"xraybatch stats: {args.out} is INCOMPLETE: {done} of {total} chunks written "
              f"({ds.attrs.get('n_images')} images); finish it with "
              f"'xraybatch ingest SRC {args.out} --resume'", file=sys.stderr)
        return EXIT_FAILED_FILES
    if ds.attrs.get("split_pending"):
        print(f"xraybatch stats: warning: an interrupted 'xraybatch split' left {args.out}'s "
              f"split half rewritten: run it again, or 'xraybatch split {args.out} --restore'",
              file=sys.stderr)
    stats = ds.stats()
    stats["near_duplicates"] = _near_duplicates(ds)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        _print_stats(stats, args.by)
    leaked = stats["patients"]["in_several_splits"]
    if args.strict and leaked["count"]:
        print(f"xraybatch stats: patient leakage: {leaked['count']} patients in more than one "
              f"split ({', '.join(leaked['ids'][:20])})", file=sys.stderr)
        return EXIT_FAILED_FILES
    near = stats["near_duplicates"]
    if args.strict and near and near["cross_split"]:
        print(f"xraybatch stats: near-duplicate leakage: {near['cross_split']} pairs across "
              f"splits (see 'xraybatch dups {args.out}')", file=sys.stderr)
        return EXIT_FAILED_FILES
    return 0


def _near_duplicates(ds) -> dict | None:
    """Near-duplicate counts for stats (None for a store without fingerprints); stats
    writes nothing: the pairs that ``dups`` or ``split`` kept are reused, the rest searched."""
    from . import dups

    ds = dups.read_once(ds)  # the check and the search read the fingerprint arrays once
    return dups.summarize(ds, keep=False) if dups.searchable(ds) else None


def _print_stats(stats: dict, by: str) -> None:
    import pandas as pd

    from .patients import describe as describe_patients
    from .stats import table as stats_table

    named = {"all": stats["global"]}
    if by == "class":
        named |= stats["per_class"]
    else:
        named |= {f"{sp}/{c}": s for sp, per in stats["per_split_class"].items()
                  for c, s in per.items()}
    rows = stats_table(named)
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(rows.to_string(index=False))
    weights = ", ".join(f"{c} {w:.4f}" for c, w in stats["class_weights"].items())
    ratio = stats["imbalance_ratio"]
    ratio = "n/a (no valid image)" if ratio is None else f"{ratio:.2f}"
    print(f"images {stats['images']} (valid {stats['valid']}, failed {stats['failed']}); "
          f"imbalance ratio {ratio}; class weights {weights}")
    print("\n".join(describe_patients(stats["patients"])))
    if "near_duplicates" in stats:
        from .dups import describe as describe_near

        near = stats["near_duplicates"]
        print(describe_near(near) if near else "near-duplicates: no content fingerprints in "
              "this store (ingest it again with --overwrite to search it)")


def inspect_image(path: str | os.PathLike, storage_options: dict | None = None) -> dict:
    """The tutorial's single-image numbers for one file (or URL), read as 8-bit grayscale."""
    from . import decode
    from .sources.remote import source_options

    with source_options(storage_options):
        data = decode.read_bytes(path)
    image = decode.decode_gray(data, decode.read_header(data))
    return {"path": str(path), "height": image.shape[0], "width": image.shape[1],
            "max": int(image.max()), "min": int(image.min()),
            "mean": round(float(image.mean()), 4), "std": round(float(image.std()), 4),
            "hist": decode.histogram(image).tolist()}


def _cmd_inspect(args: argparse.Namespace) -> int:
    import numpy as np

    info = inspect_image(args.image, dict(args.storage_option))
    if args.plot:
        from .figures import plot_inspect

        plot_inspect(args.image, args.plot, overwrite=args.overwrite,
                     storage_options=dict(args.storage_option))
    if args.json:
        print(json.dumps(info))
        return 0
    for key in ("path", "height", "width", "max", "min"):
        print(f"{key:>6}: {info[key]}")
    print(f"  mean: {info['mean']:.4f}\n   std: {info['std']:.4f}")
    print("histogram (256 bins, 16 per row):")
    hist = np.asarray(info["hist"]).reshape(16, 16)
    for row, counts in enumerate(hist):
        print(f"  {row * 16:>3}-{row * 16 + 15:<3} " + " ".join(f"{c:>6}" for c in counts))
    if args.plot:
        print(f"image and histogram drawn in {args.plot}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import FIGURES, write_report

    result = write_report(args.out, args.dir, seed=args.seed, overwrite=args.overwrite,
                          storage_options=dict(args.storage_option))
    print(f"wrote {result.index} and {len(FIGURES)} figures: {result.n_images} images, "
          f"{result.n_failed} failed, {result.n_flagged} with QC flags")
    print(f"open in a browser: {result.index.resolve().as_uri()}")
    print(f"next: ds = xraybatch.open({args.out!r}) in Python, to analyse or train on the "
          "store (README: \"Reading a store for analysis and training\")")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from .splits import restore, split

    options = dict(dry_run=args.dry_run, storage_options=dict(args.storage_option))
    if args.restore:
        if args.by or args.stratify or args.keep:
            raise ValueError("--restore puts the scan's split back: it takes no --by, "
                             "--stratify or --keep")
        result = restore(args.out, **options)
    else:
        if not args.by:
            raise ValueError("--by is needed: patient, content or patient,content "
                             "(or --restore)")
        result = split(args.out, args.by, args.ratios, stratify=args.stratify,
                       seed=args.seed, keep=args.keep, threshold=args.threshold, **options)
    if args.json:
        print(json.dumps(result.summary(), indent=1))
    else:
        _print_split(result)
    return 0


def _print_split(result) -> None:
    import pandas as pd

    summary, a = result.summary(), result.assignment
    if a["method"] == "scan":
        print(f"{result.out}: the scan's split assignment")
    else:
        print(f"{result.out}: split by {','.join(a['by'])} into groups that stay together "
              f"({a['groups']} groups; seed {a['seed']}"
              + (", stratified" if a["stratify"] else "")
              + (f", {a['keep']} kept" if a["keep"] else "") + ")")
    n = len(result.values)
    rows = pd.DataFrame({"images": [s["images"] for s in summary["per_split"].values()]},
                        index=result.splits)
    rows["share"] = rows.images / max(n, 1)
    if a["method"] != "scan":
        rows["target"] = ["kept" if s == a["keep"] else f"{a['ratios'][s]:.3f}"
                          if s in a["ratios"] else "" for s in result.splits]
        rows["groups"] = [s["groups"] for s in summary["per_split"].values()]
    shares = result.class_counts.div(rows.images.replace(0, 1), axis=0)
    rows = rows.join(shares.add_suffix(" %") * 100)
    with pd.option_context("display.float_format", "{:.3f}".format, "display.width", 160):
        print(rows.to_string())
    if a["method"] != "scan":
        if a["keep"]:
            print(f"{a['keep']} kept: its {a['kept']} images as they were, and {a['joined']} "
                  "images of the same groups joined it")
        print("no group is in more than one split")
    if result.written:
        print(f"wrote the split (store version {result.version}); the scan's split is kept: "
              f"xraybatch split {shlex.quote(result.out)} --restore")
    else:
        print("dry run: nothing written")


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    result = verify(args.out, sources=args.sources, scheduler=args.scheduler,
                    workers=args.workers, progress=not args.quiet,
                    storage_options=dict(args.storage_option))
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        _print_verify(result)
    return 0 if result.ok else EXIT_FAILED_FILES


#: Problems and source files listed by the text output of verify (--json lists all).
_LISTED = 50


def _print_verify(result: Any) -> None:
    checksums = ("checksums checked on every chunk file (CRC-32C on the pixels, Zstandard "
                 "elsewhere)" if result.checksums else
                 "checksums ABSENT (a format-1 store: histograms checked only; re-ingest "
                 "with --overwrite to add them)")
    print(f"{result.store}: format {result.format_version}, {checksums}")
    print(f"checked {result.chunks_checked} chunk files; {result.images_checked} of "
          f"{result.n_images} images ({result.image_chunks} chunks) compared with their records; "
          f"{result.seconds:.1f} s ({result.images_per_second:.0f} images/s)")
    _print_problems(result)
    check = result.sources
    if check is not None:
        print(f"sources: {check.files_checked} files under {check.source} re-hashed: "
              f"{len(check.changed)} changed, {len(check.missing)} missing, "
              f"{len(check.new)} new")
        rows = ([f"changed  {c['path']}: {c['message']}" for c in check.changed]
                + [f"missing  {m['path']}" for m in check.missing]
                + [f"new      {n['path']} ({n['bytes']} bytes)" for n in check.new])
        for row in rows[:_LISTED]:
            print(f"  {row}")
        if len(rows) > _LISTED:
            print(f"  ... and {len(rows) - _LISTED} more files (--json lists all)")
        if check.note:
            print(f"  {check.note}")
    differ = ("" if check is None else
              f", {len(check.changed) + len(check.missing) + len(check.new)} source files differ")
    print("verify: OK" if result.ok else
          f"verify: FAILED: {len(result.problems)} problems{differ}")


def _print_problems(result: Any) -> None:
    """The problems, one line each up to :data:`_LISTED`; those of an ingest that did not
    finish (its chunks not written yet) in one line."""
    from .verify import unfinished

    problems = result.problems
    if not result.complete:
        chunks, problems = unfinished(problems)
        first = ", ".join(map(str, chunks[:5])) + (", ..." if len(chunks) > 5 else "")
        written = (f"{len(chunks)} of {result.image_chunks} chunks not written (chunks "
                   f"{first})" if chunks else "every chunk written, not marked complete")
        print(f"  {'incomplete':<16} the ingest did not finish: {written}: run xraybatch "
              f"ingest SRC {shlex.quote(result.store)} --resume")
    for problem in problems[:_LISTED]:
        print(f"  {problem.line()}")
    if len(problems) > _LISTED:
        print(f"  ... and {len(problems) - _LISTED} more problems (--json lists all)")


def _cmd_dups(args: argparse.Namespace) -> int:
    from . import dups
    from .store import XrayStore

    options = dict(args.storage_option)
    # each store once, each of its arrays read once (the output reuses the search's paths)
    stores = [dups.read_once(XrayStore(url, options)) for url in dict.fromkeys(args.stores)]
    found = dups.find(stores, args.threshold, scheduler=args.scheduler, workers=args.workers)
    groups = dups.groups_of(found)
    names = [dups.store_name(ds) for ds in stores]
    several = len(stores) > 1
    if args.json:
        print(json.dumps(_dups_json(found, groups, stores, names, args.threshold), indent=1))
    else:
        _print_dups(found, groups, stores, names, args.threshold)
    cross = int(found.cross_split.sum())
    if args.strict and cross:
        print(f"xraybatch dups: {cross} near-duplicate pairs across splits"
              + (" or stores" if several else ""), file=sys.stderr)
        return EXIT_FAILED_FILES
    return 0


def _dups_json(found, groups: list, stores: list, names: list[str],
               threshold: float | None) -> dict[str, Any]:
    """``dups --json``: pairs as [path_a, path_b, score] (+ [store_a, store_b] for several
    stores), the cross-split ones again under ``cross_split``, and the groups."""
    from .dups import threshold_or_default

    several = len(stores) > 1
    paths = [ds.paths for ds in stores]

    def pair(row) -> list:
        out = [row.path_a, row.path_b, round(float(row.score), 4)]
        return out + [names[row.store_a], names[row.store_b]] if several else out

    def member(store: int, row: int) -> Any:
        return [names[store], paths[store][row]] if several else paths[store][row]

    rows = list(found.itertuples())
    return {"stores": names, "images": [len(ds) for ds in stores],
            "threshold": threshold_or_default(threshold),
            "counts": {"pairs": len(rows), "groups": len(groups),
                       "cross_split": int(found.cross_split.sum())},
            "pairs": [pair(r) for r in rows],
            "cross_split": [pair(r) for r in rows if r.cross_split],
            "groups": [[member(s, r) for s, r in g] for g in groups]}


def _print_dups(found, groups: list, stores: list, names: list[str],
                threshold: float | None) -> None:
    from .dups import threshold_or_default

    several = len(stores) > 1
    paths = [ds.paths for ds in stores]

    def where(store: int, path: str, split: str) -> str:
        return f"{names[store]}:{path} [{split}]" if several else f"{path} [{split}]"

    searched = ", ".join(f"{names[i]} ({len(ds)} images)" for i, ds in enumerate(stores))
    cross = found[found.cross_split]
    print(f"searched {searched}; score threshold {threshold_or_default(threshold):.2f}")
    print(f"{len(found)} near-duplicate pairs in {len(groups)} groups "
          f"({sum(len(g) for g in groups)} images); {len(cross)} across splits"
          + (" or stores" if several else ""))
    for title, rows in (("pairs across splits" + (" or stores" if several else ""), cross),
                        ("pairs within a split", found[~found.cross_split])):
        if len(rows):
            print(f"{title} (score, image, image):")
        for r in rows.itertuples():
            exact = "  (byte-identical)" if r.exact else ""
            print(f"  {r.score:.3f}  {where(r.store_a, r.path_a, r.split_a)}  ~  "
                  f"{where(r.store_b, r.path_b, r.split_b)}{exact}")
    if groups:
        print("groups:")
    for i, group in enumerate(groups, 1):
        members = ", ".join(f"{names[s]}:{paths[s][r]}" if several else paths[s][r]
                            for s, r in group)
        print(f"  {i}: {members}")


def _next_commands(out: str) -> str:
    """What to run on a store just written: its statistics, then its report."""
    report = out.rstrip("/").rsplit("/", 1)[-1] if "://" in out else out.rstrip("/")
    report = (report[:-5] if report.endswith(".zarr") else report) + "-report"
    program = _invocation()[0]
    return (f"{program} stats {shlex.quote(out)} --by split, then {program} report "
            f"{shlex.quote(out)} --out {shlex.quote(report)} (figures and index.html)")


#: Subcommand name -> its implementation, called with the parsed arguments.
COMMANDS = {"demo": _cmd_demo, "synth": _cmd_synth, "ingest": _cmd_ingest,
            "stats": _cmd_stats, "inspect": _cmd_inspect, "report": _cmd_report,
            "split": _cmd_split, "verify": _cmd_verify, "dups": _cmd_dups}
