"""Scan a folder of images into a manifest: which files, in which split, with which label.

Nothing is decoded here. Files are chosen by extension; the decoder later checks their content.
The order of the manifest is deterministic (split order, then path), so two scans of the same
folder give the same store layout, which is what makes ``--resume`` possible.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .patients import patient_ids
from .readers import dicom
from .sources import listing, tables
from .synth import MARKER

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp",
                  ".pgm", ".ppm", ".pbm", ".dcm", ".dicom"}
SPLITS = ("train", "val", "test")
NO_SPLIT = "none"
KERMANY3 = ("NORMAL", "BACTERIA", "VIRUS")
_OWN_FILES = frozenset({MARKER})  # xraybatch's own bookkeeping, not data


class ScanError(ValueError):
    """A problem with the source folder or the label scheme (reported in one line)."""


@dataclass
class Scan:
    """The result of :func:`scan`.

    ``manifest`` has one row per image file, in store order, with columns ``path``
    (relative, posix), ``split``, ``class_name``, ``label``, ``bytes`` (-1 when the file
    cannot be stat'ed; the decoder will give the reason), ``patient_id`` ("" if unknown).
    ``skipped`` lists files that are not images or carry no label, with a ``reason``.
    ``root`` is a local folder or an fsspec URL. ``findings`` is set for multi-label tables:
    (N, C) int8, one column per finding (``label`` is then -1; see
    :mod:`xraybatch.sources.tables`).
    """

    root: Path | str
    manifest: pd.DataFrame
    classes: list[str]
    splits: list[str]
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["path", "reason"]))
    findings: pd.DataFrame | None = None

    @property
    def source(self) -> str:
        """The root as stored in the ``source`` attribute: an absolute path or the URL."""
        root = str(self.root)
        return root if listing.is_url(root) else str(Path(root).resolve())


def _split_of(parts: tuple[str, ...], has_splits: bool) -> tuple[str, tuple[str, ...]]:
    if has_splits and parts[0].lower() in SPLITS:
        return parts[0].lower(), parts[1:]
    return NO_SPLIT, parts


def _kermany3(folder: str, name: str, rel: str) -> str:
    folder = folder.upper()
    if folder == "NORMAL":
        return "NORMAL"
    if folder != "PNEUMONIA":
        raise ScanError(f"kermany3 labels expect NORMAL/ or PNEUMONIA/ folders, found {rel}")
    lowered = name.lower()
    if "bacteria" in lowered:
        return "BACTERIA"
    if "virus" in lowered:
        return "VIRUS"
    raise ScanError(f"kermany3: cannot tell bacteria from virus in file name {rel}")


def read_label_csv(path: str | os.PathLike) -> dict[str, str]:
    """Read a CSV mapping relative path -> class (columns ``path`` and ``class`` or ``label``).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp(), "labels.csv")
    >>> _ = p.write_text("path,class\\ntrain/a.jpeg,cat\\n")
    >>> read_label_csv(p)
    {'train/a.jpeg': 'cat'}
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # an Excel export's BOM
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ScanError(f"cannot read label CSV {path}: {e}") from None
    if not rows:
        raise ScanError(f"label CSV {path} has no rows")
    key = "class" if "class" in rows[0] else "label"
    if "path" not in rows[0] or key not in rows[0]:
        raise ScanError(f"label CSV {path} needs columns 'path' and 'class' "
                        f"(found {', '.join(rows[0])})")
    mapping: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        rel, cls = (row.get("path") or "").strip(), (row.get(key) or "").strip()
        if not rel or not cls:
            raise ScanError(f"label CSV {path} line {i}: empty path or class")
        rel = Path(rel).as_posix()
        mapping[tables.inside(rel) or rel] = cls  # a/../b is b; ../b stays (outside_root)
    return mapping


def _is_dicom(path: Path) -> bool:
    """An extension-less (or UID-named, ``1.2.840...3``) file with the DICOM preamble, or a
    legacy data set without it (recognised by its first data elements)."""
    suffix = path.suffix[1:]
    if suffix and not suffix.isdigit():
        return False
    try:
        with open(path, "rb") as f:
            return dicom.sniff(f.read(dicom.SNIFF_BYTES))
    except OSError:
        return False


