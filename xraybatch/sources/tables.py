"""Table input: a CSV or Parquet file naming the images, with their labels, split and patient.

Columns are mapped by a :class:`Columns` spec (or a preset: :data:`PRESETS`). Labels come in
three layouts:

- ``label``: one class name per row (a single-label set, stored as today);
- ``labels``: several findings in one cell, separated by ``sep`` (NIH ChestX-ray14's
  ``Finding Labels``: ``Effusion|Infiltration``); listed = 1, not listed = 0;
- ``findings``: one column per finding holding 1, 0, -1 (uncertain) or blank (not stated),
  as in CheXpert's ``train.csv``.

The last two give an (N, C) int8 findings matrix (:data:`FINDING_VALUES`). Paths are relative
to the root (or absolute paths/URLs below it); they are looked up in one streamed listing of
the root (:func:`.listing.walk`), which also gives each file's size. Nothing is dropped
silently: rows that cannot be used are returned as ``skipped`` with a reason
(:data:`REASONS`); rows whose file is absent are kept, so that the store records them with the
decoder's reason code ``missing``.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..findings import joined
from . import TABLE_PRESETS, listing

#: Values of the findings matrix and what they mean.
NOT_STATED = -2
FINDING_VALUES: dict[int, str] = {1: "positive", 0: "negative", -1: "uncertain",
                                  NOT_STATED: "not_stated"}
#: Reasons for table rows that are not ingested.
REASONS: dict[str, str] = {
    "bad_label": "the row's label cell is empty or not understood (unknown finding, a value "
                 "other than 1, 0, -1 or blank)",
    "bad_split": "the row's split is not one of train, val (valid, validation), test",
    "duplicate_row": "the row names a file an earlier row already names (the first is kept)",
    "no_path": "the row's path cell is empty",
    "outside_root": "the row's path is absolute (or a URL) but not below the root, or "
                    "relative and climbs out of it (../)",
}
TABLE_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".parquet", ".pq")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test"}
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion",
                "Emphysema", "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule",
                "Pleural_Thickening", "Pneumonia", "Pneumothorax")
CHEXPERT_FINDINGS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
                     "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia",
                     "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                     "Fracture", "Support Devices")
_PARQUET_HINT = "Parquet tables need pyarrow: pip install 'xraybatch[parquet]'"


class TableError(ValueError):
    """A table that cannot be read or mapped (reported in one line)."""


@dataclass(frozen=True)
class Columns:
    """Which table columns hold what (``None``: not in the table).

    Examples
    --------
    >>> Columns(path="file", label="diagnosis").kind
    'single'
    >>> PRESETS["nih"].kind, PRESETS["chexpert"].kind
    ('multi', 'multi')
    """

    path: str = "path"
    label: str | None = None
    labels: str | None = None
    findings: tuple[str, ...] = ()
    split: str | None = None
    patient: str | None = None
    sep: str = "|"
    #: Regex whose first group, searched in the path, is the patient id (no patient column).
    patient_pattern: str | None = None
    #: Fixed finding names (``labels`` layout); others are ``bad_label``. Empty: from the table.
    classes: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        """``"single"`` (one class per image) or ``"multi"`` (a findings matrix)."""
        chosen = [bool(self.label), bool(self.labels), bool(self.findings)]
        if sum(chosen) != 1:
            raise TableError("a table needs exactly one label mapping: a label column, a "
                             "multi-label column or finding columns (or --table-preset)")
        return "single" if self.label else "multi"


#: Column layouts of the public sets (NIH ChestX-ray14 ``Data_Entry_2017.csv``, CheXpert
#: ``train.csv``/``valid.csv``).
PRESETS: dict[str, Columns] = {
    "nih": Columns(path="Image Index", labels="Finding Labels", patient="Patient ID",
                   classes=(*NIH_FINDINGS, "No Finding")),
    "chexpert": Columns(path="Path", findings=CHEXPERT_FINDINGS,
                        patient_pattern=r"(patient\d+)"),
}
assert tuple(PRESETS) == TABLE_PRESETS


@dataclass
class TableScan:
    """What :func:`scan_table` found (``scan.scan`` turns it into a ``Scan``)."""

    root: str
    manifest: pd.DataFrame  # path, split, class_name, label, bytes, patient_id
    classes: list[str]
    splits: list[str]
    skipped: pd.DataFrame  # path, reason
    findings: pd.DataFrame | None  # (N, C) int8, columns = finding names; None: single-label


def is_table(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a table file (by its suffix).

    Examples
    --------
    >>> is_table("Data_Entry_2017.csv"), is_table("s3://b/train.parquet"), is_table("x/")
    (True, True, False)
    """
    return os.fspath(path).lower().endswith(TABLE_SUFFIXES)


