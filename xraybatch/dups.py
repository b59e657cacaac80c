"""Near-duplicate search over stored content fingerprints (:mod:`xraybatch.fingerprint`).

The store-level API and its reporting, on three steps, none of which compares all N x N
pairs:

1. **Candidates** (:mod:`.dups_candidates`): a sorted-neighbour search on the SimHash codes.
2. **Prefilter** (:func:`.dups_scoring.prefilter`): a cheap spectrum score per candidate
   pair decides which pairs are aligned.
3. **Verification** (:func:`.dups_scoring.verify`): the remaining pairs' thumbnails are
   aligned and scored, as Dask tasks on the same schedulers as ingest.

Byte-identical files (same SHA-256) are always pairs (score 1.0). Verified pairs scoring at
least ``FLOOR`` are kept in the store (:func:`xraybatch.store.write_pairs`) with the rows they
cover, so that ``stats`` does not search again and, after an append, only the new rows are
searched against all. Several stores are searched within each and across every two of them
(:func:`find`); the pairs give groups (:func:`duplicate_groups`) and ``stats``' counts.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from . import fingerprint
from .dups_candidates import MAX_DISTANCE, PER_ROW, ROTATIONS, WIDTH, candidate_pairs, exact_pairs
from .dups_scoring import Sources, prefilter, verify
from .store import StoreError, XrayStore, write_pairs

#: Default score threshold, chosen on real X-rays (benchmarks/README.md, "Near-duplicates"):
#: planted altered copies of the Kermany sample scored >= 0.71, different films <= 0.58.
DEFAULT_THRESHOLD = 0.65
#: Lowest score kept in the store: thresholds from FLOOR to 1 are answered from it. Below,
#: the verification stops early and its score is only an upper bound of the truth. Only
#: pairs past the prefilter (fingerprint.PREFILTER, set for copies) are scored at all.
FLOOR = fingerprint._HOPELESS


def _search_key(rows: int) -> dict[str, Any]:
    """What a kept set of pairs was computed with (they are reused only if all of it holds)."""
    return {"rows": int(rows), "fingerprint_version": fingerprint.VERSION, "floor": FLOOR,
            "search": [WIDTH, ROTATIONS, MAX_DISTANCE, PER_ROW],
            "prefilter": fingerprint.PREFILTER}


# --- one store ---------------------------------------------------------------------------


def _once(prop: property) -> cached_property:
    """An :class:`XrayStore` property, computed on first use and then kept."""
    return cached_property(prop.fget)


class ReadOnce(XrayStore):
    """An open store whose arrays are read at most once: the first read is kept.

    One command of the near-duplicate stage needs ``valid``, ``sha256``, ``split``,
    ``paths`` and the SimHash codes at several steps (search, groups, description, output);
    each step is given this view (:func:`read_once`) and reads them from it. It shares the
    store's opened group and attributes: nothing is opened again. The thumbnails are read
    by the scoring tasks from the store itself (:mod:`.dups_scoring`).

    Examples
    --------
    >>> view = read_once(xraybatch.open("xray.zarr"))  # doctest: +SKIP
    >>> view.sha256 is view.sha256  # doctest: +SKIP
    True
    """

    valid = _once(XrayStore.valid)
    sha256 = _once(XrayStore.sha256)
    split = _once(XrayStore.split)
    paths = _once(XrayStore.paths)
    has_fingerprints = _once(XrayStore.has_fingerprints)
    fingerprint_version = _once(XrayStore.fingerprint_version)
    _codes = cached_property(XrayStore.fingerprint_codes)

    def __init__(self, ds: XrayStore) -> None:  # no XrayStore.__init__: it opens the store
        self.__dict__.update(vars(ds))

    def fingerprint_codes(self) -> np.ndarray:
        """(N, codes) uint64 SimHash codes of every row (0 where invalid), read once."""
        return self._codes


def read_once(ds: XrayStore) -> ReadOnce:
    """``ds`` as a :class:`ReadOnce` view (itself if it is one already)."""
    return ds if isinstance(ds, ReadOnce) else ReadOnce(ds)


def searchable(ds: XrayStore) -> bool:
    """Whether the store holds fingerprints this version compares (stats and the report
    leave the near-duplicates out otherwise)."""
    return ds.fingerprint_version == fingerprint.VERSION  # None without fingerprints


def check_store(ds: XrayStore) -> None:
    """Refuse stores that cannot be searched, in one line."""
    if not ds.complete:
        raise StoreError(f"{ds.ref.url} is INCOMPLETE: finish it with 'xraybatch ingest SRC "
                         f"{ds.ref.url} --resume' first")
    version = ds.fingerprint_version
    if version is None:
        raise StoreError(f"{ds.ref.url} has no content fingerprints (written by an older "
                         "xraybatch): ingest it again with --overwrite")
    if version != fingerprint.VERSION:
        raise StoreError(f"{ds.ref.url} has fingerprints of version {version}, "
                         f"this xraybatch compares version {fingerprint.VERSION}: ingest it "
                         "again with --overwrite")


def _search(ds: ReadOnce, new_from: int, scheduler: Any, workers: int | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Verified pairs (score >= FLOOR) with a row >= ``new_from``, and their scores."""
    valid = ds.valid
    candidates = candidate_pairs(ds.fingerprint_codes(), np.flatnonzero(valid),
                                 new_from=new_from)
    exact = exact_pairs(ds.sha256, valid)
    exact = exact[exact[:, 1] >= new_from]
    sources = Sources((ds.ref,), (0,))
    candidates = candidates[prefilter(sources, candidates, scheduler, workers)]
    scores = verify(sources, candidates, scheduler, workers)
    pairs = np.concatenate([candidates, exact])
    scores = np.concatenate([scores, np.ones(len(exact))])
    return _best(pairs, scores, len(ds))


