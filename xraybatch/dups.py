"""Near-duplicate search over stored content fingerprints (:mod:`xraybatch.fingerprint`).

Two steps, neither of which compares all N x N pairs:

1. **Candidates** (:func:`candidate_pairs`): Charikar's sorted-neighbour search on the
   SimHash codes. Each code is sorted under several bit rotations (so that codes sharing
   any block of leading bits become neighbours), each row is paired with its next
   ``WIDTH`` neighbours, and pairs whose closest code differs in more than
   ``MAX_DISTANCE`` bits are dropped; each row keeps its ``PER_ROW`` closest candidates.
   O(N log N) time and O(N) memory: a million rows take about a minute.
2. **Prefilter** (:func:`prefilter`): each candidate row's spectrum descriptor
   (:func:`xraybatch.fingerprint.spectrum_descriptors`, one Dask task per block of
   contiguous rows, which reads whole chunks of thumbnails), then one cheap score per pair,
   thousands of pairs at once: the pairs below ``fingerprint.PREFILTER`` (nearly all pairs
   of different films, no planted copy of the benchmark) are not aligned.
3. **Verification** (:func:`verify`): each remaining pair's thumbnails are aligned and
   scored (:func:`xraybatch.fingerprint.align_scores`), one Dask task per block of pairs, on
   the same schedulers as ingest; the thumbnails are read first by tasks over blocks of
   sorted rows (a cluster's workers read them from the store). The scores are align_score's
   own: the prefilter only decides which pairs are scored.

Byte-identical files (same SHA-256) are always pairs (score 1.0). Verified pairs scoring at
least ``FLOOR`` are kept in the store (:func:`xraybatch.store.write_pairs`) with the rows they
cover, so that ``stats`` does not search again and, after an append, only the new rows are
searched against all.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import fingerprint
from .store import StoreError, StoreRef, XrayStore, write_pairs

#: Default score threshold, chosen on real X-rays (benchmarks/README.md, "Near-duplicates"):
#: planted altered copies of the Kermany sample scored >= 0.71, different films <= 0.58.
DEFAULT_THRESHOLD = 0.65
#: Lowest score kept in the store: thresholds from FLOOR to 1 are answered from it. Below,
#: the verification stops early and its score is only an upper bound of the truth. Only
#: pairs past the prefilter (fingerprint.PREFILTER, set for copies) are scored at all.
FLOOR = fingerprint._HOPELESS
#: Candidate search: sorted neighbours per ordering, bit rotations per code, the largest
#: distance (bits) of the closest code, candidates verified per row.
WIDTH = 8
ROTATIONS = 8
MAX_DISTANCE = 20
PER_ROW = 4
#: Candidate search: pending keys per row that trigger a reduction to each row's closest
#: (fewer sorts than once per ordering; more memory).
REDUCE_EVERY = 8
#: Candidate pairs per verification task.
BLOCK = 2048
#: Rows per prefilter-descriptor task, and pairs per prefilter step.
DESCRIBE_ROWS = 16384
SCORE_PAIRS = 65536


def _search_key(rows: int) -> dict[str, Any]:
    """What a kept set of pairs was computed with (they are reused only if all of it holds)."""
    return {"rows": int(rows), "fingerprint_version": fingerprint.VERSION, "floor": FLOOR,
            "search": [WIDTH, ROTATIONS, MAX_DISTANCE, PER_ROW],
            "prefilter": fingerprint.PREFILTER}


def _popcount(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def code_distance(codes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits by which the closest code of rows ``a`` and ``b`` differ.

    Examples
    --------
    >>> codes = np.array([[0b1011, 0], [0b0001, 7]], np.uint64)
    >>> code_distance(codes, np.array([0]), np.array([1])).tolist()
    [2]
    """
    return _popcount(codes[a] ^ codes[b]).min(axis=1).astype(np.int64)


def _rotate(x: np.ndarray, bits: int) -> np.ndarray:
    if bits == 0:
        return x
    return (x << np.uint64(bits)) | (x >> np.uint64(64 - bits))