def columns_for(preset: str | None = None, **mapping) -> Columns:
    """A preset's :class:`Columns`, with the non-``None`` entries of ``mapping`` replacing its own.

    Examples
    --------
    >>> columns_for("nih", patient=None).patient
    'Patient ID'
    >>> columns_for(None, path="file", labels="tags", sep=";").sep
    ';'
    """
    if preset is not None and preset not in PRESETS:
        raise TableError(f"unknown table preset {preset!r}: use {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else Columns()
    given = {k: (tuple(v) if k in ("findings", "classes") else v)
             for k, v in mapping.items() if v is not None and v != ()}
    if any(k in given for k in ("label", "labels", "findings")):  # one layout replaces another
        base = replace(base, label=None, labels=None, findings=(), classes=())
    return replace(base, **given)


def read_table(path: str, columns: Columns, storage_options: dict | None = None
               ) -> pd.DataFrame:
    """The columns ``columns`` names, as text ("" for empty cells), in table order.

    The frame has a fresh ``RangeIndex`` whatever index the file saved (a Parquet file
    written from ``pd.concat`` repeats its index; a named index, e.g. after ``set_index``,
    becomes a column again), column names are matched without surrounding whitespace or a
    byte-order mark, and a mapped name that occurs twice is a :class:`TableError`. Cells are
    the text CSV would hold for them: a Parquet table reads exactly as ``to_csv`` of the same
    frame (numbers as pandas writes them, missing cells empty).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> t = pathlib.Path(tempfile.mkdtemp()) / "t.csv"
    >>> _ = t.write_text(",\\ufeff Path ,label\\n0,a.png,1\\n0,b.png,\\n")  # index saved, BOM
    >>> read_table(str(t), Columns(path="Path", label="label")).values.tolist()
    [['a.png', '1'], ['b.png', '']]
    """
    wanted = list(dict.fromkeys(_clean(c) for c in (
        columns.path, columns.label, columns.labels, *columns.findings, columns.split,
        columns.patient) if c))
    options = dict(storage_options or {}) if listing.is_url(path) else None
    try:
        if path.lower().endswith((".parquet", ".pq")):
            frame = _read_parquet(path, options, wanted)
        else:
            frame = _read_csv(path, options, wanted)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise TableError(f"cannot read table {path}: {e}") from None
    absent = [c for c in wanted if c not in frame.columns]
    if absent:
        raise TableError(f"table {path} has no column {', '.join(map(repr, absent))} "
                         f"(map the columns with the --*-column options or --table-preset)")
    return frame[wanted]


def _clean(name: object) -> str:
    """A column name as matched: without surrounding whitespace or a byte-order mark."""
    return str(name).replace("\ufeff", "").strip()


def _positions(names: list, wanted: list[str], path: str) -> dict[int, str]:
    """Position -> cleaned name of each wanted column; a wanted name found twice is an error."""
    found: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if _clean(name) in wanted:
            found.setdefault(_clean(name), []).append(i)
    twice = {name: at for name, at in found.items() if len(at) > 1}
    if twice:
        name, at = next(iter(twice.items()))
        raise TableError(f"table {path} has {len(at)} columns named {name!r} (columns "
                         f"{', '.join(str(i + 1) for i in at)}): rename or drop all but one")
    return {at[0]: name for name, at in found.items()}


def _read_csv(path: str, options: dict | None, wanted: list[str]) -> pd.DataFrame:
    # The header as written (pandas would rename a repeated name "Path.1" and take the first):
    sep = "\t" if path.lower().endswith(".tsv") else ","
    header = pd.read_csv(path, sep=sep, header=None, nrows=1, dtype=str,
                         keep_default_na=False, storage_options=options)
    keep = _positions(header.iloc[0].tolist() if len(header) else [], wanted, path)
    # Everything as text: ids keep their leading zeros, "NA" stays a word, blank stays "".
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, usecols=list(keep),
                        storage_options=options)
    frame.columns = [keep[i] for i in sorted(keep)]
    return frame.reset_index(drop=True)


