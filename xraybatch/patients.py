"""Patients: ids from file names, and the patient-leakage check across splits.

The same patient in more than one split is the best-known way to fool yourself with chest
X-rays: a model recognises the patient (implants, anatomy, positioning), not the disease,
and the test score rises. Kermany's file names carry the patient (``person123_bacteria_456``,
``IM-0115-0001``, ``NORMAL2-IM-0427-0001``); other naming schemes give theirs with
``--patient-id REGEX``; DICOM files carry ``PatientID`` in their header, which takes
precedence (see :meth:`xraybatch.store.XrayStore.patient_ids`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

#: Kermany file names: ``person123_bacteria_456`` -> ``person123``, ``IM-0115-0001`` ->
#: ``IM-0115``, ``NORMAL2-IM-0427-0001`` -> ``NORMAL2-IM-0427``.
KERMANY = re.compile(r"^(?P<patient>person\d+(?=_)|(?:NORMAL2-)?IM-\d+(?=-\d))")
#: How many ids of leaked patients the text output lists.
SHOWN = 20


def compile_regex(text: str) -> re.Pattern:
    """A user's ``--patient-id`` regex; it needs one group or a group named ``patient``.

    Examples
    --------
    >>> compile_regex(r"(P\\d+)_").pattern
    '(P\\\\d+)_'
    >>> compile_regex(r"P\\d+")
    Traceback (most recent call last):
    ...
    ValueError: --patient-id 'P\\\\d+' needs one group, or a group named 'patient'
    """
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise ValueError(f"--patient-id {text!r} is not a regular expression: {e}") from None
    if "patient" not in pattern.groupindex and pattern.groups != 1:
        raise ValueError(f"--patient-id {text!r} needs one group, or a group named 'patient'")
    return pattern


def patient_of(rel: str, pattern: re.Pattern | None = None) -> str:
    """The patient id of one file ("" if unknown).

    Without ``pattern`` the Kermany rule is applied to the file name; a user's ``pattern``
    is searched in the whole relative path, so a folder can name the patient too.

    Examples
    --------
    >>> [patient_of(p) for p in ["train/PNEUMONIA/person123_bacteria_456.jpeg",
    ...     "IM-0115-0001.jpeg", "NORMAL2-IM-0427-0001.jpeg", "scan.dcm"]]
    ['person123', 'IM-0115', 'NORMAL2-IM-0427', '']
    >>> patient_of("train/P0042/1.dcm", compile_regex(r"/(P\\d+)/"))
    'P0042'
    """
    match = KERMANY.match(rel.rsplit("/", 1)[-1]) if pattern is None else pattern.search(rel)
    if match is None:
        return ""
    return match.group("patient") if "patient" in match.re.groupindex else match.group(1)


def patient_ids(paths: Iterable[str], regex: str | None = None) -> list[str]:
    """:func:`patient_of` for many relative paths."""
    pattern = compile_regex(regex) if regex else None
    return [patient_of(p, pattern) for p in paths]


def summarize(patient: np.ndarray, split: np.ndarray, class_name: np.ndarray,
              splits: list[str], classes: list[str]) -> dict[str, Any]:
    """Patients per split and class, images per patient, and patients in several splits.

    Images without a patient id ("") are counted apart and never match each other.

    Examples
    --------
    >>> s = summarize(np.array(["p1", "p1", "p2", ""]), np.array(["train", "test", "train",
    ...     "test"]), np.array(["A", "A", "B", "B"]), ["train", "test"], ["A", "B"])
    >>> s["patients"], s["per_split"], s["in_several_splits"]["ids"]
    (2, {'train': 2, 'test': 1}, ['p1'])
    """
    frame = pd.DataFrame({"patient": patient, "split": split, "class_name": class_name})
    known = frame[frame.patient != ""]
    per_patient = known.groupby("patient").size()
    spread = known.groupby("patient").split.unique()
    leaked = sorted(p for p, where in spread.items() if len(where) > 1)
    return {
        "images_with_id": len(known), "images_without_id": len(frame) - len(known),
        "patients": int(known.patient.nunique()),
        "per_split": {s: int(known.patient[known.split == s].nunique()) for s in splits},
        "per_split_class": {s: {c: int(known.patient[(known.split == s)
                                                     & (known.class_name == c)].nunique())
                                for c in classes} for s in splits},
        "images_per_patient": ({"mean": float(per_patient.mean()),
                                "median": float(per_patient.median()),
                                "max": int(per_patient.max())} if len(per_patient) else None),
        "in_several_splits": {"count": len(leaked), "ids": leaked,
                              "splits": {p: [s for s in splits if s in set(spread[p])]
                                         for p in leaked}},
    }


def describe(summary: dict[str, Any]) -> list[str]:
    """The summary as text lines (for ``xraybatch stats`` and the report)."""
    if not summary["images_with_id"]:
        return ["patients: no patient ids (use --patient-id REGEX, or DICOM PatientID)"]
    per_split = ", ".join(f"{s} {n}" for s, n in summary["per_split"].items())
    ipp = summary["images_per_patient"]
    leaked = summary["in_several_splits"]
    lines = [f"patients {summary['patients']} (ids for {summary['images_with_id']} images, "
             f"none for {summary['images_without_id']}); per split: {per_split}; images per "
             f"patient: mean {ipp['mean']:.2f}, median {ipp['median']:g}, max {ipp['max']}"]
    if leaked["count"]:
        ids = ", ".join(leaked["ids"][:SHOWN]) + (" ..." if leaked["count"] > SHOWN else "")
        lines.append(f"LEAKAGE: {leaked['count']} patients in more than one split: {ids}")
    else:
        lines.append("no patient is in more than one split")
    return lines


# --- per-patient table: the summary's inputs, stored so that an append adds only its rows ---

#: Keys of a patient table (:func:`table`).
TABLE_KEYS = ("patient_ids", "patient_images", "patient_groups")


def table(patient: np.ndarray, split: np.ndarray, group: np.ndarray, n_split: int,
          n_group: int) -> dict[str, np.ndarray]:
    """Per patient (rows with an id): its id, its images and the (split, group) pairs it has
    images in, ``(P, n_split, n_group)`` bool. What :func:`summary_of` needs, and mergeable
    (:func:`merge`): the summary of several tables' rows without their rows.

    Examples
    --------
    >>> t = table(np.array(["p1", "p1", "", "p2"]), np.array([0, 1, 0, 0]), np.zeros(4, int),
    ...           2, 1)
    >>> t["patient_ids"].tolist(), t["patient_images"].tolist(), t["patient_groups"][0, :, 0]
    (['p1', 'p2'], [2, 1], array([ True,  True]))
    """
    known = patient != ""
    codes, ids = pd.factorize(np.asarray(patient[known], dtype=object))
    groups = np.zeros((len(ids), n_split, n_group), bool)
    groups[codes, np.asarray(split)[known], np.asarray(group)[known]] = True
    return {"patient_ids": np.asarray(ids, dtype=object),
            "patient_images": np.bincount(codes, minlength=len(ids)).astype(np.int64),
            "patient_groups": groups}


def merge(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The table of the rows of ``a`` and ``b`` (``b`` may have more splits or groups).

    Examples
    --------
    >>> a = table(np.array(["p1"]), np.array([0]), np.array([0]), 1, 1)
    >>> b = table(np.array(["p2", "p1"]), np.array([1, 1]), np.array([0, 0]), 2, 1)
    >>> m = merge(a, b)
    >>> m["patient_ids"].tolist(), m["patient_images"].tolist(), m["patient_groups"].shape
    (['p1', 'p2'], [2, 1], (2, 2, 1))
    """
    pos = pd.Index(a["patient_ids"]).get_indexer(b["patient_ids"])
    new = pos < 0
    pos[new] = len(a["patient_ids"]) + np.arange(new.sum())
    ids = np.concatenate([a["patient_ids"], b["patient_ids"][new]]).astype(object)
    images = np.concatenate([a["patient_images"], np.zeros(new.sum(), np.int64)])
    np.add.at(images, pos, b["patient_images"])
    shape = (len(ids), *np.maximum(a["patient_groups"].shape[1:], b["patient_groups"].shape[1:]))
    groups = np.zeros(shape, bool)
    ga, gb = a["patient_groups"], b["patient_groups"]
    groups[:len(ga), :ga.shape[1], :ga.shape[2]] = ga
    groups[pos, :gb.shape[1], :gb.shape[2]] |= gb
    return {"patient_ids": ids, "patient_images": images, "patient_groups": groups}


