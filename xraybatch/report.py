"""The dataset report: the figures of a whole store with its tables, in one page.

Writes the figures of :mod:`.figures` (which needs the optional ``plot`` extra, matplotlib),
``manifest.csv`` and an ``index.html`` that shows them with the store's tables. Everything is
read from the store: histograms, QC flags from the stored per-image mean and std, the mean images
by a Dask reduction over the image chunks, the sample grid from 9 images.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import qc
from .figures import (
    DPI,
    class_means,
    plot_class_counts,
    plot_histograms,
    plot_inspect,
    plot_mean_images,
    plot_near_duplicates,
    plot_samples,
    plot_spread,
    require_matplotlib,
)
from .patients import describe as describe_patients
from .stats import table as stats_table
from .store import StoreError, XrayStore

#: Figures of the report: file name -> caption.
FIGURES: dict[str, str] = {
    "class_counts.png": "Valid images per class and split, with the suggested class weights.",
    "histograms.png": "Pixel intensity histograms, normalised to fractions of pixels: "
                      "all images, and each class overlaid.",
    "samples.png": "Random stored images with their class, split and file name.",
    "mean_images.png": "Mean stored image of each class (same grey scale for all).",
    "intensity_spread.png": "Per-image mean and standard deviation by class; red crosses are "
                            "the images flagged as per-class outliers.",
}
#: Cross-split near-duplicate pairs side by side, drawn when there are any.
NEAR_DUPLICATES = "near_duplicates.png"
#: Pairs drawn in it (the HTML table lists up to MAX_ROWS).
NEAR_DUPLICATES_DRAWN = 12
#: The tutorial's view of one source image, drawn when :func:`write_report` is given one.
ONE_IMAGE = "one_image.png"
#: Longest file list shown in the HTML; manifest.csv has every row.
MAX_ROWS = 500


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    index: Path
    files: list[Path]
    n_images: int
    n_failed: int
    n_flagged: int


def first_source_image(store: XrayStore) -> str | None:
    """The source file of the store's first valid image (None if none is valid).

    Examples
    --------
    >>> first_source_image(xraybatch.open("xray.zarr"))  # doctest: +SKIP
    '/data/chest_xray/test/NORMAL/IM-0001-0001.jpeg'
    """
    manifest = store.manifest
    valid = manifest.index[manifest.valid.to_numpy(bool)]
    return os.path.join(store.attrs["source"], manifest.path[valid[0]]) if len(valid) else None


# --- the report -----------------------------------------------------------------------------


def write_report(store: XrayStore | str | os.PathLike, out: str | os.PathLike, *,
                 seed: int = 0, overwrite: bool = False,
                 inspect: str | os.PathLike | None = None,
                 storage_options: dict | None = None) -> ReportResult:
    """Write the figures, ``manifest.csv`` and an ``index.html`` showing them with the tables.

    Parameters
    ----------
    store
        An open :class:`~.store.XrayStore` or the path/URL of a complete store.
    out
        Folder to write; refused if it exists and is not empty, unless ``overwrite``
        (which replaces the report's own files and leaves any other file alone).
    seed
        Chooses the images of the sample grid.
    inspect
        A source image file to show as the tutorial does, beside its histogram
        (:func:`plot_inspect`), in ``one_image.png``.
    storage_options
        fsspec options for a store given by URL.

    Examples
    --------
    >>> result = write_report("xray.zarr", "xray-report", seed=1)  # doctest: +SKIP
    >>> result.index  # doctest: +SKIP
    PosixPath('xray-report/index.html')
    """
    require_matplotlib()
    ds = store if isinstance(store, XrayStore) else XrayStore(str(store), storage_options)
    if not ds.complete:
        raise StoreError(f"{ds.ref.url} is INCOMPLETE (an interrupted ingest): finish it with "
                         f"'xraybatch ingest SRC {ds.ref.url} --resume' first")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(f"{out} already exists" + (
            " and is not empty: pass --overwrite to replace its report files"
            if out.is_dir() else " and is not a folder"))
    stats, manifest = ds.stats(), ds.manifest
    near = _near_duplicates(ds)
    means, counts = class_means(ds)
    figures = {
        "class_counts.png": plot_class_counts(stats, ds.classes, ds.splits),
        "histograms.png": plot_histograms(stats, ds.classes),
        "samples.png": plot_samples(ds, manifest, seed),
        "mean_images.png": plot_mean_images(ds.classes, means, counts),
        "intensity_spread.png": plot_spread(
            manifest, ds.classes, ds.class_membership() if ds.multilabel else None),
    }
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=DPI)
        files.append(out / name)
    if near is not None and near.cross_split.any():
        fig = plot_near_duplicates(ds, near[near.cross_split], NEAR_DUPLICATES_DRAWN)
        fig.savefig(out / NEAR_DUPLICATES, dpi=DPI)
        files.append(out / NEAR_DUPLICATES)
    if inspect is not None:
        files.append(plot_inspect(inspect, out / ONE_IMAGE, overwrite=True,
                                  storage_options=storage_options))
    manifest.to_csv(out / "manifest.csv", index_label="sample")
    index = out / "index.html"
    index.write_text(_html(ds, stats, manifest, seed, inspect, near),
                     encoding="utf-8")  # last: the report
    return ReportResult(index, [*files, out / "manifest.csv", index], len(manifest),
                        int((~manifest.valid).sum()), int((manifest.qc_flags != "").sum()))


# --- HTML -----------------------------------------------------------------------------------


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } .note { color: #555; }
"""


def _table(frame: pd.DataFrame, index: bool = False) -> str:
    return frame.to_html(index=index, border=0, na_rep="–", escape=True,
                         float_format=lambda v: f"{v:.2f}")


def _capped(frame: pd.DataFrame, what: str) -> str:
    if frame.empty:
        return f'<p class="note">No {what}.</p>'
    note = (f'<p class="note">Showing {MAX_ROWS} of {len(frame)}: all are in '
            '<a href="manifest.csv">manifest.csv</a>.</p>' if len(frame) > MAX_ROWS else "")
    return _table(frame.head(MAX_ROWS)) + note


def _counts_table(stats: dict[str, Any], classes: list[str], splits: list[str]) -> pd.DataFrame:
    rows = {s: [stats["per_split_class"][s][c]["images"] for c in classes] for s in splits}
    rows["all"] = [stats["class_counts"][c] for c in classes]
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=classes)
    frame["total"] = frame.sum(axis=1)
    frame = frame.astype(str)
    weights = stats["class_weights"]
    frame.loc["class weight"] = [f"{weights[c]:.4f}" if c in weights else "–"
                                 for c in classes] + ["–"]
    return frame