def _read_parquet(path: str, options: dict | None, wanted: list[str]) -> pd.DataFrame:
    try:
        import pyarrow
    except ImportError:
        raise ImportError(_PARQUET_HINT) from None
    try:
        frame = pd.read_parquet(path, storage_options=options)
    except pyarrow.ArrowException as e:  # a repeated name, a damaged file: say which, in one line
        _positions(_parquet_names(path, options), wanted, path)
        raise TableError(f"cannot read table {path}: {str(e).splitlines()[0]}") from None
    # pandas restores the index the file saved: a repeated one (pd.concat) breaks every
    # lookup by label. A named index (set_index) is a column the user may map; others go.
    named = [n for n in frame.index.names if n is not None and n not in frame.columns]
    if named:
        frame = frame.reset_index(level=named)
    frame = frame.reset_index(drop=True)
    keep = _positions(list(frame.columns), wanted, path)
    picked = frame.iloc[:, sorted(keep)]
    picked.columns = [keep[i] for i in sorted(keep)]
    # The text to_csv would write (3, 1.5, True), "" for missing cells: as the same rows in CSV.
    return picked.astype(object).where(picked.notna(), "").astype(str)


def _parquet_names(path: str, options: dict | None) -> list[str]:
    """The column names a Parquet file's schema holds ([] if it has none to read)."""
    import fsspec
    import pyarrow.parquet as pq

    try:
        with fsspec.open(path, "rb", **(options or {})) as f:
            return pq.read_schema(f).names
    except Exception:  # noqa: BLE001 (the caller reports the first error)
        return []


def scan_table(table: str, root: str | None = None, columns: Columns | None = None,
               storage_options: dict | None = None, progress: bool = False) -> TableScan:
    """Read ``table``, find its files below ``root`` (default: the table's folder), map labels.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("a.png", "b.png"):
    ...     _ = (d / name).write_bytes(b"x")
    >>> _ = (d / "t.csv").write_text("file,tags\\na.png,cat|dog\\nb.png,dog\\nb.png,dog\\n")
    >>> found = scan_table(str(d / "t.csv"), columns=Columns(path="file", labels="tags"))
    >>> found.findings.values.tolist(), found.classes
    ([[1, 1], [0, 1]], ['cat', 'dog'])
    >>> found.skipped.values.tolist()
    [['b.png', 'duplicate_row']]
    """
    columns = _cleaned(columns or Columns())
    kind = columns.kind
    table = os.fspath(table)
    if root is None:
        root = table.rsplit("/", 1)[0] if listing.is_url(table) else os.path.dirname(
            os.path.abspath(table))
    root = os.fspath(root)
    if not listing.is_dir(root, storage_options):
        raise TableError(f"root folder not found: {root}")
    frame = read_table(table, columns, storage_options)
    if frame.empty:
        raise TableError(f"table {table} has no rows")
    own = frozenset({table.rsplit("/", 1)[-1]})  # the table is not one of its images
    paths = _resolve(frame[columns.path].str.strip(), root, storage_options, progress, own)
    bad = np.full(len(frame), "", dtype=object)  # numpy: a million rows stay cheap
    bad[paths.isna().to_numpy()] = "outside_root"
    bad[(frame[columns.path].str.strip() == "").to_numpy()] = "no_path"  # (NaN in Parquet)
    split = _splits(frame, columns, paths.fillna(""))
    bad[(bad == "") & split.isna().to_numpy()] = "bad_split"
    if kind == "single":
        names = frame[columns.label].str.strip()
        bad[(bad == "") & (names == "").to_numpy()] = "bad_label"
        classes = sorted(names[bad == ""].unique())
        findings = None
    else:
        matrix, classes, unparsed = _findings(frame, columns)
        bad[(bad == "") & unparsed.to_numpy()] = "bad_label"
    rel = paths.fillna("")
    kept = bad == ""
    dup = np.zeros(len(frame), bool)
    dup[kept] = rel[kept].duplicated().to_numpy()
    bad[dup] = "duplicate_row"
    kept &= ~dup
    skipped = pd.DataFrame({"path": frame[columns.path].to_numpy(object)[~kept],
                            "reason": bad[~kept]})
    manifest = pd.DataFrame({"path": rel[kept].to_numpy(object),
                             "split": split[kept].to_numpy(object)})
    if kind == "single":
        manifest["class_name"] = names[kept].to_numpy(object)
        manifest["label"] = manifest.class_name.map({c: i for i, c in enumerate(classes)})
    else:
        findings = pd.DataFrame(matrix[kept], columns=classes)
        manifest["class_name"] = joined(findings.to_numpy(), classes)
        manifest["label"] = -1
    manifest["bytes"] = paths.attrs["sizes"][kept]
    manifest["patient_id"] = _patients(frame, columns, rel)[kept].to_numpy(object)
    return _ordered(root, manifest, classes, skipped, findings)