def scan(root: str | os.PathLike | None, labels: str = "folder",
         patient_id: str | None = None, *, files: str | os.PathLike | None = None,
         columns: tables.Columns | None = None, storage_options: dict | None = None,
         progress: bool = False) -> Scan:
    """Scan ``root`` into a manifest.

    Parameters
    ----------
    root
        Folder of images, either ``root/CLASS/*.ext`` or ``root/{train,val,test}/CLASS/*.ext``,
        or an fsspec URL prefix of such a folder (``s3://bucket/chest_xray/``); with
        ``files``, the folder the table's paths are relative to (default: the table's folder).
        A table file (``.csv``, ``.parquet``) here means ``files=root``.
    labels
        ``"folder"`` (class = folder name, labels are the sorted names), ``"kermany3"``
        (NORMAL / BACTERIA / VIRUS, PNEUMONIA split by file name) or the path of a CSV file
        mapping relative path -> class. Ignored with ``files``.
    patient_id
        Regex searched in each relative path for the column ``patient_id`` (one group or a
        group named ``patient``); by default Kermany file names give it ("" if unknown).
        With ``files``, the table's patient column (if mapped) gives it.
    files
        A table (CSV or Parquet, a path or URL) naming the images: see
        :func:`xraybatch.sources.tables.scan_table`; ``columns`` maps its columns.
    storage_options
        fsspec options for URLs (root, table).
    progress
        Print a line on stderr every few seconds while listing a large folder.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for rel in ["train/NORMAL/IM-1.jpeg", "train/PNEUMONIA/person1_virus_2.jpeg",
    ...             "train/.DS_Store"]:
    ...     (root / rel).parent.mkdir(parents=True, exist_ok=True)
    ...     _ = (root / rel).write_bytes(b"x")
    >>> s = scan(root, labels="kermany3")
    >>> s.manifest[["path", "split", "class_name", "label"]].values.tolist()
    [['train/NORMAL/IM-1.jpeg', 'train', 'NORMAL', 0], ['train/PNEUMONIA/person1_virus_2.jpeg', 'train', 'VIRUS', 2]]
    >>> s.skipped.values.tolist()
    [['train/.DS_Store', 'not_image']]
    """  # noqa: E501
    if files is None and root is not None and tables.is_table(root):
        files, root = root, None
    if files is not None:
        return _scan_table(files, root, columns, storage_options, progress, patient_id)
    local = not listing.is_url(root)
    if not local:
        if not listing.is_dir(str(root), storage_options):
            raise ScanError(f"source folder not found: {root}")
    else:
        root = Path(root)
        if not root.is_dir():
            raise ScanError(f"source folder not found: {root}")
    csv_map = None
    if labels not in ("folder", "kermany3"):
        if not labels.lower().endswith(".csv"):
            raise ScanError(f"unknown label scheme {labels!r}: use folder, kermany3 or a .csv file")
        csv_map = read_label_csv(labels)

    entries = list(listing.walk(str(root), storage_options, skip=_OWN_FILES, progress=progress))
    has_splits = any(r.split("/")[0].lower() in SPLITS and r.count("/") >= 2 for r, _ in entries)
    rels = {rel for rel, _ in entries} if csv_map is not None else set()
    rows, skipped = [], []
    for rel, size in entries:
        parts = tuple(rel.split("/"))
        name = parts[-1]
        if ((os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES
             and not (local and _is_dicom(Path(root, rel))))
                or name.startswith("._")):
            skipped.append((rel, "not_image"))
            continue
        split, inner = _split_of(parts, has_splits)
        if csv_map is not None:
            cls = csv_map.get(rel)
        elif len(inner) < 2:
            cls = None
        else:
            cls = _kermany3(inner[-2], name, rel) if labels == "kermany3" else inner[-2]
        if cls is None:
            skipped.append((rel, "unlabelled"))
            continue
        rows.append((rel, split, cls, size))
    if csv_map is not None:  # listed but absent: kept, so the decoder reports them as missing
        for rel, cls in csv_map.items():
            if rel not in rels and tables.inside(rel) is None:  # never read outside the root
                skipped.append((rel, "outside_root"))
            elif rel not in rels:
                rows.append((rel, _split_of(tuple(rel.split("/")), has_splits)[0], cls, -1))

    if not rows:
        raise ScanError(f"no labelled image files under {root} "
                        f"({len(skipped)} other files skipped)")
    manifest = pd.DataFrame(rows, columns=["path", "split", "class_name", "bytes"])
    classes = list(KERMANY3) if labels == "kermany3" else sorted(manifest.class_name.unique())
    splits = [s for s in (*SPLITS, NO_SPLIT) if s in set(manifest.split)]
    manifest["label"] = manifest.class_name.map({c: i for i, c in enumerate(classes)})
    order = manifest.split.map({s: i for i, s in enumerate(splits)})
    manifest = (manifest.assign(_o=order).sort_values(["_o", "path"], kind="stable")
                .drop(columns="_o").reset_index(drop=True))
    manifest["patient_id"] = patient_ids(manifest.path, patient_id)
    manifest = manifest[["path", "split", "class_name", "label", "bytes", "patient_id"]]
    skipped_df = pd.DataFrame(sorted(skipped), columns=["path", "reason"])
    return Scan(root, manifest, classes, splits, skipped_df)


def _scan_table(files: str | os.PathLike, root: str | os.PathLike | None,
                columns: tables.Columns | None, storage_options: dict | None,
                progress: bool, patient_id: str | None = None) -> Scan:
    try:
        found = tables.scan_table(os.fspath(files), None if root is None else os.fspath(root),
                                  columns, storage_options, progress)
    except tables.TableError as e:
        raise ScanError(str(e)) from None
    if found.manifest.empty:
        raise ScanError(f"no usable rows in {files} ({len(found.skipped)} rows skipped: "
                        f"{found.skipped.reason.value_counts().to_dict()})")
    if patient_id is not None or not found.manifest.patient_id.astype(bool).any():
        # No patient column: the file names (or --patient-id REGEX) may still tell.
        found.manifest["patient_id"] = patient_ids(found.manifest.path, patient_id)
    return Scan(found.root, found.manifest, found.classes, found.splits, found.skipped,
                found.findings)