def _finding_tables(stats: dict[str, Any]) -> list[str]:
    """Multi-label stores: what the table states per finding, and which findings co-occur."""
    states = pd.DataFrame.from_dict(stats["finding_counts"], orient="index")
    cooc = stats["cooccurrence"]
    matrix = pd.DataFrame(cooc["matrix"], index=cooc["findings"], columns=cooc["findings"])
    return ["<h3>Findings as stated (valid images)</h3>", _table(states, index=True),
            "<h3>Co-occurrence</h3><p>Valid images positive for both findings (the diagonal: "
            "for the finding).</p>", _table(matrix, index=True)]


def _qc_tables(manifest: pd.DataFrame) -> str:
    summary = pd.DataFrame([{"flag": name, "files": int(manifest[f"qc_{name}"].sum()),
                             "meaning": meaning} for name, meaning in qc.FLAGS.items()])
    flagged = manifest[manifest.qc_flags != ""]
    first = flagged.duplicate_of.map(lambda r: manifest.path[r] if r >= 0 else "")
    shapes = zip(flagged.orig_height, flagged.orig_width, flagged.orig_channels, strict=True)
    files = pd.DataFrame({
        "sample": flagged.index, "path": flagged.path, "split": flagged.split,
        "class": flagged.class_name, "flags": flagged.qc_flags, "copy of": first,
        "original h x w x channels": [f"{h} x {w} x {c}" for h, w, c in shapes],
        "mean": flagged["mean"], "std": flagged["std"],
    })
    return _table(summary) + _capped(files, "quality-control flags")


_SECTIONS = {"classes": "Classes", "patients": "Patients",
             "dups": "Near-duplicates", "intensities": "Intensities",
             "images": "Images",
             "spread": "Per-image statistics", "qc": "Quality control",
             "failed": "Failed files", "skipped": "Skipped files"}


def _patients_html(summary: dict[str, Any]) -> str:
    """Patients per split and class, and the patients found in more than one split."""
    lines = "".join(f"<p>{html.escape(line)}</p>" for line in describe_patients(summary))
    if not summary["images_with_id"]:
        return lines
    counts = pd.DataFrame(summary["per_split_class"]).T.assign(all=summary["per_split"])
    leaked = summary["in_several_splits"]["splits"]
    table = pd.DataFrame({"patient": list(leaked),
                          "splits": [", ".join(s) for s in leaked.values()]})
    return (lines + "<h3>Patients per split and class</h3>" + _table(counts, index=True)
            + ("<h3>Patients in more than one split</h3>" + _capped(table, "patients")
               if len(table) else ""))


def _near_duplicates(ds: XrayStore) -> pd.DataFrame | None:
    """The store's near-duplicate pairs (:func:`xraybatch.dups.find`), or None without
    fingerprints."""
    from . import dups

    return dups.find([ds], keep=False) if dups.searchable(ds) else None  # (writes nothing)


