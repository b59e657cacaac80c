"""The dataset report: the tutorial's figures for a whole store, with its tables, in one page.

Needs the optional ``plot`` extra (matplotlib). Figures are drawn on matplotlib's Agg canvas
directly, without pyplot, so a report written from a notebook never touches its backend.
Everything is read from the store: histograms and QC flags from the per-image histograms,
the mean images by a Dask reduction over the image chunks, the sample grid from 9 images.
"""

from __future__ import annotations

import html
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import decode, qc
from .patients import describe as describe_patients
from .sources.remote import source_options
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
#: The tutorial's view of one source image, drawn when :func:`write_report` is given one.
ONE_IMAGE = "one_image.png"
#: Longest file list shown in the HTML; manifest.csv has every row.
MAX_ROWS = 500
DPI = 100
SPLIT_COLORS = {"train": "#2c5d8f", "val": "#f0a13a", "test": "#6aa84f", "none": "#888888"}
CLASS_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                "#666666"]
_PLOT_HINT = "pip install 'xraybatch[plot]'"


@dataclass(frozen=True)
class ReportResult:
    """What :func:`write_report` wrote."""

    index: Path
    files: list[Path]
    n_images: int
    n_failed: int
    n_flagged: int


def require_matplotlib() -> None:
    """Raise a one-line ``ImportError`` naming the extra to install when matplotlib is absent."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(f"plotting needs matplotlib: {_PLOT_HINT}") from None


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _class_color(i: int) -> str:
    return CLASS_COLORS[i % len(CLASS_COLORS)]


# --- computations ---------------------------------------------------------------------------


def class_means(store: XrayStore) -> tuple[np.ndarray, np.ndarray]:
    """Mean stored image of each class over the valid images, by a Dask reduction.

    Each chunk contributes its per-class sums (a one-hot matrix product); the sums are
    added in a tree, so memory holds a few chunks, never the dataset. The sums of integers
    are exact in float64, so the result does not depend on the chunking.

    Returns
    -------
    means : numpy.ndarray
        (n_classes, size, size) float64; NaN for a class without valid images.
    counts : numpy.ndarray
        Valid images per class.

    Examples
    --------
    >>> means, counts = class_means(xraybatch.open("xray.zarr"))  # doctest: +SKIP
    >>> means.shape, counts.tolist()  # doctest: +SKIP
    ((3, 256, 256), [60, 118, 70])
    """
    import dask.array as da

    images = store.images
    onehot = store.class_membership().astype(np.float64)  # multi-label: every finding
    weights = da.from_array(onehot, chunks=(images.chunks[0], onehot.shape[1]))
    sums = da.tensordot(weights, images, axes=(0, 0)).compute()
    counts = onehot.sum(axis=0).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts[:, None, None], counts


def pick_samples(manifest: pd.DataFrame, seed: int, k: int = 9) -> np.ndarray:
    """``k`` distinct random valid rows (fewer if there are fewer), the same for a seed.

    Examples
    --------
    >>> frame = pd.DataFrame({"valid": [True, False, True, True]})
    >>> sorted(pick_samples(frame, seed=0, k=9).tolist())
    [0, 2, 3]
    """
    valid = np.flatnonzero(manifest.valid.to_numpy(bool))
    return np.random.default_rng(seed).choice(valid, size=min(k, len(valid)), replace=False)


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


# --- figures --------------------------------------------------------------------------------


def plot_class_counts(stats: dict[str, Any], classes: list[str], splits: list[str]):
    """Grouped bar chart of valid images per class and split (a matplotlib ``Figure``)."""
    counts = np.array([[stats["per_split_class"][s][c]["images"] for c in classes]
                       for s in splits])
    fig = _figure(max(6.5, 1.6 * len(classes) + 2.5), 4.6)
    ax = fig.add_subplot()
    x = np.arange(len(classes))
    width = 0.8 / len(splits)
    for j, split in enumerate(splits):
        bars = ax.bar(x + (j - (len(splits) - 1) / 2) * width, counts[j], width,
                      color=SPLIT_COLORS.get(split, "#888888"),
                      label=f"{split} ({counts[j].sum()})")
        ax.bar_label(bars, fontsize=8, padding=2)
    weights = {c: f"{w:.2f}" for c, w in stats["class_weights"].items()}
    ax.set_xticks(x, [f"{c}\n{counts[:, i].sum()} images\nweight {weights.get(c, '-')}"
                      for i, c in enumerate(classes)])
    ax.set_ylabel("valid images")
    ax.margins(y=0.12)
    ax.legend(title="split")
    ratio = stats["imbalance_ratio"]
    ax.set_title("Images per class and split"
                 + (f"  (imbalance ratio {ratio:.2f})" if ratio else ""))
    return fig


def plot_histograms(stats: dict[str, Any], classes: list[str]):
    """The global histogram and the per-class ones overlaid, as fractions of pixels."""
    fig = _figure(12, 4.4)
    ax_all, ax_cls = fig.subplots(1, 2)
    values = np.arange(256)
    total = stats["global"]
    hist = np.asarray(total["hist"], np.float64)
    if hist.sum():
        ax_all.fill_between(values, hist / hist.sum(), step="mid", color="0.45")
        ax_all.set_title(f"All classes: {total['images']} images, "
                         f"mean {total['mean']:.1f}, std {total['std']:.1f}")
    per_class = [np.asarray(stats["per_class"][name]["hist"], np.float64) for name in classes]
    for i, (name, hist) in enumerate(zip(classes, per_class, strict=True)):
        s = stats["per_class"][name]
        if hist.sum():
            ax_cls.plot(values, hist / hist.sum(), drawstyle="steps-mid", lw=1.3,
                        color=_class_color(i),
                        label=f"{name} ({s['images']}; mean {s['mean']:.1f})")
    ax_cls.set_title("Per class (normalised, overlaid)")
    if ax_cls.lines:
        ax_cls.legend(fontsize=9)
    for ax, hists in ((ax_all, [np.asarray(total["hist"], np.float64)]), (ax_cls, per_class)):
        ax.set_xlim(0, 255)
        ax.set_xlabel("pixel value")
        ax.set_ylabel("fraction of pixels")
        _clip_extremes(ax, [h / h.sum() for h in hists if h.sum()], percent=True)
    return fig


def _clip_extremes(ax, hists: list[np.ndarray], percent: bool) -> None:
    """Scale the y axis to the bins 1..254 when black or white borders spike 0 or 255.

    X-rays often have many pure black (or white) border pixels; their spike would flatten
    the rest of the histogram. The clipped spike's height is written next to it.
    """
    body = max((h[1:255].max() for h in hists), default=0.0)
    ends = {v: max(h[v] for h in hists) for v in (0, 255)} if hists else {}
    if not body or max(ends.values()) <= 1.3 * body:
        ax.set_ylim(bottom=0)
        return
    top = 1.25 * body
    ax.set_ylim(0, top)
    for value, height in ends.items():
        if height > top:
            text = f"{height:.1%}" if percent else f"{int(height):,} pixels"
            ax.annotate(f"{value}: {text} (clipped)", (value, top), xytext=(
                6 if value == 0 else -6, -14), textcoords="offset points", fontsize=8,
                ha="left" if value == 0 else "right")


def plot_samples(store: XrayStore, manifest: pd.DataFrame, seed: int):
    """A 3 x 3 grid of random valid stored images titled with their class."""
    rows = pick_samples(manifest, seed)
    images = store.read_images(rows) if len(rows) else []
    fig = _figure(9, 10.2)
    axes = fig.subplots(3, 3)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for ax, row, image in zip(axes.flat, rows, images, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        ax.set_title(manifest.class_name[row], fontsize=12, fontweight="bold")
        split = "" if manifest.split[row] == "none" else f"{manifest.split[row]} / "
        ax.set_xlabel(split + os.path.basename(manifest.path[row]), fontsize=8)
    fig.suptitle(f"{len(rows)} random images of {int(manifest.valid.sum())} valid "
                 f"(seed {seed})")
    if not len(rows):
        axes[1, 1].text(0.5, 0.5, "no valid images", ha="center", va="center")
    return fig


def plot_mean_images(classes: list[str], means: np.ndarray, counts: np.ndarray):
    """The mean image of each class side by side, on one grey scale."""
    ncols = min(len(classes), 5)
    nrows = math.ceil(len(classes) / ncols)
    fig = _figure(3.3 * ncols + 1.2, 3.6 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    shown = None
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax, name, mean, n in zip(axes, classes, means, counts, strict=False):
        if n:
            shown = ax.imshow(mean, cmap="gray", vmin=0, vmax=255)
        else:
            ax.text(0.5, 0.5, "no valid images", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(f"{name} (n={n})")
    for ax in axes[len(classes):]:
        ax.set_visible(False)
    if shown is not None:
        fig.colorbar(shown, ax=axes.tolist(), shrink=0.8, label="mean pixel value")
    fig.suptitle("Mean image of each class")
    return fig


def plot_spread(manifest: pd.DataFrame, classes: list[str],
                membership: np.ndarray | None = None):
    """Box plots of per-image mean and std by class, every image a dot, outliers crossed.

    ``membership`` ((N, C) bool, multi-label stores) puts an image under each of its findings.
    """
    fig = _figure(12, 4.6)
    valid = manifest[manifest.valid.to_numpy(bool)]
    if membership is not None:  # multi-label: one dot per image and positive finding
        rows, label = np.nonzero(membership[manifest.valid.to_numpy(bool)])
        valid = valid.iloc[rows].assign(label=label)
    jitter = np.random.default_rng(0).uniform(-0.2, 0.2, len(valid))
    x = valid.label.to_numpy() + 1 + jitter
    outlier = valid.qc_outlier.to_numpy(bool)
    for ax, column, name in zip(fig.subplots(1, 2), ("mean", "std"),
                                ("per-image mean", "per-image std"), strict=True):
        y = valid[column].to_numpy()
        groups = [(i + 1, y[valid.label.to_numpy() == i]) for i in range(len(classes))]
        groups = [(p, g) for p, g in groups if len(g)]
        if groups:
            ax.boxplot([g for _, g in groups], positions=[p for p, _ in groups], widths=0.55,
                       showfliers=False, medianprops={"color": "black"})
        colors = [_class_color(i) for i in valid.label.to_numpy()]
        ax.scatter(x[~outlier], y[~outlier], s=7, alpha=0.55,
                   c=[c for c, o in zip(colors, outlier, strict=True) if not o])
        ax.scatter(x[outlier], y[outlier], s=40, marker="x", color="red",
                   label=f"QC outlier ({int(outlier.sum())})")
        ax.set_xticks(np.arange(1, len(classes) + 1), classes)
        ax.set_xlim(0.4, len(classes) + 0.6)
        ax.set_xlabel("class")
        ax.set_ylabel(f"{name} (pixel value)")
        ax.set_title(f"{name.capitalize()} by class")
        ax.legend(loc="best", fontsize=9)
    return fig


def plot_inspect(image_path: str | os.PathLike, out: str | os.PathLike, *,
                 overwrite: bool = False, storage_options: dict | None = None) -> Path:
    """The tutorial's view of one image: the image beside its 256-bin histogram.

    Examples
    --------
    >>> plot_inspect("IM-0115-0001.jpeg", "im.png")  # doctest: +SKIP
    PosixPath('im.png')
    """
    require_matplotlib()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists: pass --overwrite to replace it")
    with source_options(storage_options):  # image_path may be a URL
        data = decode.read_bytes(image_path)
    image = decode.decode_gray(data, decode.read_header(data))
    hist = decode.histogram(image)
    fig = _figure(12, 4.8)
    ax_img, ax_hist = fig.subplots(1, 2, width_ratios=[1, 1.25])
    ax_img.imshow(image, cmap="gray", vmin=0, vmax=255)
    ax_img.set_title(f"{os.path.basename(image_path)}\n"
                     f"{image.shape[0]} x {image.shape[1]} pixels (height x width)")
    ax_img.set_xticks([])
    ax_img.set_yticks([])
    ax_hist.bar(np.arange(256), hist, width=1.0, color="0.3")
    ax_hist.set_xlim(-0.5, 255.5)
    _clip_extremes(ax_hist, [hist.astype(np.float64)], percent=False)
    ax_hist.set_xlabel("pixel value")
    ax_hist.set_ylabel("pixels")
    ax_hist.set_title(f"Histogram: min {image.min()}, max {image.max()}, "
                      f"mean {image.mean():.2f}, std {image.std():.2f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    return out


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
    if inspect is not None:
        files.append(plot_inspect(inspect, out / ONE_IMAGE, overwrite=True,
                                  storage_options=storage_options))
    manifest.to_csv(out / "manifest.csv", index_label="sample")
    index = out / "index.html"
    index.write_text(_html(ds, stats, manifest, seed, inspect),
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


_SECTIONS = {"classes": "Classes", "patients": "Patients", "intensities": "Intensities",
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


def _h2(key: str) -> str:
    return f'<h2 id="{key}">{_SECTIONS[key]}</h2>'


def _figure_html(name: str, caption: str | None = None) -> str:
    caption = html.escape(caption or FIGURES[name])
    return (f'<figure><img src="{name}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _html(ds: XrayStore, stats: dict[str, Any], manifest: pd.DataFrame, seed: int,
          inspect: str | os.PathLike | None = None) -> str:
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
