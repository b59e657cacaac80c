"""Leak-free split assignments: ``xraybatch split``.

Images that must never be on both sides of a split form a group: the connected components of
"same patient" and "same content" (near-duplicate groups of :mod:`xraybatch.dups`). An image
without a patient id is its own group unless content joins it. Whole groups are dealt to
train/val/test, so no group straddles splits; only the ``split`` array and attributes are
rewritten (:func:`xraybatch.store.write_split`), never the pixels.

Dealing is vectorised (a million rows in seconds). Groups large against the smallest split
are placed first, one by one, where they leave the split sizes (and, stratified, the class
shares) closest to their targets. Most other groups are placed by a cut of their stratum (the
groups with the same set of classes, in a random order) at the fractions the stratum still
needs, rotated at random per stratum, so each stratum is split in the ratios up to one group
per cut. A random reserve of groups (all of them in a small store) is then placed one by one
like the largest, which absorbs the cuts' rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from . import lock, store
from .dups import components as pair_components
from .dups import duplicate_groups
from .store import StoreError, XrayStore
from .store.versions import refuse_if_appending

#: What ``--by`` may join groups on.
BY_CHOICES = ("patient", "content")
#: Split names of ``--ratios`` with three values and with two (train/test).
RATIO_NAMES = {3: ("train", "val", "test"), 2: ("train", "test")}
DEFAULT_RATIOS = "0.8,0.1,0.1"
#: Large groups placed one by one, largest first, before the rest is cut by stratum ...
GREEDY_GROUPS = 10_000
#: ... and groups kept back from the cut and placed one by one last, to absorb its rounding.
RESERVE_GROUPS = 10_000


# --- parsing --------------------------------------------------------------------------------


def parse_by(text: str | None) -> tuple[str, ...]:
    """``--by`` as a tuple of :data:`BY_CHOICES`.

    Examples
    --------
    >>> parse_by("patient,content"), parse_by("content")
    (('patient', 'content'), ('content',))
    >>> parse_by("file")
    Traceback (most recent call last):
    ...
    ValueError: --by 'file': choose patient, content or patient,content
    """
    parts = tuple(dict.fromkeys(p.strip() for p in (text or "").split(",") if p.strip()))
    if not parts or set(parts) - set(BY_CHOICES):
        raise ValueError(f"--by {text!r}: choose patient, content or patient,content")
    return parts


def parse_ratios(text: str) -> dict[str, float]:
    """``--ratios``: three values are train/val/test, two are train/test; they sum to 1.

    Examples
    --------
    >>> parse_ratios("0.8,0.1,0.1")
    {'train': 0.8, 'val': 0.1, 'test': 0.1}
    >>> parse_ratios("0.7, 0.3")
    {'train': 0.7, 'test': 0.3}
    >>> parse_ratios("0.8,0.3")
    Traceback (most recent call last):
    ...
    ValueError: --ratios '0.8,0.3' sum to 1.1, not 1
    """
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in RATIO_NAMES or not all(0 <= v <= 1 for v in values):
        raise ValueError(f"--ratios {text!r}: give train,val,test or train,test as fractions "
                         "between 0 and 1, e.g. 0.8,0.1,0.1")
    if abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"--ratios {text!r} sum to {sum(values):.6g}, not 1")
    return dict(zip(RATIO_NAMES[len(values)], values, strict=True))


# --- groups ---------------------------------------------------------------------------------


def patient_partition(ids: np.ndarray) -> np.ndarray:
    """Group code per row: rows of one patient id share one; "" (no id) is a group alone.

    Examples
    --------
    >>> patient_partition(np.array(["p1", "", "p2", "p1", ""], dtype=object)).tolist()
    [0, 3, 2, 0, 4]
    """
    codes = pd.factorize(ids)[0].astype(np.int64)
    alone = np.flatnonzero(ids == "")
    codes[alone] = codes.max(initial=-1) + 1 + np.arange(len(alone))
    return codes


def components(*partitions: np.ndarray) -> np.ndarray:
    """The union of partitions of the same rows: rows that share a group in any of them,
    directly or through other rows, get one id (0, 1, ... in order of first row).

    Each group joins its rows to its first row (:func:`partition_pairs`); the components
    of these pairs are :func:`xraybatch.dups.components`.

    Examples
    --------
    >>> components(np.array([0, 0, 1, 2, 3]), np.array([5, 6, 6, 7, 7])).tolist()
    [0, 0, 0, 1, 1]
    """
    n = len(partitions[0])
    pairs = np.concatenate([partition_pairs(codes) for codes in partitions])
    lowest = pair_components(n, pairs)  # each row's smallest row: ids in order of first row
    return np.unique(lowest, return_inverse=True)[1].astype(np.int64)


def partition_pairs(codes: np.ndarray) -> np.ndarray:
    """(P, 2) int64 pairs (first row of the group, other row) of a partition's groups.

    Examples
    --------
    >>> partition_pairs(np.array([7, 5, 7, 7, 5])).tolist()
    [[1, 4], [0, 2], [0, 3]]
    """
    order = np.argsort(codes, kind="stable")
    ordered = codes[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]] if len(codes) else np.zeros(0, bool)
    head = order[np.flatnonzero(first)][np.cumsum(first) - 1]
    other = head != order
    return np.column_stack([head[other], order[other]]).astype(np.int64)


def content_groups(ds: XrayStore, threshold: float | None = None) -> np.ndarray:
    """Near-duplicate group per row (:func:`xraybatch.dups.duplicate_groups`).

    Examples
    --------
    >>> content_groups(xraybatch.open("xray.zarr"))[:4]  # doctest: +SKIP
    array([0, 1, 1, 2])
    """
    return duplicate_groups(ds, threshold)


def groups_of(ds: XrayStore, by: tuple[str, ...], threshold: float | None = None
              ) -> np.ndarray:
    """The group of every row of ``ds`` joined on ``by`` (see :func:`components`).

    Examples
    --------
    >>> groups_of(xraybatch.open("xray.zarr"), ("patient", "content"))  # doctest: +SKIP
    array([0, 0, 1, ..., 4021])
    """
    partitions = []
    if "patient" in by:
        partitions.append(patient_partition(ds.patient_ids()))
    if "content" in by:
        partitions.append(content_groups(ds, threshold))
    return components(*partitions)


# --- dealing groups to splits ---------------------------------------------------------------


def deal(groups: np.ndarray, ratios: np.ndarray, rng: np.random.Generator,
         members: np.ndarray | None = None) -> np.ndarray:
    """Split index (into ``ratios``) of each group ``0 .. groups.max()``.

    ``groups`` is the group of each row, ``ratios`` the target fraction of rows per split;
    ``members`` (rows x classes, bool) stratifies: each class is split in the ratios as
    closely as the groups allow.

    Examples
    --------
    >>> rows = np.repeat(np.arange(100), 2)   # 100 groups of 2 rows
    >>> where = deal(rows, np.array([0.8, 0.2]), np.random.default_rng(0))
    >>> np.bincount(where).tolist()
    [80, 20]
    """
    size = np.bincount(groups).astype(np.float64)
    count = np.ones((len(size), 0))
    if members is not None:
        count = np.stack([np.bincount(groups, weights=members[:, c], minlength=len(size))
                          for c in range(members.shape[1])], axis=1)
    where = np.full(len(size), -1, np.int64)
    order = rng.permutation(len(size))
    order = order[np.argsort(-size[order], kind="stable")]  # largest first, ties at random
    big = min(int((size >= _big(size.sum(), ratios)).sum()), GREEDY_GROUPS)
    _place_one_by_one(order[:big], size, count, ratios, where)
    rest = order[big:]
    kept_back = np.zeros(len(rest), bool)
    kept_back[rng.choice(len(rest), min(RESERVE_GROUPS, len(rest)), replace=False)] = True
    cut = rest[~kept_back]
    _cut(cut[rng.permutation(len(cut))], size, _strata(count > 0), ratios, where, rng)
    _place_one_by_one(rest[kept_back], size, count, ratios, where)  # still largest first
    return where


def _big(rows: float, ratios: np.ndarray) -> float:
    """Size from which a group is placed on its own: 0.5% of the smallest split's target
    (smaller groups miss a cut by a negligible share), and at least 2 rows.

    Examples
    --------
    >>> _big(10_000, np.array([0.5, 0.25, 0.25])), _big(100, np.array([0.5, 0.5]))
    (12.5, 2.0)
    """
    return max(2.0, 0.005 * rows * float(ratios[ratios > 0].min()))


def _place_one_by_one(placed: np.ndarray, size: np.ndarray, count: np.ndarray,
                      ratios: np.ndarray, where: np.ndarray) -> None:
    """Each group in turn to the split where it adds least to the squared misses of the
    split's size against its target and of its class counts against the class shares of
    the whole, per row of the split's target."""
    target = ratios * size.sum()
    share = count.sum(axis=0) / max(size.sum(), 1)
    # Divided by the target (not its square): splits then fill in proportion to their targets.
    scale = np.where(ratios > 0, 1 / np.maximum(target, 1), np.inf)
    done = np.flatnonzero(where >= 0)  # groups placed before
    filled = np.bincount(where[done], weights=size[done], minlength=len(ratios))
    excess = np.zeros((len(ratios), count.shape[1]))  # class count - share x split size
    np.add.at(excess, where[done], count[done] - share * size[done, None])
    for g in placed:
        w = size[g]
        step = count[g] - share * w
        miss = filled - target
        cost = (w * (2 * miss + w) + ((2 * excess + step) * step).sum(axis=1)) * scale
        s = int(np.argmin(cost))
        where[g] = s
        filled[s] += w
        excess[s] += step