def _dups_html(near: pd.DataFrame | None) -> str:
    """Cross-split pairs side by side, and every pair in a table."""
    from .dups import DEFAULT_THRESHOLD

    if near is None:
        return ('<p class="note">No content fingerprints in this store (written by an older '
                "xraybatch): ingest it again with --overwrite to search it.</p>")
    cross = near[near.cross_split]
    text = (f"<p>{len(near)} pairs of near-duplicate images (score &ge; {DEFAULT_THRESHOLD:.2f}"
            f"; 1 = identical after alignment), {len(cross)} of them across splits. "
            "<code>xraybatch dups</code> lists them; <code>xraybatch split --by content</code> "
            "keeps each group in one split.</p>")
    figure = (_figure_html(NEAR_DUPLICATES, f"The first {min(len(cross), NEAR_DUPLICATES_DRAWN)}"
                           " pairs across splits, side by side (stored images).")
              if len(cross) else "")
    table = near.assign(score=near.score.round(3))[
        ["score", "path_a", "split_a", "path_b", "split_b", "cross_split", "exact"]]
    return text + figure + _capped(table, "near-duplicate pairs")


def _h2(key: str) -> str:
    return f'<h2 id="{key}">{_SECTIONS[key]}</h2>'


def _figure_html(name: str, caption: str | None = None) -> str:
    caption = html.escape(caption or FIGURES[name])
    return (f'<figure><img src="{name}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _html(ds: XrayStore, stats: dict[str, Any], manifest: pd.DataFrame, seed: int,
          inspect: str | os.PathLike | None = None, near: pd.DataFrame | None = None) -> str:
    attrs = ds.attrs
    failed = manifest.loc[~manifest.valid.to_numpy(bool), ["path", "status", "message"]]
    skipped = pd.DataFrame(attrs.get("skipped", []), columns=["path", "reason"])
    n_skipped = int(attrs.get("n_skipped", len(skipped)))
    ratio = stats["imbalance_ratio"]
    summary = pd.DataFrame([
        ("store", ds.ref.url), ("source", attrs.get("source", "")),
        ("images", stats["images"]), ("valid", stats["valid"]), ("failed", stats["failed"]),
        ("skipped (not labelled images)", n_skipped),
        ("QC-flagged", int((manifest.qc_flags != "").sum())),
        ("classes", ", ".join(ds.classes)), ("splits", ", ".join(ds.splits)),
        ("stored size", f"{ds.size} x {ds.size}"),
        ("interpolation / decode", f"{attrs.get('interpolation')} / {attrs.get('decode')}"),
        ("label scheme", attrs.get("label_scheme", "")),
        ("created", attrs.get("created", "")),
        ("xraybatch version", attrs.get("xraybatch_version", "")),
        ("sample grid seed", seed)], columns=["", "value"]).astype(str)
    per_split = {f"{s} / {c}": v for s, per in stats["per_split_class"].items()
                 for c, v in per.items()}
    skipped_note = (f'<p class="note">{n_skipped} files in all; the store lists the first '
                    f"{len(skipped)}.</p>" if n_skipped > len(skipped) else "")
    title = html.escape(f"xraybatch report: {ds.ref.url}")
    one_image = "" if inspect is None else _figure_html(
        ONE_IMAGE, f"One source image as read (8-bit grayscale, full size) and its 256-bin "
                   f"histogram: {inspect}")
    parts = [
        f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{title}</title><style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        "<p>" + " &middot; ".join(f'<a href="#{k}">{v}</a>' for k, v in _SECTIONS.items())
        + "</p>", _table(summary),
        '<p>Every row of the store, with its QC flags: <a href="manifest.csv">manifest.csv</a>'
        "</p>",
        _h2("classes"), _figure_html("class_counts.png"),
        f"<p>Imbalance ratio (largest / smallest class): "
        f"{'–' if ratio is None else f'{ratio:.2f}'}. Class weights are "
        "n_images / (n_classes &times; n_class), for a weighted loss.</p>",
        _table(_counts_table(stats, ds.classes, ds.splits), index=True),
        *(_finding_tables(stats) if "cooccurrence" in stats else []),
        _h2("patients"), _patients_html(stats["patients"]),
        _h2("dups"), _dups_html(near),
        _h2("intensities"), _figure_html("histograms.png"),
        "<h3>All images</h3>", _table(stats_table({"all": stats["global"]})),
        "<h3>Per class</h3>", _table(stats_table(stats["per_class"])),
        "<h3>Per split and class</h3>", _table(stats_table(per_split)),
        _h2("images"), _figure_html("samples.png"), one_image,
        _figure_html("mean_images.png"),
        _h2("spread"), _figure_html("intensity_spread.png"),
        _h2("qc"), _qc_tables(manifest),
        _h2("failed"), _capped(failed, "failed files"),
        _h2("skipped"), _capped(skipped, "skipped files") + skipped_note,
        "</body></html>\n",
    ]
    return "\n".join(parts)
