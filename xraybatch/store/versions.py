"""Versions of the store: the first commit, history, appends, statistics partials, split
assignments, kept pairs, and what the scan and the chunk tasks wrote."""

from __future__ import annotations

import asyncio
import hashlib
import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr import AsyncGroup
from zarr.core.sync import sync
from zarr.errors import ZarrUserWarning

from .. import __version__, zarrio
from ..location import StoreError, StoreRef
from ..lock import locked
from .layout import APPEND_PENDING, PARTIALS, _split_flags, n_chunks, utc_now

#: Attribute naming the statistics partials of the committed rows.
PARTIALS_ATTR = "stats_partials"


def mark_complete(group: zarr.Group, summary: dict[str, Any],
                  entry: dict[str, Any] | None = None, extra: dict[str, Any] | None = None
                  ) -> None:
    """Written last, with the consolidated metadata, in one write of the root ``zarr.json``:
    from now on the store reads as complete.

    ``entry`` (format 2) is its history entry (:func:`history_attrs`); ``extra`` more
    attributes (:func:`write_partials`' reference to the statistics partials).
    """
    attrs = {"summary": summary, "complete": True, "completed": utc_now(), **(extra or {})}
    if entry is not None and "history" in group.attrs and not group.attrs.get("version"):
        attrs |= history_attrs(dict(group.attrs), entry)  # (a --resume of a complete store
        # completes it again: still version 1)
    zarrio.consolidate(group, attrs)


def history_attrs(attrs: dict[str, Any], entry: dict[str, Any]) -> dict[str, Any]:
    """The ``version`` and ``history`` attributes once ``entry`` is recorded (not written).

    ``entry`` gives ``action`` ("ingest", "append", "split"), ``source`` and ``rows``
    ``[start, stop]``; the time, the next version and the package version are filled in.

    Examples
    --------
    >>> out = history_attrs({"version": 1, "history": [{}]}, {"action": "append",
    ...                     "source": "/data", "rows": [10, 12]})
    >>> out["version"], out["history"][-1]["version"], len(out["history"])
    (2, 2, 2)
    """
    version = int(attrs.get("version", 1)) + 1  # (a store without it is at version 1)
    full = {"action": entry.get("action"), "when": utc_now(), "source": entry.get("source"),
            "rows": list(entry.get("rows", [])), **entry, "version": version,
            "xraybatch_version": __version__}
    return {"version": version, "history": [*attrs.get("history", []), full]}


def sample_arrays(group: zarr.Group) -> list[str]:
    """Every array with one row per image (first dimension ``sample``): what an append grows.
    """
    with warnings.catch_warnings():  # (a listing also meets the lock file: known)
        warnings.simplefilter("ignore", ZarrUserWarning)
        return [name for name, array in group.arrays()
                if (array.metadata.dimension_names or (None,))[0] == "sample"]


def begin_append(group: zarr.Group, pending: dict[str, Any]) -> None:
    """Record the append in progress; the consolidated metadata (what readers see) is kept."""
    group.update_attributes({APPEND_PENDING: pending})


def grow(group: zarr.Group, committed: zarr.Group, n_new: int, classes: list[str],
         splits: list[str], discard: bool) -> None:
    """Give every per-image array ``n_new`` rows in its own metadata (readers of the
    consolidated metadata still see the ``committed`` group's rows), and the class and split
    lists; every array in one trip through zarr's event loop.

    ``discard``: first cut every array back to its committed shape, which deletes the chunks
    an abandoned append wrote beyond it (zarr's resize removes chunks outside the shape).
    ``group`` is opened with :func:`open_pending`.
    """
    old = {name: committed[name].shape for name in [*sample_arrays(committed), "chunk_done"]}
    shapes = {name: (n_new, *shape[1:]) for name, shape in old.items()}
    shapes["chunk_done"] = (n_chunks(n_new, int(committed.attrs["chunk"])),)
    flags = {"labels": dict(flag_values=list(range(len(classes))),
                            flag_meanings=" ".join(c.replace(" ", "_") for c in classes)),
             **{name: dict(flag_values=list(range(len(splits))), flag_meanings=" ".join(splits))
                for name in ("split", "split_original")}}

    async def resize(name: str) -> None:
        array = await group._async_group.getitem(name)
        if discard and array.shape != old[name]:
            await array.resize(old[name])
            array = await group._async_group.getitem(name)
        if array.shape != shapes[name]:  # (growing deletes nothing)
            await array.resize(shapes[name], delete_outside_chunks=False)
        if name in flags:
            await (await group._async_group.getitem(name)).update_attributes(flags[name])

    async def run() -> None:
        await asyncio.gather(*(resize(name) for name in shapes))

    sync(run())


