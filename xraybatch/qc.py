"""Quality-control flags, derived from what the store records about each image.

All flags are computed from the per-image histograms and source facts (no pixel is read
again), so they are the same whether asked for right after ingest or years later.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: Flag name -> what it means (the manifest has one boolean column ``qc_<name>`` per flag).
FLAGS: dict[str, str] = {
    "duplicate": "byte-identical to another file (same SHA-256); all copies are flagged",
    "rgb": "the source has colour channels (converted to grayscale)",
    "small": "the source is smaller than the target size on a side (upscaled)",
    "high_bitdepth": "the source has more than 8 bits per sample (scaled to 8 bits)",
    "format_mismatch": "the file extension does not match its content",
    "constant": "near-constant image (pixel std < 2)",
    "dark": "very dark image (mean < 20)",
    "bright": "very bright image (mean > 235)",
    "outlier": "mean or std far from its class (robust z-score > 3.5)",
    "damaged": "stored, but its JPEG entropy data is damaged (grey bands; see the message)",
}
_EXTENSIONS = {"jpeg": {".jpg", ".jpeg", ".jpe"}, "png": {".png"}, "bmp": {".bmp"},
               "tiff": {".tif", ".tiff"}, "webp": {".webp"}, "pgm": {".pgm", ".pbm"},
               "ppm": {".ppm"}}
ROBUST_Z = 3.5


def image_moments(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and (population) std from (N, 256) histograms; NaN for empty rows."""
    hist = np.asarray(hist, dtype=np.float64)
    values = np.arange(256, dtype=np.float64)
    n = hist.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = hist @ values / n
        var = hist @ values**2 / n - mean**2
    return mean, np.sqrt(np.clip(var, 0, None))


def robust_z(x: np.ndarray) -> np.ndarray:
    """|x - median| / (1.4826 MAD); 0 where the spread is 0.

    When more than half the values are equal the MAD is 0 although others may differ;
    the mean absolute deviation (scaled by 1.2533 to estimate sigma) then takes its place.

    Examples
    --------
    >>> robust_z(np.array([10.0, 10.0, 10.0, 10.0, 50.0])).round(2).tolist()
    [0.0, 0.0, 0.0, 0.0, 3.99]
    """
    dev = np.abs(x - np.median(x))
    spread = 1.4826 * np.median(dev)
    if spread == 0:
        spread = 1.2533 * dev.mean()
    return np.zeros_like(x) if spread == 0 else dev / spread


def add_flags(frame: pd.DataFrame, hist: np.ndarray | None, size: int,
              moments: tuple[np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """Add ``mean``, ``std``, ``duplicate_of``, ``qc_<flag>`` and ``qc_flags`` columns.

    ``moments`` (per-image mean and std, as :func:`image_moments` gives them) replaces
    ``hist``: a store keeps them, so QC never needs every histogram in memory.

    Examples
    --------
    >>> frame = pd.DataFrame({"path": ["a.jpeg", "b.jpeg"], "label": [0, 0],
    ...     "valid": [True, True], "sha256": ["x", "x"], "orig_height": [300, 300],
    ...     "orig_width": [300, 300], "orig_channels": [1, 3], "orig_bitdepth": [8, 8],
    ...     "orig_format": ["jpeg", "png"]})
    >>> hist = np.zeros((2, 256), int); hist[:, 128] = 65536
    >>> add_flags(frame, hist, 256).qc_flags.tolist()
    ['duplicate,constant', 'duplicate,rgb,format_mismatch,constant']
    """
    out = frame.copy()
    valid = out.valid.to_numpy(bool)
    mean, std = image_moments(hist) if moments is None else moments
    out["mean"], out["std"] = np.where(valid, mean, np.nan), np.where(valid, std, np.nan)

    out["duplicate_of"], copies = _duplicates(out.sha256.to_numpy(dtype=object))
    suffix = out.path.str.extract(r"(\.[^./]+)$", expand=False).str.lower()
    flags = {
        "duplicate": copies > 1,
        "rgb": out.orig_channels.to_numpy() >= 3,
        "small": valid & ((out.orig_height < size) | (out.orig_width < size)).to_numpy(),
        "high_bitdepth": out.orig_bitdepth.to_numpy() > 8,
        "format_mismatch": np.array([bool(f) and s not in _EXTENSIONS.get(f, {s})
                                     for f, s in zip(out.orig_format, suffix, strict=True)]),
        "constant": valid & (std < 2),
        "dark": valid & (mean < 20),
        "bright": valid & (mean > 235),
        "outlier": _class_outliers(out.label.to_numpy(), mean, std, valid),
        "damaged": (out.damaged.to_numpy(bool) if "damaged" in out
                    else np.zeros(len(out), bool)),
    }
    for name, flag in flags.items():
        out[f"qc_{name}"] = flag
    names = np.array(list(flags))
    table = np.column_stack(list(flags.values()))
    out["qc_flags"] = [",".join(names[row]) for row in table]
    return out


def _duplicates(sha256: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of each file's first byte-identical copy (-1 if it is the first or unhashed),
    and the number of copies of each file (0 if unhashed). Vectorised: no per-group loop."""
    codes, _ = pd.factorize(sha256)
    _, first, counts = np.unique(codes, return_index=True, return_counts=True)
    hashed = sha256 != ""
    rows = np.arange(len(sha256))
    duplicate_of = np.where(hashed & (first[codes] != rows), first[codes], -1)
    return duplicate_of.astype(int), np.where(hashed, counts[codes], 0)


def _class_outliers(labels: np.ndarray, mean: np.ndarray, std: np.ndarray,
                    valid: np.ndarray) -> np.ndarray:
    flag = np.zeros(len(labels), bool)
    for label in np.unique(labels[valid]):
        rows = np.flatnonzero(valid & (labels == label))
        if len(rows) >= 5:  # too few images give no meaningful spread
            flag[rows] = (robust_z(mean[rows]) > ROBUST_Z) | (robust_z(std[rows]) > ROBUST_Z)
    return flag
