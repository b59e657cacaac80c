"""The report's figures: a store's classes, intensities and images, as matplotlib figures.

Needs the optional ``plot`` extra (matplotlib). Figures are drawn on matplotlib's Agg canvas
directly, without pyplot, so a figure drawn from a notebook never touches its backend. The
mean images come from a Dask reduction over the image chunks, the sample grid from 9 images;
:func:`plot_inspect` draws one source image beside its histogram.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import decode
from .sources.remote import source_options
from .store import XrayStore

DPI = 100
SPLIT_COLORS = {"train": "#2c5d8f", "val": "#f0a13a", "test": "#6aa84f", "none": "#888888"}
CLASS_COLORS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                "#666666"]
_PLOT_HINT = "pip install 'xraybatch[plot]'"


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


def plot_near_duplicates(store: XrayStore, pairs: pd.DataFrame, limit: int = 12):
    """Near-duplicate pairs side by side (rows ``a``, ``b``, their splits and ``score``), the
    first ``limit`` of them, each image titled with its split and file name."""
    pairs = pairs.head(limit)
    rows = np.unique(np.r_[pairs.a.to_numpy(), pairs.b.to_numpy()]).astype(np.int64)
    images = dict(zip(rows.tolist(), store.read_images(rows) if len(rows) else [],
                      strict=True))
    paths = store.paths
    fig = _figure(7, 3.2 * max(1, len(pairs)))
    axes = np.atleast_2d(fig.subplots(max(1, len(pairs)), 2))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_frame_on(False)
    for (left, right), row in zip(axes, pairs.itertuples(), strict=False):
        for ax, r, split in ((left, row.a, row.split_a), (right, row.b, row.split_b)):
            ax.imshow(images[int(r)], cmap="gray", vmin=0, vmax=255)
            ax.set_xlabel(f"{split} / {os.path.basename(paths[r])}", fontsize=8)
        left.set_title(f"score {row.score:.3f}", fontsize=10, loc="left")
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