def _best(pairs: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs scoring >= FLOOR, each once (its best score), sorted."""
    keep = scores >= FLOOR
    pairs, scores = pairs[keep], scores[keep]
    order = np.lexsort((-scores, pairs[:, 1], pairs[:, 0]))
    pairs, scores = pairs[order], scores[order]
    _, first = np.unique(pairs[:, 0] * n + pairs[:, 1], return_index=True)
    return pairs[first].reshape(-1, 2), scores[first]


def near_duplicate_pairs(ds: XrayStore, threshold: float | None = None, *,
                         scheduler: Any = "threads", workers: int | None = None,
                         keep: bool = True) -> pd.DataFrame:
    """Verified near-duplicate pairs of a store: columns ``a``, ``b`` (rows, a < b), ``score``.

    Pairs kept in the store by an earlier search of the same rows are read back; after an
    append only the new rows are searched (against all), and the union is kept again
    (``keep=False``: nothing is written). ``threshold`` (default ``DEFAULT_THRESHOLD``) is
    the lowest score reported, between ``FLOOR`` and 1.

    Examples
    --------
    >>> pairs = near_duplicate_pairs(xraybatch.open("xray.zarr"))  # doctest: +SKIP
    >>> pairs.head(2)  # doctest: +SKIP
         a    b     score
    0   12  803  0.981235
    1  140  141  1.000000
    """
    threshold = threshold_or_default(threshold)
    ds = read_once(ds)
    check_store(ds)
    return _pairs_of(ds, threshold, scheduler, workers, keep)


def _pairs_of(ds: ReadOnce, threshold: float, scheduler: Any, workers: int | None,
              keep: bool) -> pd.DataFrame:
    """:func:`near_duplicate_pairs` of a checked store."""
    pairs, scores = _kept_or_searched(ds, scheduler, workers, keep)
    frame = pd.DataFrame({"a": pairs[:, 0].astype(np.int64), "b": pairs[:, 1].astype(np.int64),
                          "score": scores.astype(np.float64)})
    return frame[frame.score >= threshold].reset_index(drop=True)


def _kept_or_searched(ds: ReadOnce, scheduler: Any, workers: int | None, keep: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The pairs kept in the store for all its rows, else searched (the rows appended since
    the kept pairs only) and, with ``keep``, kept."""
    n = len(ds)
    stored = ds.stored_pairs()
    key = _search_key(n)
    same = stored is not None and {k: v for k, v in stored[0].items() if k != "rows"} == {
        k: v for k, v in key.items() if k != "rows"}
    if same and stored[0]["rows"] == n:
        return stored[1], stored[2]
    old = int(stored[0]["rows"]) if same and stored[0]["rows"] < n else 0
    pairs, scores = _search(ds, old, scheduler, workers)
    if old:
        pairs = np.concatenate([stored[1], pairs])
        scores = np.concatenate([stored[2], scores])
    if keep:
        write_pairs(ds.ref, pairs, scores, key)
    return pairs, scores


def threshold_or_default(threshold: float | None) -> float:
    """``threshold``, or ``DEFAULT_THRESHOLD`` for None; refused outside ``FLOOR``-1.

    Examples
    --------
    >>> threshold_or_default(None), threshold_or_default(0.8)
    (0.65, 0.8)
    """
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if not FLOOR <= threshold <= 1:
        raise ValueError(f"threshold must be between {FLOOR} and 1, got {threshold}")
    return threshold


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of ``n`` rows joined by ``pairs``: each row's smallest row.

    The one union-find of the package: near-duplicate groups here, and the groups of
    ``xraybatch split`` (:func:`xraybatch.splits.components`, whose partitions become pairs).
    Vectorised (numpy only): every row takes the smallest label of its pairs, then the
    label of that label (pointer jumping), until nothing changes: O(log n) rounds.

    Examples
    --------
    >>> components(6, np.array([[0, 3], [3, 5], [1, 2]])).tolist()
    [0, 1, 1, 0, 4, 0]
    """
    label = np.arange(n)
    if not len(pairs):
        return label
    a, b = pairs[:, 0], pairs[:, 1]
    while True:  # min-label propagation with pointer jumping: O(log n) rounds
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        while True:
            jumped = label[label]
            if (jumped == label).all():
                break
            label = jumped
        if (label == before).all():
            return label


def duplicate_groups(ds: XrayStore, threshold: float | None = None, **kwargs: Any
                     ) -> np.ndarray:
    """int64 group id per row: rows joined by verified near-duplicate pairs or identical
    SHA-256 share an id (the smallest row of the group); every other row its own.

    Examples
    --------
    >>> ids = duplicate_groups(xraybatch.open("xray.zarr"))  # doctest: +SKIP
    """
    ds = read_once(ds)
    pairs = near_duplicate_pairs(ds, threshold, **kwargs)
    joined = np.concatenate([pairs[["a", "b"]].to_numpy(np.int64),
                             exact_pairs(ds.sha256, np.ones(len(ds), bool))])
    return components(len(ds), joined).astype(np.int64)


def summarize(ds: XrayStore, threshold: float | None = None, **kwargs: Any
              ) -> dict[str, Any]:
    """Counts for ``stats``: pairs, groups (of two rows or more), rows in them, pairs across
    splits, and the threshold."""
    ds = read_once(ds)
    pairs = near_duplicate_pairs(ds, threshold, **kwargs)
    split = ds.split
    a, b = pairs.a.to_numpy(), pairs.b.to_numpy()
    label = components(len(ds), np.column_stack([a, b]))
    sizes = np.bincount(label, minlength=len(ds))
    return {"threshold": threshold_or_default(threshold), "pairs": len(pairs),
            "groups": int((sizes > 1).sum()), "images_in_groups": int(sizes[sizes > 1].sum()),
            "cross_split": int((split[a] != split[b]).sum())}


def describe(summary: dict[str, Any]) -> str:
    """One line of text for ``stats``."""
    line = (f"near-duplicates (score >= {summary['threshold']:.2f}): {summary['pairs']} pairs "
            f"in {summary['groups']} groups ({summary['images_in_groups']} images)")
    if summary["cross_split"]:
        return line + f"; LEAKAGE: {summary['cross_split']} pairs across splits"
    return line + "; none across splits"


# --- several stores ----------------------------------------------------------------------


def find(stores: list[XrayStore], threshold: float | None = None, *,
         scheduler: Any = "threads", workers: int | None = None,
         keep: bool = True) -> pd.DataFrame:
    """Near-duplicate pairs within each store and across every two of them.

    Within a store the pairs are :func:`near_duplicate_pairs`; across stores the stored
    fingerprints of all of them are searched together (no image is read again).

    Returns
    -------
    pandas.DataFrame
        ``store_a``, ``a``, ``path_a``, ``split_a``, ``store_b``, ``b``, ``path_b``,
        ``split_b``, ``score``, ``cross_split`` (the images are in different splits, or in
        different stores), ``exact`` (same SHA-256); cross-split pairs first, then by score.
    """
    threshold = threshold_or_default(threshold)
    stores = [read_once(ds) for ds in stores]
    for ds in stores:
        check_store(ds)
    parts = []
    for i, ds in enumerate(stores):
        pairs = _pairs_of(ds, threshold, scheduler, workers, keep)
        parts.append(pd.DataFrame({"store_a": i, "a": pairs.a, "store_b": i, "b": pairs.b,
                                   "score": pairs.score}))
    if len(stores) > 1:
        parts.append(_across(stores, threshold, scheduler, workers))
    found = pd.concat(parts, ignore_index=True)
    return _describe_pairs(stores, found)


def _across(stores: list[ReadOnce], threshold: float, scheduler: Any,
            workers: int | None) -> pd.DataFrame:
    """Pairs whose rows are in two different stores."""
    offsets = np.cumsum([0] + [len(ds) for ds in stores])
    codes = np.concatenate([ds.fingerprint_codes() for ds in stores])
    valid = np.concatenate([ds.valid for ds in stores])
    store_of = np.repeat(np.arange(len(stores)), np.diff(offsets))
    candidates = candidate_pairs(codes, np.flatnonzero(valid), group=store_of)
    sha = np.concatenate([ds.sha256 for ds in stores])
    exact = exact_pairs(sha, valid)
    exact = exact[store_of[exact[:, 0]] != store_of[exact[:, 1]]]
    sources = Sources(tuple(ds.ref for ds in stores), tuple(int(o) for o in offsets[:-1]))
    candidates = candidates[prefilter(sources, candidates, scheduler, workers)]
    scores = np.concatenate([verify(sources, candidates, scheduler, workers),
                             np.ones(len(exact))])
    pairs, scores = _best(np.concatenate([candidates, exact]), scores, len(codes))
    keep = scores >= threshold
    pairs, scores = pairs[keep], scores[keep]
    return pd.DataFrame({"store_a": store_of[pairs[:, 0]], "a": pairs[:, 0] - offsets[
        store_of[pairs[:, 0]]], "store_b": store_of[pairs[:, 1]],
        "b": pairs[:, 1] - offsets[store_of[pairs[:, 1]]], "score": scores})


def _describe_pairs(stores: list[ReadOnce], found: pd.DataFrame) -> pd.DataFrame:
    """Add paths, splits, cross_split and exact; cross-split pairs first, then by score."""
    paths = [ds.paths for ds in stores]
    splits = [np.asarray(ds.splits, dtype=object)[ds.split] for ds in stores]
    sha = [ds.sha256 for ds in stores]

    def column(values: list[np.ndarray], store: pd.Series, row: pd.Series) -> np.ndarray:
        return np.array([values[s][r] for s, r in zip(store, row, strict=True)], dtype=object)

    out = found.assign(
        path_a=column(paths, found.store_a, found.a), path_b=column(paths, found.store_b, found.b),
        split_a=column(splits, found.store_a, found.a),
        split_b=column(splits, found.store_b, found.b))
    out["cross_split"] = (out.split_a != out.split_b) | (out.store_a != out.store_b)
    out["exact"] = column(sha, found.store_a, found.a) == column(sha, found.store_b, found.b)
    out = out.sort_values(["cross_split", "score", "store_a", "a", "store_b", "b"],
                          ascending=[False, False, True, True, True, True])
    return out.reset_index(drop=True)[
        ["store_a", "a", "path_a", "split_a", "store_b", "b", "path_b", "split_b", "score",
         "cross_split", "exact"]]


def groups_of(found: pd.DataFrame) -> list[list[tuple[int, int]]]:
    """The groups (union of pairs) of :func:`find`'s pairs: lists of (store, row), largest
    first."""
    if found.empty:
        return []
    nodes = pd.concat([found[["store_a", "a"]].set_axis(["s", "r"], axis=1),
                       found[["store_b", "b"]].set_axis(["s", "r"], axis=1)])
    nodes = nodes.drop_duplicates().sort_values(["s", "r"]).reset_index(drop=True)
    index = {(int(s), int(r)): i for i, (s, r) in enumerate(zip(nodes.s, nodes.r, strict=True))}
    pairs = np.array([[index[(int(sa), int(a))], index[(int(sb), int(b))]] for sa, a, sb, b in
                      zip(found.store_a, found.a, found.store_b, found.b, strict=True)])
    label = components(len(nodes), pairs)
    groups: dict[int, list[tuple[int, int]]] = {}
    for i, g in enumerate(label):
        groups.setdefault(int(g), []).append((int(nodes.s[i]), int(nodes.r[i])))
    return sorted(groups.values(), key=lambda g: (-len(g), g))


def store_name(ds: XrayStore) -> str:
    """A store's name in the output: its path or URL as given."""
    return ds.ref.url.rstrip("/").rsplit("/", 1)[-1] if "://" in ds.ref.url else os.fspath(
        ds.ref.url)