def summary_of(t: dict[str, np.ndarray], n_images: int, splits: list[str],
               classes: list[str]) -> dict[str, Any]:
    """:func:`summarize` of ``n_images`` rows from their :func:`table` (groups = classes;
    ``classes`` empty: one group, no per-class counts), with the same values.

    Examples
    --------
    >>> p, s, c = np.array(["p1", "p1", "p2", ""]), np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])
    >>> summary_of(table(p, s, c, 2, 2), 4, ["train", "test"], ["A", "B"]) == summarize(
    ...     p, np.array(["train", "test"])[s], np.array(["A", "B"])[c], ["train", "test"],
    ...     ["A", "B"])
    True
    """
    ids, images, groups = t["patient_ids"], t["patient_images"], t["patient_groups"]
    in_split = groups.any(axis=2)
    several = np.flatnonzero(in_split.sum(axis=1) > 1)
    leaked = sorted(str(ids[i]) for i in several)
    where = {str(ids[i]): [s for j, s in enumerate(splits) if j < in_split.shape[1]
                           and in_split[i, j]] for i in several}
    per_split_class = groups.sum(axis=0)

    def count(j: int, i: int | None = None) -> int:
        if j >= groups.shape[1] or (i is not None and i >= groups.shape[2]):
            return 0
        return int(in_split[:, j].sum() if i is None else per_split_class[j, i])

    return {
        "images_with_id": int(images.sum()), "images_without_id": n_images - int(images.sum()),
        "patients": len(ids),
        "per_split": {s: count(j) for j, s in enumerate(splits)},
        "per_split_class": {s: {c: count(j, i) for i, c in enumerate(classes)}
                            for j, s in enumerate(splits)},
        "images_per_patient": ({"mean": float(pd.Series(images).mean()),
                                "median": float(pd.Series(images).median()),
                                "max": int(images.max())} if len(ids) else None),
        "in_several_splits": {"count": len(leaked), "ids": leaked,
                              "splits": {p: where[p] for p in leaked}},
    }
