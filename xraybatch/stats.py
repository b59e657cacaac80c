"""Exact statistics, reduced from the integer per-image histograms.

Every figure derives from sums of integer histograms, so it is identical whatever the
chunking or the scheduler. Percentiles and the median are the order statistics of the
pixels, interpolated exactly as ``numpy.percentile`` (method ``linear``) does.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import dask
import numpy as np
import pandas as pd

from . import patients

QUANTILES = {"p01": 1.0, "median": 50.0, "p99": 99.0}


def group_histograms(hist, group_ids: np.ndarray, n_groups: int) -> np.ndarray:
    """Sum per-image histograms by group: (N, 256) dask array -> (n_groups, 256) int64.

    Rows with a negative group id (invalid images) are left out. One task per chunk.

    Examples
    --------
    >>> import dask.array as da
    >>> h = da.from_array(np.ones((4, 256), np.int32), chunks=2)
    >>> group_histograms(h, np.array([0, 1, 1, -1]), 2)[:, 0].tolist()
    [1, 2]
    """
    hist = hist.rechunk({1: -1})  # one block per row chunk, whatever the bin chunking
    bounds = np.cumsum((0, *hist.chunks[0]))
    parts = [dask.delayed(_partial)(block, group_ids[a:b], n_groups)
             for block, a, b in zip(hist.to_delayed().ravel(), bounds[:-1], bounds[1:],
                                    strict=True)]
    return tree_sum(parts).compute() if parts else np.zeros((n_groups, 256), np.int64)


def tree_sum(parts: list, fan_in: int = 8):
    """Add delayed partial results in a tree: memory holds a few partials, not one per chunk.

    Examples
    --------
    >>> tree_sum([dask.delayed(i) for i in range(20)], fan_in=3).compute()
    190
    """
    while len(parts) > 1:
        parts = [dask.delayed(sum)(parts[i:i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def _partial(block: np.ndarray, ids: np.ndarray, n_groups: int) -> np.ndarray:
    out = np.zeros((n_groups, 256), np.int64)
    keep = ids >= 0
    np.add.at(out, ids[keep], block[keep].astype(np.int64))
    return out


def _order_stat(cum: np.ndarray, k: int) -> float:
    """k-th smallest pixel value (0-based) from a cumulative histogram."""
    return float(np.searchsorted(cum, k, side="right"))


def percentile(hist: np.ndarray, q: float) -> float:
    """``numpy.percentile(pixels, q)`` computed from the pixels' histogram.

    Examples
    --------
    >>> pixels = np.array([0, 3, 3, 7, 255], np.uint8)
    >>> h = np.bincount(pixels, minlength=256)
    >>> percentile(h, 30) == float(np.percentile(pixels, 30))
    True
    """
    cum = np.cumsum(hist)
    index = (q / 100) * (int(cum[-1]) - 1)
    lo = math.floor(index)
    a = _order_stat(cum, lo)
    b = _order_stat(cum, min(lo + 1, int(cum[-1]) - 1))
    t = index - lo
    diff = b - a
    return b - diff * (1 - t) if t >= 0.5 else a + diff * t  # numpy's _lerp


def summarize(hist: np.ndarray, images: int) -> dict[str, Any]:
    """Statistics of a group of pixels given their 256-bin histogram.

    Mean and std come from exact integer sums (population std, as ``numpy.std``).
    """
    hist = np.asarray(hist, dtype=np.int64)
    n = int(hist.sum())
    out: dict[str, Any] = {"images": int(images), "pixels": n}
    if n == 0:
        return out | dict.fromkeys(("min", "max", "mean", "std", *QUANTILES)) | {
            "hist": hist.tolist()}
    values = np.arange(256)
    s1 = int(hist @ values)
    s2 = int(hist @ values**2)
    nonzero = np.flatnonzero(hist)
    return out | {
        "min": int(nonzero[0]), "max": int(nonzero[-1]), "mean": s1 / n,
        "std": math.sqrt((n * s2 - s1 * s1) / (n * n)),
        **{name: percentile(hist, q) for name, q in QUANTILES.items()},
        "hist": hist.tolist(),
    }


def class_balance(counts: dict[str, int]) -> dict[str, Any]:
    """Imbalance ratio (largest/smallest class) and inverse-frequency class weights.

    Weights are ``n_total / (n_classes * n_class)`` (scikit-learn's "balanced"): a
    weighted loss then gives every class the same total weight.

    Examples
    --------
    >>> class_balance({"A": 30, "B": 10})
    {'imbalance_ratio': 3.0, 'class_weights': {'A': 0.6666666666666666, 'B': 2.0}}
    """
    present = {c: n for c, n in counts.items() if n > 0}
    total = sum(present.values())
    ratio = max(present.values()) / min(present.values()) if present else None
    weights = {c: total / (len(present) * n) for c, n in present.items()}
    return {"imbalance_ratio": ratio, "class_weights": weights}


#: Columns of a statistics table, in display order.
TABLE_COLUMNS = ["images", "pixels", "min", "max", "mean", "std", "median", "p01", "p99"]


def table(named: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Group name -> :func:`summarize` result, as a table with a ``group`` column.

    Examples
    --------
    >>> table({"all": summarize(np.bincount([3, 5], minlength=256), 1)})[["group", "max"]]
      group  max
    0   all    5
    """
    return pd.DataFrame([{"group": name, **{k: s[k] for k in TABLE_COLUMNS}}
                         for name, s in named.items()])


def _per_group(table: np.ndarray, counts: np.ndarray, classes: list[str],
               splits: list[str]) -> dict[str, Any]:
    """``per_class`` and ``per_split_class`` from (split, class, 256) sums and counts."""
    return {
        "per_class": {c: summarize(table[:, i].sum(0), counts[:, i].sum())
                      for i, c in enumerate(classes)},
        "per_split_class": {s: {c: summarize(table[j, i], counts[j, i])
                                for i, c in enumerate(classes)}
                            for j, s in enumerate(splits)},
    }


# --- partials: the sums behind the statistics, stored so that an append adds only its rows --


def assignment_token(labels: np.ndarray, split: np.ndarray, valid: np.ndarray,
                     findings: np.ndarray | None = None) -> str:
    """A hash of what puts each image in its group (label, split, validity, findings): stored
    sums over rows hold only while the same rows hash the same (``split`` rewrites them).

    Examples
    --------
    >>> t = assignment_token(np.array([0, 1]), np.array([0, 0]), np.array([True, True]))
    >>> t == assignment_token(np.array([0, 1]), np.array([0, 1]), np.array([True, True]))
    False
    """
    h = hashlib.sha256()
    for values, dtype in ((labels, np.int16), (split, np.int8), (valid, bool),
                          (findings, np.int8)):
        if values is not None:
            h.update(np.ascontiguousarray(values, dtype).tobytes())
    return h.hexdigest()


#: Sums of a multi-label store whose first axis is the split (the rest are per finding).
_BY_SPLIT = ("hist", "counts", "class_hist", "all_hist")


def _reduce(hist, findings, labels: np.ndarray, split: np.ndarray, valid: np.ndarray,
            n_class: int, n_split: int) -> Sums:
    """The integer sums of some rows: ``hist`` (and ``findings``, multi-label) dask arrays."""
    if findings is not None:
        return Sums(finding_sums(hist, findings, split, valid, n_split))
    ids = np.where(valid, split * n_class + labels, -1)
    table = group_histograms(hist, ids, n_split * n_class)
    counts = np.bincount(ids[ids >= 0], minlength=n_split * n_class).astype(np.int64)
    return Sums(hist=table.reshape(n_split, n_class, 256),
                counts=counts.reshape(n_split, n_class))


def _padded(sums: dict[str, np.ndarray], n_split: int, n_class: int, multi: bool) -> Sums:
    """Stored sums grown with zeros for splits (and classes) added since: no row had them."""
    out = Sums()
    for key, values in sums.items():
        pad = [(0, 0)] * values.ndim
        if key in _BY_SPLIT:
            pad[0] = (0, n_split - values.shape[0])
            if not multi and values.ndim >= 2:
                pad[1] = (0, n_class - values.shape[1])
        out[key] = np.pad(values.astype(np.int64), pad)
    return out


def sums_with(hist, findings, labels: np.ndarray, split: np.ndarray, valid: np.ndarray,
              classes: list[str], splits: list[str],
              stored: tuple[dict[str, Any], dict[str, np.ndarray]] | None,
              patient_ids: Callable[[int], np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                                  dict[str, Any]]:
    """The sums of every row (``len(labels)``) and their patient table
    (:func:`xraybatch.patients.table`), reusing ``stored`` partials for the rows they cover
    when those rows still hash to their token; and the metadata to store them with.

    ``hist`` and ``findings`` are zarr arrays (at least ``len(labels)`` rows);
    ``patient_ids(start)`` gives the patient of rows ``start:``. Only the histograms and
    patients of uncovered rows are read. Integer sums: the same values in any order.
    """
    import dask.array as da

    n, multi = len(labels), findings is not None
    f_all = findings[:n] if multi else None
    start, base, people = 0, None, None
    if stored is not None:
        meta, sums = stored
        rows = int(meta["rows"])
        if (rows <= n and bool(meta.get("multi")) == multi
                and set(patients.TABLE_KEYS) <= set(sums)
                and list(meta["classes"]) == classes[:len(meta["classes"])]
                and list(meta["splits"]) == splits[:len(meta["splits"])]
                and meta["token"] == assignment_token(labels[:rows], split[:rows], valid[:rows],
                                                      None if f_all is None else f_all[:rows])):
            start = rows
            base = _padded({k: v for k, v in sums.items() if k not in patients.TABLE_KEYS},
                           len(splits), len(classes), multi)
            people = {k: sums[k] for k in patients.TABLE_KEYS}
    labels, split = labels.astype(np.int64), split.astype(np.int64)
    rows_valid = valid[start:]
    new_people = patients.table(patient_ids(start)[rows_valid] if start < n
                                else np.zeros(0, object), split[start:][rows_valid],
                                np.zeros(int(rows_valid.sum()), np.int64) if multi
                                else labels[start:][rows_valid],
                                len(splits), 1 if multi else len(classes))
    people = new_people if people is None else patients.merge(people, new_people)
    chunks = (hist.chunks[0], 256)
    if base is not None and start == n:  # nothing to add: no graph to build and run
        return {**base, **people}, _meta(labels, split, valid, f_all, multi, classes, splits)
    rest = _reduce(da.from_zarr(hist, chunks=chunks)[start:n],
                   da.from_zarr(findings, chunks=(chunks[0], findings.shape[1]))[start:n]
                   if multi else None,
                   labels[start:], split[start:], valid[start:], len(classes), len(splits))
    return ({**(rest if base is None else base + rest), **people},
            _meta(labels, split, valid, f_all, multi, classes, splits))


def _meta(labels: np.ndarray, split: np.ndarray, valid: np.ndarray, findings: np.ndarray | None,
          multi: bool, classes: list[str], splits: list[str]) -> dict[str, Any]:
    """What stored partials are keyed by: the rows they cover and the assignment's token."""
    return {"rows": len(labels), "token": assignment_token(labels, split, valid, findings),
            "multi": multi, "classes": list(classes), "splits": list(splits)}


def _sums(store, labels: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """The sums of an :class:`~.store.XrayStore`: its partials plus the rows they miss."""
    return sums_with(store.array("hist"),
                     store.array("findings") if store.multilabel else None,
                     labels, store.split, valid, store.classes, store.splits,
                     store.stats_partials(), store.patient_ids)[0]


def compute(store) -> dict[str, Any]:
    """Global, per-class and per split x class statistics of an :class:`~.store.XrayStore`,
    and its patients (:func:`xraybatch.patients.summarize`).

    The histogram sums come from the store's partials when they still hold (the histograms
    of rows they do not cover are read: an append's), else from every histogram."""
    if store.multilabel:
        return compute_multilabel(store)
    classes, splits = store.classes, store.splits
    labels, valid = store.labels, store.valid
    sums = _sums(store, labels, valid)
    table, counts = sums["hist"], sums["counts"]
    class_counts = {c: int(counts[:, i].sum()) for i, c in enumerate(classes)}
    return {
        "images": len(labels), "valid": int(valid.sum()), "failed": int((~valid).sum()),
        "complete": store.complete,
        "global": summarize(table.sum(axis=(0, 1)), counts.sum()),
        **_per_group(table, counts, classes, splits),
        "class_counts": class_counts,
        **class_balance(class_counts),
        # Valid images only: a file that was not stored cannot leak.
        "patients": patients.summary_of(sums, int(valid.sum()), splits, classes),
    }


#: Values of a multi-label store's findings matrix, as counted in ``finding_counts``.
FINDING_STATES = {1: "positive", 0: "negative", -1: "uncertain", -2: "not_stated"}


def finding_sums(hist, findings, split: np.ndarray, valid: np.ndarray,
                 n_splits: int) -> dict[str, np.ndarray]:
    """Sums of a multi-label store, one task per chunk: an image counts under every finding
    it is positive for.

    ``hist`` (N, 256) and ``findings`` (N, C) are dask arrays with the same row chunks;
    ``split`` and ``valid`` are numpy. Returns ``class_hist`` (S, C, 256), ``all_hist``
    (S, 256), ``counts`` (S, C) positives, ``cooccurrence`` (C, C) and ``states`` (C, 4),
    the valid images in each of :data:`FINDING_STATES` (all int64, valid images only).

    Examples
    --------
    >>> import dask.array as da
    >>> h = da.from_array(np.eye(3, 256, dtype=np.int32), chunks=2)
    >>> f = da.from_array(np.array([[1, 1], [0, 1], [-1, -2]], np.int8), chunks=(2, 2))
    >>> out = finding_sums(h, f, np.zeros(3, int), np.ones(3, bool), 1)
    >>> out["counts"].tolist(), out["cooccurrence"].tolist()
    ([[1, 2]], [[1, 1], [1, 2]])
    """
    hist = hist.rechunk({1: -1})
    findings = findings.rechunk({0: hist.chunks[0], 1: -1})
    bounds = np.cumsum((0, *hist.chunks[0]))
    parts = [dask.delayed(_finding_partial)(h, f, split[a:b], valid[a:b], n_splits)
             for h, f, a, b in zip(hist.to_delayed().ravel(), findings.to_delayed().ravel(),
                                   bounds[:-1], bounds[1:], strict=True)]
    if parts:
        return tree_sum(parts).compute()
    n_class = findings.shape[1]
    return {"class_hist": np.zeros((n_splits, n_class, 256), np.int64),
            "all_hist": np.zeros((n_splits, 256), np.int64),
            "counts": np.zeros((n_splits, n_class), np.int64),
            "cooccurrence": np.zeros((n_class, n_class), np.int64),
            "states": np.zeros((n_class, len(FINDING_STATES)), np.int64)}


class Sums(dict):
    """A dict of arrays that adds key by key (so that ``sum`` of partials works)."""

    def __add__(self, other):
        return Sums({k: v + other[k] for k, v in self.items()})

    def __radd__(self, other):
        return self if other == 0 else self + other


def _finding_partial(block: np.ndarray, findings: np.ndarray, split: np.ndarray,
                     valid: np.ndarray, n_splits: int) -> dict[str, np.ndarray]:
    block = block.astype(np.int64)
    positive = ((findings == 1) & valid[:, None]).astype(np.int64)
    by_split = [split == s for s in range(n_splits)]
    return Sums({
        "class_hist": np.stack([positive[rows].T @ block[rows] for rows in by_split]),
        "all_hist": np.stack([block[rows & valid].sum(axis=0) for rows in by_split]),
        "counts": np.stack([positive[rows].sum(axis=0) for rows in by_split]),
        "cooccurrence": positive.T @ positive,
        "states": np.stack([((findings == v) & valid[:, None]).sum(axis=0)
                            for v in FINDING_STATES], axis=1),
    })


def compute_multilabel(store) -> dict[str, Any]:
    """:func:`compute` for a multi-label store: per finding, every image under each of its
    positive findings; with ``finding_counts`` (positive, negative, uncertain, not stated
    per finding), the ``cooccurrence`` matrix and BCE ``pos_weight`` (negatives/positives)."""
    classes, splits, valid = store.classes, store.splits, store.valid
    sums = _sums(store, store.labels, valid)
    table, counts = sums["class_hist"], sums["counts"]
    class_counts = {c: int(counts[:, i].sum()) for i, c in enumerate(classes)}
    n_valid = int(valid.sum())
    return {
        "images": len(valid), "valid": n_valid, "failed": int((~valid).sum()),
        "complete": store.complete, "label_kind": "multi",
        "global": summarize(sums["all_hist"].sum(axis=0), n_valid),
        **_per_group(table, counts, classes, splits),
        "class_counts": class_counts,
        "finding_counts": {c: dict(zip(FINDING_STATES.values(), map(int, sums["states"][i]),
                                       strict=True)) for i, c in enumerate(classes)},
        "cooccurrence": {"findings": list(classes),
                         "matrix": sums["cooccurrence"].tolist()},
        "pos_weight": {c: (n_valid - n) / n for c, n in class_counts.items() if n},
        **class_balance(class_counts),
        # Patients per split and leakage; per class is left out (an image has several).
        "patients": patients.summary_of(sums, n_valid, splits, []),
    }