def write_rows(group: zarr.Group, start: int, values: dict[str, np.ndarray]) -> None:
    """Write rows ``start:`` of the arrays in ``values`` (zarr reads and rewrites a partly
    filled chunk whole; each file write is atomic, and the rows before ``start`` keep their
    values, so a reader of the previous version reads the same rows from either file).

    ``split_original`` (written at creation) follows ``split`` when the store has it.
    """
    if "split_original" in group and "split" in values:
        values = {"split_original": values["split"], **values}

    async def put(name: str, v: np.ndarray) -> None:
        array = zarrio.whole_chunks(await group._async_group.getitem(name))
        await array.setitem(slice(start, start + len(v)), v)

    async def run() -> None:
        await asyncio.gather(*(put(name, v) for name, v in values.items()))

    sync(run())


def held_files(group: zarr.Group, n: int) -> pd.DataFrame:
    """``path`` and ``file_bytes`` of the first ``n`` (committed) rows."""
    return pd.DataFrame({"path": group["path"][:n], "file_bytes": group["file_bytes"][:n]})


def keep_rows(group: zarr.Group, start: int, keep: int, images: np.ndarray, hist: np.ndarray,
              records: dict[str, np.ndarray]
              ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The stored rows ``start:start + keep`` of a chunk followed by the new rows given:
    an append completes the store's last, partly filled chunk with the stored rows as they
    are (their source files are not read again)."""
    new = {"images": images, "hist": hist, **records}
    arrays = zarrio.arrays_of(group, list(new))

    async def read() -> list:  # every array in one trip through zarr's event loop
        return await asyncio.gather(*(arrays[name].getitem(slice(start, start + keep))
                                      for name in new))

    joined = {name: np.concatenate([np.asarray(old).astype(values.dtype), values])
              for (name, values), old in zip(new.items(), sync(read()), strict=True)}
    return joined.pop("images"), joined.pop("hist"), joined


def commit(group: zarr.Group, attrs: dict[str, Any]) -> zarr.Group:
    """Commit an append: the attributes (``n_images``, ``version``, ``history``...) and the
    consolidated metadata of the grown arrays in one atomic write of the root ``zarr.json``;
    ``append_pending`` is dropped. Before it, readers see the previous version, after it the
    new one."""
    return zarrio.consolidate(group, attrs, drop=(APPEND_PENDING,))


def write_partials(group: zarr.Group, sums: dict[str, np.ndarray], meta: dict[str, Any]
                   ) -> dict[str, Any]:
    """Store statistics partials (integer sums over rows ``0:meta["rows"]``) in a new child
    of the ``stats_partials`` subgroup; return the attribute to commit that names them.

    Children not named by the committed attributes (left by an earlier version) are deleted
    first; the committed one stays until the commit replaces it, so a reader of the previous
    version keeps its partials.
    """
    name = f"r{meta['rows']}_{meta['token'][:16]}"
    committed = (group.attrs.get(PARTIALS_ATTR) or {}).get("group", "")
    sync(_write_partials(group._async_group, name, committed, sums))
    return {PARTIALS_ATTR: {**meta, "group": f"{PARTIALS}/{name}"}}


async def _write_partials(group: AsyncGroup, name: str, committed: str,
                          sums: dict[str, np.ndarray]) -> None:
    """:func:`write_partials` in one trip through zarr's event loop."""
    parent = await group.require_group(PARTIALS)
    stale = [c async for c in group.store.list_dir(PARTIALS) if c != "zarr.json"
             and f"{PARTIALS}/{c}" not in (committed, f"{PARTIALS}/{name}")]
    await asyncio.gather(*(group.store.delete_dir(f"{PARTIALS}/{c}") for c in stale))
    child = await parent.create_group(name, overwrite=True)
    compressors = (await group.getitem("hist")).compressors  # the store's own (checksums)

    async def put(key: str, values: np.ndarray) -> None:
        array = await child.create_array(
            key, shape=values.shape, dtype=str if values.dtype == object else values.dtype,
            chunks=tuple(max(1, d) for d in values.shape) or (1,), compressors=compressors)
        if values.size:
            await zarrio.whole_chunks(array).setitem(..., values)

    await asyncio.gather(*(put(key, values) for key, values in sums.items()))


def partial_inputs(group: zarr.Group) -> dict[str, Any]:
    """What :func:`xraybatch.stats.sums_with` reads, for every row of a group being written
    (the histograms and findings as zarr arrays, read later only where needed)."""
    n = int(group["labels"].shape[0])
    return {"hist": group["hist"], "findings": group.get("findings"),
            "labels": group["labels"][:n], "split": group["split"][:n],
            "valid": group["valid"][:n],
            "patient_ids": lambda start: patient_ids_of(group, start, n)}


def patient_ids_of(group: zarr.Group, start: int, stop: int) -> np.ndarray:
    """Patients of rows ``start:stop`` (see :meth:`XrayStore.patient_ids`)."""
    g, n = group, stop - start
    scanned = g["patient_id"][start:stop] if "patient_id" in g else np.full(n, "", object)
    header = (g["dicom_patient_id"][start:stop] if "dicom_patient_id" in g
              else np.full(n, "", object))
    return np.where(header != "", header, scanned).astype(object)


def read_partials(group: zarr.Group) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The committed statistics partials (their metadata and sums), or None."""
    meta = group.attrs.get(PARTIALS_ATTR)
    if not meta:
        return None
    try:
        child = group[meta["group"]]
        arrays = dict(child.arrays())
    except (KeyError, FileNotFoundError):
        return None

    async def read_all() -> list:  # one trip through zarr's event loop for all of them
        return await asyncio.gather(*(a._async_array.getitem(...) for a in arrays.values()))

    return meta, {key: np.asarray(values, dtype=object if values.dtype.kind in "OTU" else None)
                  for key, values in zip(arrays, sync(read_all()), strict=True)}


# --- split assignments and history ------------------------------------------------------


def split_token(values: np.ndarray, splits: list[str]) -> str:
    """A digest of a split assignment (values and names), stored as ``attrs["split_token"]``.

    Whatever is computed per split (statistics partials) is valid while the token is the
    same: a rewrite changes it, a restore gives the original's back.

    Examples
    --------
    >>> a = split_token(np.array([0, 1, 1], np.int8), ["train", "test"])
    >>> a == split_token(np.array([0, 1, 0], np.int8), ["train", "test"]), len(a)
    (False, 16)
    """
    digest = hashlib.blake2b(json.dumps(list(splits)).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(values, np.int8).tobytes())
    return digest.hexdigest()


def write_split(ref: StoreRef, values: np.ndarray, splits: list[str],
                assignment: dict[str, Any], entry: dict[str, Any]) -> int:
    """Rewrite the active ``split`` whole with ``values`` (indices into ``splits``, the
    store's split names, possibly extended), record ``assignment`` and a history entry;
    the store's new version. The caller holds the writer lock.

    A store written before ``split_original`` existed gets it first, from its ``split``,
    which nothing rewrote before. ``attrs["split_pending"]`` marks the rewrite until the
    commit (one ``zarr.json`` write), so an interrupted one is known; ``split_token``
    changes, so results keyed on the assignment are recomputed.

    Examples
    --------
    >>> write_split(StoreRef("xray.zarr"), values, ["train", "val", "test"],
    ...             {"method": "random"}, {"action": "split", "source": "..."})  # doctest: +SKIP
    2
    """
    group = ref.open("r+")
    refuse_if_appending(ref.url, group.attrs)  # its grown arrays would be consolidated by ours
    old = list(group.attrs["splits"])
    if splits[:len(old)] != old or len(splits) > 127:
        raise ValueError(f"split names {splits} do not extend the store's {old}")
    n = int(group.attrs["n_images"])
    if values.shape != (n,) or (n and not 0 <= values.min() <= values.max() < len(splits)):
        raise ValueError(f"a split assignment needs one index into {splits} per row")
    if "split_original" not in group:
        _save_original(group, old)
    group.update_attributes({"split_pending": {"when": utc_now(), "method": assignment["method"]}})
    array = group["split"]
    sync(zarrio.whole_chunks(array._async_array).setitem(slice(None), values.astype(np.int8)))
    if splits != old:  # new names extend the flags; existing indices never change
        array.update_attributes(_split_flags(splits))
    # The commit: attributes, history and the split's new flags in one root zarr.json write.
    attrs = history_attrs(dict(group.attrs), entry)
    zarrio.consolidate(group, {**attrs, "splits": list(splits), "split_assignment": assignment,
                               "split_token": split_token(values, splits)},
                       drop=("split_pending",))
    return attrs["version"]


def refuse_if_appending(url: str, attrs: dict[str, Any]) -> None:
    """Raise the one-line :class:`StoreError` if ``attrs`` record an append in progress
    (``append_pending``: running, or interrupted and waiting for ``--append --resume``).

    Examples
    --------
    >>> refuse_if_appending("x.zarr", {"append_pending": {"rows": [60, 72]}})
    Traceback (most recent call last):
    ...
    xraybatch.location.StoreError: x.zarr has an interrupted append: finish it first with xraybatch ingest SRC x.zarr --append --resume
    """  # noqa: E501
    if APPEND_PENDING in attrs:
        raise StoreError(f"{url} has an interrupted append: finish it first with "
                         f"xraybatch ingest SRC {url} --append --resume")


def _save_original(group: zarr.Group, splits: list[str]) -> None:
    """Create ``split_original`` from ``split`` (before its first rewrite) and consolidate,
    so that it is in the root metadata before ``split`` changes."""
    current = group["split"]
    array = group.create_array("split_original", shape=current.shape, dtype="int8",
                               chunks=current.chunks, fill_value=0, overwrite=True,
                               dimension_names=("sample",), attributes=_split_flags(splits),
                               compressors=current.compressors)  # as split's own
    sync(zarrio.whole_chunks(array._async_array).setitem(slice(None), current[:]))
    zarrio.consolidate(group)


def is_ours(attrs: dict[str, Any]) -> bool:
    """Whether a group's attributes are those of an xraybatch store (set first by create)."""
    return "xraybatch_version" in attrs


def layout_written(attrs: dict[str, Any]) -> bool:
    """Whether :func:`create` finished (it writes the class names last)."""
    return "classes" in attrs


def write_pairs(ref: StoreRef, pairs: np.ndarray, scores: np.ndarray,
                key: dict[str, Any]) -> bool:
    """Keep verified near-duplicate pairs ((P, 2) int64 rows, (P,) scores) in the store,
    with ``key`` (what was searched) in the attributes of ``dup_pairs``.

    Written under the writer lock; returns False without writing when another process
    writes the store, or an interrupted append waits for ``--append --resume`` (the pairs
    would be stale, and consolidating would publish the append's grown arrays).
    """
    try:
        with locked(ref):
            group = ref.open("r+")
            if APPEND_PENDING in group.attrs:
                return False
            # The codecs of the store's own per-image arrays (format 2: with checksums).
            common = dict(compressors=group["hist"].compressors, overwrite=True)
            rows = max(1, min(len(pairs), 1 << 20))
            a = group.create_array("dup_pairs", shape=pairs.shape, dtype="int64",
                                   chunks=(rows, 2), dimension_names=("pair", "end"),
                                   attributes=key, **common)
            b = group.create_array("dup_score", shape=scores.shape, dtype="float32",
                                   chunks=(rows,), dimension_names=("pair",), **common)
            if len(pairs):
                a[:] = pairs.astype(np.int64)
                b[:] = scores.astype(np.float32)
            zarrio.consolidate(group)  # readers open every array from the root zarr.json
    except (StoreError, PermissionError, OSError):
        return False
    return True


def done_chunks(group: zarr.Group) -> np.ndarray:
    return group["chunk_done"][:]


def scan_arrays(group: zarr.Group) -> pd.DataFrame:
    """What the scan wrote at creation, to check that a resumed run sees the same files."""
    return pd.DataFrame({"path": group["path"][:], "label": group["labels"][:],
                         "file_bytes": group["file_bytes"][:]})


def same_findings(group: zarr.Group, findings: pd.DataFrame | None) -> bool:
    """Whether the store holds exactly ``findings`` (both None/absent for single-label)."""
    if findings is None or "findings" not in group:
        return findings is None and "findings" not in group
    return (group["findings"].shape == findings.shape
            and bool((group["findings"][:] == findings.to_numpy(np.int8)).all()))


def failures(group: zarr.Group) -> pd.DataFrame:
    """Path, status and message of every file that was not stored."""
    status = group["status"][:]
    bad = np.flatnonzero(status != "ok")
    return pd.DataFrame({"path": group["path"][:][bad], "status": status[bad],
                         "message": group["message"][:][bad]})