def _cleaned(columns: Columns) -> Columns:
    """``columns`` with its names as :func:`read_table` matches them (``" Path "``: ``Path``)."""
    names = {k: _clean(v) for k in ("path", "label", "labels", "split", "patient")
             if (v := getattr(columns, k))}
    return replace(columns, **names, findings=tuple(_clean(f) for f in columns.findings))


def _ordered(root: str, manifest: pd.DataFrame, classes: list[str], skipped: pd.DataFrame,
             findings: pd.DataFrame | None) -> TableScan:
    """Store order: split order, then path (as a folder scan), so two scans agree."""
    order_of = {s: i for i, s in enumerate((*dict.fromkeys(SPLIT_NAMES.values()), "none"))}
    by_path = manifest.path.argsort(kind="stable").to_numpy()  # Arrow's sort when available
    codes, names = pd.factorize(manifest.split)  # not set(): iterating Arrow strings is slow
    splits = sorted(names, key=order_of.__getitem__)
    rank = np.array([order_of[n] for n in names], int)[codes][by_path]
    order = by_path[np.argsort(rank, kind="stable")]
    if (order != np.arange(len(order))).any():  # tables often come sorted
        manifest = manifest.iloc[order].reset_index(drop=True)
        if findings is not None:
            findings = findings.iloc[order].reset_index(drop=True)
    skipped = skipped.sort_values(["path", "reason"], kind="stable").reset_index(drop=True)
    return TableScan(root, manifest[["path", "split", "class_name", "label", "bytes",
                                     "patient_id"]], list(classes), splits, skipped, findings)


def _resolve(paths: pd.Series, root: str, storage_options: dict | None,
             progress: bool, skip: frozenset[str] = frozenset()) -> pd.Series:
    """Each table path as a path relative to ``root`` (NaN: outside it); sizes in attrs.

    A path not found as written is tried without a leading folder named as the root (CheXpert
    paths start with the dataset folder the table sits in) and then by its file name alone,
    when that name is unique below the root (NIH lists bare names, the files sit in
    ``images_NNN/images/``). Files still not found keep their path and size -1. Vectorised:
    a million rows take a few seconds.
    """
    sizes = dict(listing.walk(root, storage_options, skip=skip, progress=progress))
    base = root.rstrip("/")
    rel = paths.str.removeprefix("./")
    absolute = rel.str.startswith("/") | rel.str.contains("://", regex=False)
    if absolute.any():
        inside = absolute & rel.str.startswith(base + "/")
        rel = rel.where(~inside, rel.str.slice(len(base) + 1)).where(~absolute | inside)
    rel = _contained(rel)
    where = np.full(len(rel), -1)
    if sizes:  # an empty root (or one without these files): every row is missing
        known = pd.Index(list(sizes), dtype=object)
        where = known.get_indexer(rel.to_numpy(object))
        own = base.rsplit("/", 1)[-1] + "/"
        names = _by_name(sizes)
        for fallback in (lambda r: r[r.str.startswith(own)].str.slice(len(own)),
                         lambda r: r[~r.str.contains("/", regex=False)].map(names)):
            lost = np.flatnonzero(where < 0)
            if not len(lost):
                break
            other = fallback(rel.iloc[lost].dropna()).dropna()
            found = known.get_indexer(other.to_numpy(object))
            hit = other.index[found >= 0]
            rel[hit] = other[hit]
            where[rel.index.get_indexer(hit)] = found[found >= 0]
    # -1 (not found) picks the appended -1.
    rel.attrs["sizes"] = np.append(np.fromiter(sizes.values(), np.int64, len(sizes)), -1)[where]
    return rel


