"""Candidate near-duplicate pairs from the stored SimHash codes, never all N x N pairs.

The first step of the near-duplicate search (:mod:`.dups`): Charikar's sorted-neighbour
search (:func:`candidate_pairs`). Each code is sorted under several bit rotations (so that
codes sharing any block of leading bits become neighbours), each row is paired with its
next ``WIDTH`` neighbours, and pairs whose closest code differs in more than
``MAX_DISTANCE`` bits are dropped; each row keeps its ``PER_ROW`` closest candidates.
O(N log N) time and O(N) memory: a million rows take about a minute. Byte-identical files
(same SHA-256) are paired apart (:func:`exact_pairs`). The candidates are then scored by
:mod:`.dups_scoring`.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

#: Sorted neighbours per ordering, bit rotations per code, the largest distance (bits) of
#: the closest code, candidates verified per row.
WIDTH = 8
ROTATIONS = 8
MAX_DISTANCE = 20
PER_ROW = 4
#: Pending keys per row that trigger a reduction to each row's closest (fewer sorts than
#: once per ordering; more memory).
REDUCE_EVERY = 8


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
    x = sorted_unique(keys)  # by row a, closest first; a pair always has the same distance
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
    return sorted_unique(np.concatenate([by_a, back])), worst_a, worst_b


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


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` of integers by one sort (numpy 2.3's hash-based unique is ~20x slower
    on tens of millions of int64).

    Examples
    --------
    >>> sorted_unique(np.array([3, 1, 3, 2])).tolist()
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