def candidate_pairs(codes: np.ndarray, rows: np.ndarray | None = None, *,
                    new_from: int = 0, group: np.ndarray | None = None,
                    width: int = WIDTH, rotations: int = ROTATIONS,
                    max_distance: int = MAX_DISTANCE, per_row: int = PER_ROW) -> np.ndarray:
    """Candidate near-duplicate pairs of the rows of ``codes`` ((N, C) uint64 SimHash codes).

    Parameters
    ----------
    rows
        The rows to search (default all; invalid images are left out by the caller).
    new_from
        Only pairs with at least one row >= ``new_from`` (rows appended since the last search).
    group
        Only pairs whose rows are in different groups (e.g. the store of each row).

    Returns
    -------
    numpy.ndarray
        (P, 2) int64 pairs ``a < b``, sorted, each at most once.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> codes = rng.integers(0, 2**63, (1000, 3), dtype=np.uint64)
    >>> codes[500] = codes[7] ^ np.uint64(0b101)  # a near copy of row 7
    >>> [7, 500] in candidate_pairs(codes).tolist()
    True
    """
    rows = np.arange(len(codes)) if rows is None else np.asarray(rows, np.int64)
    n = len(codes)
    # (a * 128 + distance) * n + b of each row's closest candidates so far: sorting these
    # keys groups the pairs by row a, closest first (distances of 64-bit codes are < 128).
    kept = np.zeros(0, np.int64)
    # The per_row-th closest distance of each row as a and as b so far: a new pair that is
    # farther than both can no longer be kept (128: the row has fewer candidates).
    worst_a, worst_b = np.full(n, 128), np.full(n, 128)
    step = 64 // rotations
    found, pending = [kept], 0
    orderings = list(itertools.product(range(codes.shape[1]), range(rotations)))
    for i, (k, r) in enumerate(orderings):
        order = rows[np.argsort(_rotate(codes[rows, k], r * step))]
        for j in range(1, width + 1):
            a, b = np.minimum(order[:-j], order[j:]), np.maximum(order[:-j], order[j:])
            keep = b >= new_from
            if group is not None:
                keep &= group[a] != group[b]
            a, b = a[keep], b[keep]
            # This code's distance filters; the closest code's distance ranks.
            near = _popcount(codes[a, k] ^ codes[b, k]) <= max_distance
            a, b = a[near], b[near]
            d = code_distance(codes, a, b)
            useful = (d <= worst_a[a]) | (d <= worst_b[b])
            found.append((a[useful] * 128 + d[useful]) * n + b[useful])
            pending += len(found[-1])
        # Reduced once REDUCE_EVERY keys per row are pending (and at the end): memory holds
        # O(rows x (per_row + REDUCE_EVERY)). A pair left out of a reduction is never among
        # the closest later (the sets only grow), so the result does not depend on when.
        if pending > REDUCE_EVERY * len(rows) or i == len(orderings) - 1:
            kept, worst_a, worst_b = _closest(np.concatenate(found), n, per_row)
            found, pending = [kept], 0
    pairs = np.column_stack([kept // n // 128, kept % n]).astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _closest(keys: np.ndarray, n: int, per_row: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The keys (see :func:`candidate_pairs`), each pair once, of the pairs among the
    ``per_row`` closest of either of their rows; and each row's ``per_row``-th closest
    distance as a and as b (128 if it has fewer pairs)."""
    x = _sorted_unique(keys)  # by row a, closest first; a pair always has the same distance
    rank = _run_rank(x // n // 128)
    by_a = x[rank < per_row]
    worst_a = np.full(n, 128)
    last = x[rank == per_row - 1]
    worst_a[last // n // 128] = last // n % 128
    y = np.sort((x % n * 128 + x // n % 128) * n + x // n // 128)  # the same by row b
    rank = _run_rank(y // n // 128)
    by_b = y[rank < per_row]
    worst_b = np.full(n, 128)
    last = y[rank == per_row - 1]
    worst_b[last // n // 128] = last // n % 128
    back = (by_b % n * 128 + by_b // n % 128) * n + by_b // n // 128
    return _sorted_unique(np.concatenate([by_a, back])), worst_a, worst_b


def _run_rank(sorted_rows: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal values.

    Examples
    --------
    >>> _run_rank(np.array([3, 3, 5, 7, 7, 7])).tolist()
    [0, 1, 0, 0, 1, 2]
    """
    if not len(sorted_rows):
        return np.zeros(0, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_rows)) + 1]
    return np.arange(len(sorted_rows)) - np.repeat(starts, np.diff(np.r_[starts,
                                                                         len(sorted_rows)]))


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` of integers by one sort (numpy 2.3's hash-based unique is ~20x slower
    on tens of millions of int64).

    Examples
    --------
    >>> _sorted_unique(np.array([3, 1, 3, 2])).tolist()
    [1, 2, 3]
    """
    x = np.sort(x)
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


def exact_pairs(sha256: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(P, 2) pairs (first copy, other copy) of byte-identical valid files.

    Examples
    --------
    >>> exact_pairs(np.array(["x", "y", "x", "x"]), np.ones(4, bool)).tolist()
    [[0, 2], [0, 3]]
    """
    rows = np.flatnonzero(valid & (sha256 != ""))
    codes, _ = pd.factorize(sha256[rows])
    _, first = np.unique(codes, return_index=True)
    heads = rows[first[codes]]
    other = heads != rows
    return np.column_stack([heads[other], rows[other]]).astype(np.int64)


# --- verification, as Dask tasks ---------------------------------------------------------


@dataclass(frozen=True)
class _Sources:
    """The stores whose rows are numbered one after another (offsets: first global row)."""

    refs: tuple[StoreRef, ...]
    offsets: tuple[int, ...]


def _thumbs(sources: _Sources, rows: np.ndarray) -> np.ndarray:
    """Thumbnails of global ``rows`` (sorted, unique), read from their stores (opened by each
    task: a few ms against seconds of verification, and never a stale store)."""
    out = np.zeros((len(rows), fingerprint.THUMB, fingerprint.THUMB), np.uint8)
    which = np.searchsorted(np.asarray(sources.offsets), rows, side="right") - 1
    for s in np.unique(which):
        ref = sources.refs[s]
        ds = XrayStore(ref.url, ref.storage_options)
        here = which == s
        out[here] = ds.fingerprint_thumbs(rows[here] - sources.offsets[s])
    return out


def _score_block(thumbs: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """The Dask task: align_score of each pair of rows of ``thumbs``."""
    import cv2

    cv2.setNumThreads(1)  # Dask runs one task per core
    return fingerprint.align_scores(thumbs[pairs[:, 0]], thumbs[pairs[:, 1]])


def _by_rows(sources: _Sources, rows: np.ndarray, task: Any, name: str, scheduler: Any,
             workers: int | None) -> np.ndarray:
    """``task(sources, part)`` for each block of ``DESCRIBE_ROWS`` of the sorted ``rows``,
    concatenated: each task reads its rows' chunks of ``fp_thumb`` once (a block of pairs
    would read a chunk for nearly every pair's second row)."""
    from dask.delayed import Delayed

    from .ingest import compute

    token = hashlib.sha256(repr(sources).encode() + rows.tobytes()).hexdigest()[:24]
    tasks = []
    for i, start in enumerate(range(0, len(rows), DESCRIBE_ROWS)):
        key = f"xraybatch-{name}-{i:06d}-{token}"
        tasks.append(Delayed(key, {key: (task, sources, rows[start:start + DESCRIBE_ROWS])}))
    return np.concatenate(compute(tasks, scheduler, workers))


def _describe_block(sources: _Sources, rows: np.ndarray) -> np.ndarray:
    """The Dask task: read the thumbnails of ``rows`` (sorted, mostly contiguous), return
    their spectrum descriptors."""
    import cv2

    cv2.setNumThreads(1)  # Dask runs one task per core
    return fingerprint.spectrum_descriptors(_thumbs(sources, rows))


def prefilter(sources: _Sources, pairs: np.ndarray, scheduler: Any = "threads",
              workers: int | None = None) -> np.ndarray:
    """Which pairs are worth aligning: bool per pair, ``spectrum_scores >= PREFILTER``.

    The descriptors of the pairs' rows are Dask tasks over blocks of ``DESCRIBE_ROWS``
    sorted rows (whole chunks of ``fp_thumb`` read once, whichever scheduler); the scores,
    a few dot products per pair, are computed here, ``SCORE_PAIRS`` pairs at a time
    (float32 descriptors: 1.2 KB per row, 1.2 GB for a million rows).
    """
    if not len(pairs):
        return np.zeros(0, bool)
    rows = _sorted_unique(pairs.ravel())
    described = _by_rows(sources, rows, _describe_block, "describe", scheduler, workers)
    return prefilter_keep(described, np.searchsorted(rows, pairs), workers)


def prefilter_keep(described: np.ndarray, pairs: np.ndarray, workers: int | None = None
                   ) -> np.ndarray:
    """bool per pair of rows of ``described`` (:func:`xraybatch.fingerprint.
    spectrum_descriptors`): ``spectrum_scores >= PREFILTER``, ``SCORE_PAIRS`` pairs at a time
    on ``workers`` threads (numpy releases the GIL).

    Examples
    --------
    >>> d = fingerprint.spectrum_descriptors(np.random.default_rng(0).integers(
    ...     0, 256, (3, 64, 64), np.uint8))
    >>> prefilter_keep(d, np.array([[0, 0], [0, 1]])).tolist()
    [True, False]
    """
    from concurrent.futures import ThreadPoolExecutor

    def keep(start: int) -> np.ndarray:
        block = pairs[start:start + SCORE_PAIRS]
        return fingerprint.spectrum_scores(described[block[:, 0]], described[block[:, 1]]
                                           ) >= fingerprint.PREFILTER

    if not len(pairs):
        return np.zeros(0, bool)
    with ThreadPoolExecutor(max(1, workers or os.cpu_count() or 1)) as pool:
        return np.concatenate(list(pool.map(keep, range(0, len(pairs), SCORE_PAIRS))))


def verify(sources: _Sources, pairs: np.ndarray, scheduler: Any = "threads",
           workers: int | None = None) -> np.ndarray:
    """align_score of every pair, on a local scheduler or a client: the pairs' thumbnails
    are read by tasks over blocks of sorted rows (:func:`_by_rows`), then aligned by one task
    per ``BLOCK`` pairs, each given the thumbnails of its own rows (4 KB each)."""
    from dask.delayed import Delayed

    from .ingest import compute

    if not len(pairs):
        return np.zeros(0)
    rows = _sorted_unique(pairs.ravel())
    thumbs = _by_rows(sources, rows, _thumbs, "thumbs", scheduler, workers)
    index = np.searchsorted(rows, pairs)
    token = hashlib.sha256(repr(sources).encode() + pairs.tobytes()).hexdigest()[:24]
    tasks = []
    for i, start in enumerate(range(0, len(pairs), BLOCK)):
        block = index[start:start + BLOCK]
        mine = _sorted_unique(block.ravel())
        key = f"xraybatch-dups-{i:06d}-{token}"
        local = np.searchsorted(mine, block)
        tasks.append(Delayed(key, {key: (_score_block, thumbs[mine], local)}))
    return np.concatenate(compute(tasks, scheduler, workers))


# --- one store ---------------------------------------------------------------------------


def searchable(ds: XrayStore) -> bool:
    """Whether the store holds fingerprints this version compares (stats and the report
    leave the near-duplicates out otherwise)."""
    return ds.has_fingerprints and ds.fingerprint_version == fingerprint.VERSION


def check_store(ds: XrayStore) -> None:
    """Refuse stores that cannot be searched, in one line."""
    if not ds.complete:
        raise StoreError(f"{ds.ref.url} is INCOMPLETE: finish it with 'xraybatch ingest SRC "
                         f"{ds.ref.url} --resume' first")
    if not ds.has_fingerprints:
        raise StoreError(f"{ds.ref.url} has no content fingerprints (written by an older "
                         "xraybatch): ingest it again with --overwrite")
    if ds.fingerprint_version != fingerprint.VERSION:
        raise StoreError(f"{ds.ref.url} has fingerprints of version {ds.fingerprint_version}, "
                         f"this xraybatch compares version {fingerprint.VERSION}: ingest it "
                         "again with --overwrite")


def _search(ds: XrayStore, new_from: int, scheduler: Any, workers: int | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Verified pairs (score >= FLOOR) with a row >= ``new_from``, and their scores."""
    valid = ds.valid
    candidates = candidate_pairs(ds.fingerprint_codes(), np.flatnonzero(valid),
                                 new_from=new_from)
    exact = exact_pairs(ds.sha256, valid)
    exact = exact[exact[:, 1] >= new_from]
    sources = _Sources((ds.ref,), (0,))
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
    check_store(ds)
    n = len(ds)
    stored = ds.stored_pairs()
    key = _search_key(n)
    same = stored is not None and {k: v for k, v in stored[0].items() if k != "rows"} == {
        k: v for k, v in key.items() if k != "rows"}
    if same and stored[0]["rows"] == n:
        pairs, scores = stored[1], stored[2]
    else:
        old = int(stored[0]["rows"]) if same and stored[0]["rows"] < n else 0
        pairs, scores = _search(ds, old, scheduler, workers)
        if old:
            pairs = np.concatenate([stored[1], pairs])
            scores = np.concatenate([stored[2], scores])
        if keep:
            write_pairs(ds.ref, pairs, scores, key)
    frame = pd.DataFrame({"a": pairs[:, 0].astype(np.int64), "b": pairs[:, 1].astype(np.int64),
                          "score": scores.astype(np.float64)})
    return frame[frame.score >= threshold].reset_index(drop=True)


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
    pairs = near_duplicate_pairs(ds, threshold, **kwargs)
    joined = np.concatenate([pairs[["a", "b"]].to_numpy(np.int64),
                             exact_pairs(ds.sha256, np.ones(len(ds), bool))])
    return components(len(ds), joined).astype(np.int64)


def summarize(ds: XrayStore, threshold: float | None = None, **kwargs: Any
              ) -> dict[str, Any]:
    """Counts for ``stats``: pairs, groups (of two rows or more), rows in them, pairs across
    splits, and the threshold."""
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
    for ds in stores:
        check_store(ds)
    parts = []
    for i, ds in enumerate(stores):
        pairs = near_duplicate_pairs(ds, threshold, scheduler=scheduler, workers=workers,
                                     keep=keep)
        parts.append(pd.DataFrame({"store_a": i, "a": pairs.a, "store_b": i, "b": pairs.b,
                                   "score": pairs.score}))
    if len(stores) > 1:
        parts.append(_across(stores, threshold, scheduler, workers))
    found = pd.concat(parts, ignore_index=True)
    return _describe_pairs(stores, found)


def _across(stores: list[XrayStore], threshold: float, scheduler: Any,
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
    sources = _Sources(tuple(ds.ref for ds in stores), tuple(int(o) for o in offsets[:-1]))
    candidates = candidates[prefilter(sources, candidates, scheduler, workers)]
    scores = np.concatenate([verify(sources, candidates, scheduler, workers),
                             np.ones(len(exact))])
    pairs, scores = _best(np.concatenate([candidates, exact]), scores, len(codes))
    keep = scores >= threshold
    pairs, scores = pairs[keep], scores[keep]
    return pd.DataFrame({"store_a": store_of[pairs[:, 0]], "a": pairs[:, 0] - offsets[
        store_of[pairs[:, 0]]], "store_b": store_of[pairs[:, 1]],
        "b": pairs[:, 1] - offsets[store_of[pairs[:, 1]]], "score": scores})


def _describe_pairs(stores: list[XrayStore], found: pd.DataFrame) -> pd.DataFrame:
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