def _contained(rel: pd.Series) -> pd.Series:
    """Relative paths normalised by :func:`inside` (NaN: outside the root).

    Only the few odd paths are looked at: a million plain rows cost one vectorised match.

    Examples
    --------
    >>> _contained(pd.Series(["a.png", "a/../b.png", "../x", "a/../../x", "..\\\\x", "a//b"])
    ...            ).tolist()
    ['a.png', 'b.png', nan, nan, nan, 'a/b']
    """
    odd = rel.str.contains(r"\.\.|\./|//|\\|/\.$", regex=True, na=False).to_numpy()
    if not odd.any():
        return rel
    rel = rel.copy()
    rel[odd] = rel[odd].map(inside)
    return rel


def inside(path: str) -> str | None:
    """``path`` (relative to a root) normalised; None if it climbs out of the root or is
    absolute.

    A table that came with a download must not make xraybatch read files elsewhere on the
    machine: ``../x.png`` and ``a/../../x`` are outside the root, as is ``..\\x`` (read with
    Windows separators too: refused rather than guessed). Symbolic links are not resolved:
    a link inside a scanned folder is the user's own choice.

    Examples
    --------
    >>> inside("a/./b//c.png"), inside("a/../b.png"), inside("../x.png"), inside("/etc/x")
    ('a/b/c.png', 'b.png', None, None)
    >>> inside("a\\\\..\\\\..\\\\x") is None  # a, .., .., x with Windows separators
    True
    """
    if path.startswith("/") or "://" in path:
        return None
    fixed = posixpath.normpath(path)
    climbs = [p == ".." or p.startswith("../")
              for p in (fixed, posixpath.normpath(path.replace("\\", "/")))]
    return None if any(climbs) else fixed


def _by_name(sizes: dict[str, int]) -> dict[str, str]:
    """File name -> its path, for names that occur once below the root."""
    by_name: dict[str, str | None] = {}
    for known in sizes:
        name = known.rsplit("/", 1)[-1]
        by_name[name] = None if name in by_name else known
    return {name: path for name, path in by_name.items() if path is not None}


def _splits(frame: pd.DataFrame, columns: Columns, paths: pd.Series) -> pd.Series:
    """Split of each row (NaN: not understood): the split column, else a split folder."""
    if columns.split:
        return frame[columns.split].str.strip().str.lower().map(SPLIT_NAMES)
    split = pd.Series("none", index=paths.index, dtype=object)
    pattern = r"(?:^|/)(train|val|valid|validation|test)/"
    has = paths.str.contains(pattern.replace("(t", "(?:t", 1), case=False)  # usually none
    if has.any():
        folders = paths[has].str.extract(pattern, flags=re.I, expand=False)
        split[has] = folders.str.lower().map(SPLIT_NAMES)
    return split


def _findings(frame: pd.DataFrame, columns: Columns) -> tuple[np.ndarray, list[str], pd.Series]:
    """(N, C) int8 findings, their names, and which rows are not understood."""
    if columns.findings:
        values = []
        for name in columns.findings:
            cell = frame[name].str.strip()
            number = pd.to_numeric(cell, errors="coerce")
            values.append(np.where(cell == "", NOT_STATED, number))
        matrix = np.column_stack(values)
        ok = np.isin(matrix, list(FINDING_VALUES))
        return (np.where(ok, matrix, NOT_STATED).astype(np.int8), list(columns.findings),
                pd.Series(~ok.all(axis=1), index=frame.index))
    # A large table repeats a few hundred label sets: parse each distinct cell once.
    codes, cells = pd.factorize(frame[columns.labels])
    tokens = [[x.strip() for x in cell.split(columns.sep) if x.strip()] for cell in cells]
    classes = list(columns.classes) or sorted({x for t in tokens for x in t})
    index = {c: i for i, c in enumerate(classes)}
    rows = np.zeros((len(cells), len(classes)), np.int8)
    unparsed = np.zeros(len(cells), bool)
    for i, names in enumerate(tokens):
        cols = [index.get(x, -1) for x in names]
        if not cols or -1 in cols:
            unparsed[i] = True
        else:
            rows[i, cols] = 1
    return rows[codes], classes, pd.Series(unparsed[codes], index=frame.index)


def _patients(frame: pd.DataFrame, columns: Columns, paths: pd.Series) -> pd.Series:
    if columns.patient:
        return frame[columns.patient].str.strip()
    if columns.patient_pattern:
        return paths.str.extract(columns.patient_pattern, expand=False).fillna("")
    return pd.Series("", index=frame.index)
