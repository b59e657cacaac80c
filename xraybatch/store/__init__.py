"""The zarr v3 store: the one package that knows its array names and layout.

Its modules: :mod:`.layout` (the array tables, creating a store, writing its chunks),
:mod:`.versions` (the first commit, history, appends, statistics partials, split assignments,
kept pairs), :mod:`.reader` (:class:`XrayStore`) and :mod:`.chunks` (verifying chunk by
chunk). Callers use the names re-exported here (``store.create``...); a function inside the
package looks its helpers up in the module that defines them (patch ``store.versions.X``,
not ``store.X``, to reach a call made from within the package).

Layout of a store (a zarr v3 group; every array has ``dimension_names``, so
``xarray.open_zarr(OUT)`` and ``dask.array.from_zarr(OUT, component="images",
chunks=(chunk, size, size))`` work without xraybatch)::

    images        (sample, y, x)  uint8    resized grayscale images; zero where invalid
                                           (one shard file per ``chunk`` images, one inner
                                           chunk with its CRC-32C per image)
    hist          (sample, bin)   int32    256-bin histogram of each stored image
    labels        (sample,)       int16    class index (CF flag_values / flag_meanings)
    split         (sample,)       int8     index into attrs["splits"]: the active assignment
    split_original (sample,)      int8     the scan's assignment, never rewritten (``xraybatch
                                           split`` rewrites ``split``, ``--restore`` copies
                                           this back)
    valid         (sample,)       bool     false where the file could not be used
    status        (sample,)       str      "ok" or a reason code (xraybatch.decode.REASONS)
    message       (sample,)       str      the decoder's message for failures or warnings
    path          (sample,)       str      source path relative to attrs["source"]
    file_bytes    (sample,)       int64    size of the source file
    sha256        (sample,)       str      content hash of the source file
    orig_height, orig_width, orig_channels, orig_bitdepth (sample,) int32
    orig_format   (sample,)       str      format from the magic bytes (jpeg, png, ...)
    decode_scale  (sample,)       int8     1 full decode, 2/4/8 DCT-reduced decode
    patient_id    (sample,)       str      patient from the scan (file name, --patient-id, table)
    damaged       (sample,)       bool     stored, but its JPEG entropy data is damaged
    dicom_patient_id, study_uid, view_position, sex, age, photometric (sample,) str
    bits_stored   (sample,)       int32    DICOM header facts ("" / 0 / NaN for other sources)
    rescale_slope, rescale_intercept, window_center, window_width (sample,) float64
    window_used, voi_function (sample,) str; voi_center, voi_width (sample,) float64
                                           the window actually applied (xraybatch.render)
    mean, std     (sample,)       float64  per-image pixel mean and std (0 where invalid)
    fp_thumb      (sample, fp_y, fp_x) uint8  content fingerprint: equalised 64 x 64 thumbnail
    fp_hash       (sample, fp_code) uint64 content fingerprint: SimHash codes (.fingerprint)
    dup_pairs     (pair, end)     int64    verified near-duplicate pairs (a < b), written by
    dup_score     (pair,)         float32  xraybatch.dups (attrs: rows searched, score floor)
    findings      (sample, finding) int8   multi-label stores only: 1 positive, 0 negative,
                                           -1 uncertain, -2 not stated (labels is then -1)
    finding       (finding,)      str      multi-label stores only: the finding names
    chunk_done    (chunk,)        bool     written last by each chunk task (resume)
    stats_partials/   (subgroup)           integer sums behind ``stats`` for the rows it
                                           covers (:func:`write_partials`)

Group attributes hold the class and split names, size, interpolation, decode mode, source
root, package version, creation time and ``complete``, which is written last: a store
without ``complete: true`` is from an interrupted run. Format 2 (``format_version: 2``) adds
``version`` and ``history`` (one entry per ingest, append and split, :func:`history_attrs`) and
``n_images``, the committed rows: the root ``zarr.json`` (attributes and consolidated
metadata, one atomic write) is the commit point of an append (:func:`commit`), so readers
of the consolidated metadata see the last complete version while ``append_pending``
records an append in progress.
"""

from __future__ import annotations

from ..location import StoreError, StoreRef
from ..lock import LOCK_NAME
from .chunks import (
    _ALWAYS_WRITTEN,
    _CHUNK_FLAGS,
    StoredChunk,
    chunk_layout,
    format_version,
    read_chunk,
    read_other_chunk,
    source_facts,
)
from .layout import (
    _MOMENTS,
    _OPENED,
    _SCAN_ARRAYS,
    APPEND_PENDING,
    FINGERPRINT_ARRAYS,
    FORMAT_VERSION,
    IMAGES_COMPRESSORS,
    PAIR_ARRAYS,
    PARTIALS,
    RECORD_ARRAYS,
    _all_fill,
    _check_replaceable,
    _clear,
    _create_arrays,
    _findings_arrays,
    _is_empty,
    _split_flags,
    _writable,
    check_target,
    chunk_bounds,
    create,
    n_chunks,
    open_for_chunks,
    open_pending,
    record_arrays,
    scan_chunk,
    scan_values,
    utc_now,
    write_chunk,
)
from .reader import XrayStore
from .versions import (
    PARTIALS_ATTR,
    _save_original,
    _write_partials,
    begin_append,
    commit,
    done_chunks,
    failures,
    grow,
    held_files,
    history_attrs,
    is_ours,
    keep_rows,
    layout_written,
    mark_complete,
    partial_inputs,
    patient_ids_of,
    read_partials,
    same_findings,
    sample_arrays,
    scan_arrays,
    split_token,
    write_pairs,
    write_partials,
    write_rows,
    write_split,
)

__all__ = [
    "APPEND_PENDING", "FINGERPRINT_ARRAYS", "FORMAT_VERSION", "IMAGES_COMPRESSORS", "LOCK_NAME",
    "PAIR_ARRAYS", "PARTIALS", "PARTIALS_ATTR", "RECORD_ARRAYS", "StoreError", "StoreRef",
    "StoredChunk", "XrayStore", "begin_append", "check_target", "chunk_bounds", "chunk_layout",
    "commit", "create", "done_chunks", "failures", "format_version", "grow", "held_files",
    "history_attrs", "is_ours", "keep_rows", "layout_written", "mark_complete", "n_chunks",
    "open_for_chunks", "open_pending", "partial_inputs", "patient_ids_of", "read_chunk",
    "read_other_chunk", "read_partials", "record_arrays", "same_findings", "sample_arrays",
    "scan_arrays", "scan_chunk", "scan_values", "source_facts", "split_token", "write_chunk",
    "utc_now", "write_pairs", "write_partials", "write_rows", "write_split",
    # private, re-exported for the modules and tests that used them from store.py
    "_ALWAYS_WRITTEN", "_CHUNK_FLAGS", "_MOMENTS", "_OPENED", "_SCAN_ARRAYS", "_all_fill",
    "_check_replaceable", "_clear", "_create_arrays", "_findings_arrays", "_is_empty",
    "_save_original", "_split_flags", "_writable", "_write_partials",
]