def _strata(present: np.ndarray) -> np.ndarray:
    """Stratum of each group: the set of classes it holds (one stratum if unstratified)."""
    if present.shape[1] == 0:
        return np.zeros(len(present), np.int64)
    if present.shape[1] < 63:
        keys = present @ (np.int64(1) << np.arange(present.shape[1], dtype=np.int64))
        return np.unique(keys, return_inverse=True)[1].astype(np.int64)
    return np.unique(present, axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _cut(rest: np.ndarray, size: np.ndarray, strata: np.ndarray, ratios: np.ndarray,
         where: np.ndarray, rng: np.random.Generator) -> None:
    """Place the groups ``rest`` (in random order): per stratum, the position of a group's
    middle row, rotated at random, falls in one split's share of what the stratum still
    needs after the largest groups (``where >= 0``) were placed."""
    if not len(rest):
        return
    n_strata = int(strata.max()) + 1
    dealt = np.flatnonzero(where >= 0)
    total = (np.bincount(strata[dealt], weights=size[dealt], minlength=n_strata)
             + np.bincount(strata[rest], weights=size[rest], minlength=n_strata))
    taken = np.zeros((n_strata, len(ratios)))
    np.add.at(taken, (strata[dealt], where[dealt]), size[dealt])
    want = np.clip(ratios * total[:, None] - taken, 0, None)
    want[want.sum(axis=1) == 0] = ratios
    edges = np.cumsum(want / want.sum(axis=1, keepdims=True), axis=1)
    rest = rest[np.argsort(strata[rest], kind="stable")]  # by stratum, shuffled within
    k, w = strata[rest], size[rest]
    end = np.cumsum(w)
    first = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    before = np.repeat((end - w)[first], np.diff(np.r_[first, len(k)]))
    mass = np.bincount(k, weights=w, minlength=n_strata)
    position = ((end - w / 2 - before) / mass[k] + rng.random(n_strata)[k]) % 1
    split = (position[:, None] >= edges[k]).sum(axis=1)
    where[rest] = np.minimum(split, np.flatnonzero(ratios > 0)[-1])  # rounding at the top


# --- the command ----------------------------------------------------------------------------


@dataclass
class SplitResult:
    """What :func:`split` or :func:`restore` wrote (or, for a dry run, would write).

    ``values`` holds the split index of every row into ``splits`` (the store's names,
    extended by new ones), ``groups`` the group of every row (None for a restore).
    """

    out: str
    values: np.ndarray
    splits: list[str]
    assignment: dict[str, Any]
    groups: np.ndarray | None
    class_counts: pd.DataFrame
    written: bool
    version: int | None = None

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object: the assignment and, per split, images, groups, classes."""
        per_split = {}
        for i, name in enumerate(self.splits):
            rows = self.values == i
            per_split[name] = {
                "images": int(rows.sum()),
                **({"groups": int(len(np.unique(self.groups[rows])))}
                   if self.groups is not None else {}),
                "classes": {c: int(n) for c, n in self.class_counts.loc[name].items()}}
        return {"store": self.out, "written": self.written, "version": self.version,
                "assignment": self.assignment, "per_split": per_split}


def split(out: str, by: tuple[str, ...] | str, ratios: dict[str, float] | str = DEFAULT_RATIOS,
          *, stratify: bool = False, seed: int = 0, keep: str | None = None,
          threshold: float | None = None, dry_run: bool = False,
          storage_options: dict | None = None) -> SplitResult:
    """Write a new split assignment of the store ``out`` in which no group straddles splits.

    Parameters
    ----------
    out
        A complete store (a path or an fsspec URL).
    by
        ``"patient"``, ``"content"`` or both (a tuple or ``"patient,content"``): what joins
        images into groups (:func:`groups_of`).
    ratios
        Target fraction of images per split: ``{"train": .8, "val": .1, "test": .1}`` or
        the ``--ratios`` text (three values train/val/test, two train/test).
    stratify
        Split each class (multi-label: each set of positive findings) in the ratios.
    seed
        The same seed gives the same assignment of the same store.
    keep
        A split of the store whose images stay where they are (``"test"``: an official test
        set); images grouped with them join it, the others are dealt to the other splits in
        the proportions of their ratios.
    threshold
        Near-duplicate threshold for ``by`` content (:func:`xraybatch.dups.duplicate_groups`).
    dry_run
        Compute and report only.

    Examples
    --------
    >>> result = split("xray.zarr", "patient", "0.8,0.1,0.1", stratify=True)  # doctest: +SKIP
    >>> result.summary()["per_split"]["test"]["images"]  # doctest: +SKIP
    """
    by = parse_by(by if isinstance(by, str) else ",".join(by))
    if not isinstance(ratios, str):
        if tuple(ratios) not in RATIO_NAMES.values():
            raise ValueError(f"ratios {ratios}: name train, val, test or train, test")
        ratios = ",".join(str(v) for v in ratios.values())
    ratios = parse_ratios(ratios)
    ds = _open_for_split(out, storage_options, dry_run)
    fractions = np.array([0.0 if s == keep else r for s, r in ratios.items()])
    if keep is not None and ds.attrs.get("split_pending"):
        raise StoreError(f"--keep {keep}: the split of {out} is half rewritten by an "
                         "interrupted split, so which images are in it is not known: put the "
                         f"scan's back first with 'xraybatch split {out} --restore'")
    if keep is not None and keep not in ds.splits:
        raise ValueError(f"--keep {keep}: the store has no split {keep} "
                         f"(it has {', '.join(ds.splits)})")
    if fractions.sum() == 0:
        raise ValueError(f"--ratios {','.join(map(str, ratios.values()))} leave nothing for "
                         f"the images outside {keep}")
    groups = groups_of(ds, by, threshold)
    names = list(ds.splits) + [s for s in ratios if s not in ds.splits]
    values = np.full(len(ds), -1, np.int8)
    free = np.ones(len(ds), bool) if keep is None else _kept(ds, groups, keep, values)
    members = ds.class_membership(valid_only=False)  # a file's class, stored or not
    if free.any():
        local = np.unique(groups[free], return_inverse=True)[1]
        where = deal(local, fractions / fractions.sum(), np.random.default_rng(seed),
                     members[free] if stratify else None)
        values[free] = np.array([names.index(s) for s in ratios], np.int8)[where[local]]
    _check_no_straddle(groups, values)
    assignment = {
        "method": "stratified" if stratify else "random", "by": list(by), "ratios": ratios,
        "stratify": stratify, "seed": seed, "keep": keep, "threshold": threshold,
        "when": store.utc_now(), "groups": int(groups.max()) + 1,
        "counts": _counts(values, names)}
    if keep is not None:  # rows of the kept split, and rows that joined it with their group
        kept = int((ds.split == ds.splits.index(keep)).sum())
        assignment |= {"kept": kept, "joined": int((~free).sum()) - kept}
    source = (f"xraybatch split --by {','.join(by)} --ratios "
              f"{','.join(f'{r:g}' for r in ratios.values())}"
              + (" --stratify" if stratify else "") + f" --seed {seed}"
              + (f" --keep {keep}" if keep else ""))
    return _finish(ds, values, names, assignment, groups, members, source, dry_run)


def restore(out: str, *, dry_run: bool = False,
            storage_options: dict | None = None) -> SplitResult:
    """Put the scan's split assignment (``split_original``) back as the active one.

    Examples
    --------
    >>> restore("xray.zarr").assignment["method"]  # doctest: +SKIP
    'scan'
    """
    ds = _open_for_split(out, storage_options, dry_run)
    values = ds.original_split
    assignment = {"method": "scan", "when": store.utc_now(), "counts": _counts(values, ds.splits)}
    return _finish(ds, values, ds.splits, assignment, None,
                   ds.class_membership(valid_only=False),
                   "xraybatch split --restore", dry_run)


def _open_for_split(out: str, storage_options: dict | None, dry_run: bool) -> XrayStore:
    """The store, refused in one line before any work if a split could not be written."""
    ds = XrayStore(out, storage_options)
    lock.refuse_if_busy(ds.ref)
    if not ds.complete:
        raise StoreError(f"{out} is INCOMPLETE (an interrupted ingest): finish it with "
                         f"'xraybatch ingest SRC {out} --resume' before splitting it")
    if not dry_run:
        _refuse_format_1(ds)
        refuse_if_appending(ds.ref.url, ds.attrs)
    return ds


def _refuse_format_1(ds: XrayStore) -> None:
    """A split records a version and a history entry, which format-1 stores do not have
    (they came with format 2): it would leave a version 2 without a version 1."""
    version = store.format_version(ds.attrs)
    if version < 2:
        raise StoreError(f"cannot split {ds.ref.url}: it is a format-{version} store "
                         f"(xraybatch {ds.attrs.get('xraybatch_version')}), without the "
                         "versions and history a split records; ingest it anew once with "
                         "--overwrite")


def _refuse_if_changed(ds: XrayStore) -> None:
    """Under the writer lock: refuse if an append (or another split) committed, or an
    append began, since ``ds`` was opened; the assignment computed is of the rows read then.
    """
    now = dict(ds.ref.open("r").attrs)
    refuse_if_appending(ds.ref.url, now)
    if [now.get(k) for k in ("version", "n_images")] != [ds.attrs.get(k)
                                                        for k in ("version", "n_images")]:
        raise StoreError(f"{ds.ref.url} changed while the split was computed (version "
                         f"{ds.attrs.get('version')} -> {now.get('version')}, "
                         f"{ds.attrs.get('n_images')} -> {now.get('n_images')} images: an "
                         "append or another split finished meanwhile); run the split again")


def _kept(ds: XrayStore, groups: np.ndarray, keep: str, values: np.ndarray) -> np.ndarray:
    """Fix the rows of split ``keep`` and of every group that touches them to ``keep``;
    the rows left free."""
    index = ds.splits.index(keep)
    kept = ds.split == index
    if not kept.any():
        raise ValueError(f"--keep {keep}: the store's split {keep} holds no image")
    joined = np.isin(groups, np.unique(groups[kept]))
    values[joined] = index
    return ~joined


def _check_no_straddle(groups: np.ndarray, values: np.ndarray) -> None:
    """Guard: every group in exactly one split (dealing guarantees it)."""
    low = np.full(groups.max() + 1, 127, np.int8)
    high = np.full(groups.max() + 1, -1, np.int8)
    np.minimum.at(low, groups, values)
    np.maximum.at(high, groups, values)
    if (low != high).any() or (values < 0).any():
        raise RuntimeError("internal error: a group would straddle splits")


def _counts(values: np.ndarray, names: list[str]) -> dict[str, int]:
    return dict(zip(names, map(int, np.bincount(values, minlength=len(names))), strict=True))


def _finish(ds: XrayStore, values: np.ndarray, names: list[str], assignment: dict[str, Any],
            groups: np.ndarray | None, members: np.ndarray, source: str,
            dry_run: bool) -> SplitResult:
    """Write the assignment (under the writer lock) unless a dry run; the result."""
    version = None
    if not dry_run:
        entry = {"action": "split", "source": source, "rows": [0, len(ds)]}
        with lock.locked(ds.ref):
            _refuse_if_changed(ds)
            version = store.write_split(ds.ref, values, names, assignment, entry)
    counts = pd.DataFrame(np.stack([members[values == i].sum(axis=0)
                                    for i in range(len(names))]),
                          index=names, columns=ds.classes)
    return SplitResult(ds.ref.url, values, names, assignment, groups, counts,
                       written=not dry_run, version=version)
