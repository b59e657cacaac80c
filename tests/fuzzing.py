"""Structure-aware fuzzing of the readers (JPEG, PNG, DICOM) and of the table path (CSV,
Parquet), shared by tests/test_fuzz.py (a seeded smoke run) and benchmarks/fuzz.py (the long
run).

Three layers:

- **Mutators**: pure functions ``(bytes, Chooser) -> bytes`` that know each format's
  structure (JPEG marker segments, PNG chunks and CRCs, DICOM data elements and encapsulated
  fragments) plus plain bit flips, byte edits and truncations. Every decision is asked of a
  :class:`Chooser`: :class:`RandomChooser` (a seeded ``random.Random``: case ``i`` of format
  ``f`` with seed ``s`` is always the same bytes) or, in the tests, hypothesis' ``data.draw``,
  which then shrinks a failing case to its simplest choices. They do not import xraybatch.
- **Checks**: one case through the entry points a user's file goes through (:func:`check_image`:
  ``decode.load`` as an ingest chunk task calls it, and ``commands.inspect_image`` as
  ``xraybatch inspect`` does; :func:`check_table`: ``scan.scan(files=...)`` as ``ingest
  --files`` does), with a reference decoder's verdict (Pillow for JPEG/PNG, pydicom for DICOM).
- **Runner**: the cases run in one worker process; each case is bounded in time (the worker is
  killed and replaced after ``timeout`` seconds: a hang is a finding, not a stuck test), a
  crash of the worker is a finding too, and the worker's peak RSS is reported.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

IMAGE_FORMATS = ("jpeg", "png", "dicom")
TABLE_FORMATS = ("csv", "parquet")
FORMATS = IMAGE_FORMATS + TABLE_FORMATS
SIZE = 16  # output side: the 32-48 px seeds then take libjpeg's reduced decode in fast mode


# --- choices ---------------------------------------------------------------------------------


class Chooser(Protocol):
    def below(self, n: int) -> int:
        """A number in ``range(n)`` (``n`` >= 1)."""


class RandomChooser:
    """Choices from a seeded ``random.Random``: deterministic for a given seed."""

    def __init__(self, seed: Any) -> None:
        self.rng = random.Random(seed)

    def below(self, n: int) -> int:
        return self.rng.randrange(n)


class DrawChooser:
    """Choices drawn by hypothesis (``st.data()``), which shrinks them towards 0."""

    def __init__(self, data: Any) -> None:
        from hypothesis import strategies as st

        self.data, self.st = data, st

    def below(self, n: int) -> int:
        return self.data.draw(self.st.integers(0, n - 1)) if n > 1 else 0


def pick(ch: Chooser, items: Sequence[Any]) -> Any:
    return items[ch.below(len(items))]


def some_bytes(ch: Chooser, n: int) -> bytes:
    return bytes(ch.below(256) for _ in range(n))


def interesting(ch: Chooser, original: int, bits: int) -> int:
    """A value worth trying in a field of ``bits`` bits that held ``original``."""
    top = (1 << bits) - 1
    values = [0, 1, 2, 3, 7, 8, 12, 15, 16, 17, 255, 256, top, top - 1, top >> 1,
              (top >> 1) + 1, original + 1, original - 1, original * 2, original // 2,
              original * 100, ch.below(top + 1)]
    return pick(ch, values) & top


# --- generic mutations -----------------------------------------------------------------------


def bit_flips(data: bytes, ch: Chooser) -> bytes:
    out = bytearray(data)
    for _ in range(1 + ch.below(8)):
        out[ch.below(len(out))] ^= 1 << ch.below(8)
    return bytes(out)


def byte_set(data: bytes, ch: Chooser) -> bytes:
    out = bytearray(data)
    for _ in range(1 + ch.below(4)):
        out[ch.below(len(out))] = pick(ch, [0, 0xFF, 0x7F, 0x80, 1, ch.below(256)])
    return bytes(out)


def truncate(data: bytes, ch: Chooser) -> bytes:
    return data[:ch.below(len(data))]


def delete_range(data: bytes, ch: Chooser) -> bytes:
    at = ch.below(len(data))
    return data[:at] + data[at + 1 + ch.below(64):]


def insert_range(data: bytes, ch: Chooser) -> bytes:
    at = ch.below(len(data) + 1)
    if ch.below(2):
        start = ch.below(len(data))
        piece = data[start:start + 1 + ch.below(256)]  # a copy of the file's own bytes
    else:
        piece = some_bytes(ch, 1 + ch.below(32))
    return data[:at] + piece + data[at:]


GENERIC: tuple[Callable[[bytes, Chooser], bytes], ...] = (
    bit_flips, byte_set, truncate, delete_range, insert_range)


# --- JPEG --------------------------------------------------------------------------------------

_SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


@dataclass(frozen=True)
class Segment:
    marker: int
    start: int  # of the 0xFF
    end: int  # after the payload


def jpeg_segments(data: bytes) -> tuple[list[Segment], int]:
    """The marker segments up to and including the first SOS, and where its scan data starts
    (``len(data)`` if there is none)."""
    segments, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segments.append(Segment(marker, pos, min(pos + 2 + length, len(data))))
        pos += 2 + length
        if marker == 0xDA:
            return segments, min(pos, len(data))
    return segments, len(data)


def _segment(data: bytes, ch: Chooser, markers: Iterable[int] | None = None) -> Segment | None:
    segments = jpeg_segments(data)[0]
    if markers is not None:
        wanted = set(markers)
        segments = [s for s in segments if s.marker in wanted]
    return pick(ch, segments) if segments else None


def _put(data: bytes, at: int, value: bytes) -> bytes:
    if at < 0 or at + len(value) > len(data):
        return data
    return data[:at] + value + data[at + len(value):]


def j_length(data: bytes, ch: Chooser) -> bytes:
    seg = _segment(data, ch)
    if seg is None:
        return data
    old = int.from_bytes(data[seg.start + 2:seg.start + 4], "big")
    return _put(data, seg.start + 2, interesting(ch, old, 16).to_bytes(2, "big"))


def j_sof(data: bytes, ch: Chooser) -> bytes:
    """Frame header fields: precision, height, width, components, sampling, quant tables."""
    seg = _segment(data, ch, _SOF_MARKERS)
    if seg is None:
        return data
    p = seg.start + 4
    what = ch.below(6)
    if what == 0:
        return _put(data, p, bytes([pick(ch, [0, 1, 2, 7, 8, 12, 16, 255])]))
    if what in (1, 2):  # height or width
        at = p + 1 + 2 * (what - 1)
        old = int.from_bytes(data[at:at + 2], "big")
        return _put(data, at, interesting(ch, old, 16).to_bytes(2, "big"))
    if what == 3:
        return _put(data, p + 5, bytes([pick(ch, [0, 1, 2, 3, 4, 5, 255])]))
    comp = p + 6 + 3 * ch.below(4)
    if what == 4:  # sampling factors (4 bits each)
        return _put(data, comp + 1, bytes([ch.below(16) << 4 | ch.below(16)]))
    return _put(data, comp + 2, bytes([pick(ch, [0, 1, 2, 3, 4, 255])]))  # quant table id


def j_sof_type(data: bytes, ch: Chooser) -> bytes:
    """Another frame type: progressive, lossless, arithmetic, hierarchical."""
    seg = _segment(data, ch, _SOF_MARKERS)
    return data if seg is None else _put(data, seg.start + 1, bytes([pick(ch, _SOF_MARKERS)]))


def j_tables(data: bytes, ch: Chooser) -> bytes:
    """A DQT or DHT byte: table class/id, precision, Huffman counts, symbols, values."""
    seg = _segment(data, ch, (0xDB, 0xC4))
    if seg is None or seg.end - seg.start <= 5:
        return data
    if ch.below(3) == 0:  # the class/id/precision byte
        return _put(data, seg.start + 4, bytes([ch.below(256)]))
    at = seg.start + 5 + ch.below(min(seg.end - seg.start - 5, 40 if ch.below(2) else 1000))
    return _put(data, at, bytes([pick(ch, [0, 1, 0xFF, 16, 17, ch.below(256)])]))


def j_sos(data: bytes, ch: Chooser) -> bytes:
    """Scan header fields: components, selectors, table ids, spectral selection, approximation."""
    seg = _segment(data, ch, (0xDA,))
    if seg is None or seg.end - seg.start <= 5:
        return data
    at = seg.start + 4 + ch.below(seg.end - seg.start - 4)
    return _put(data, at, bytes([pick(ch, [0, 1, 2, 3, 4, 0x11, 0x3F, 0x40, 0xFF,
                                           ch.below(256)])]))


def j_segments(data: bytes, ch: Chooser) -> bytes:
    """Drop, duplicate or move a whole marker segment."""
    segments, _ = jpeg_segments(data)
    if not segments:
        return data
    seg = pick(ch, segments)
    return _rearrange(data, seg.start, seg.end, ch, [s.start for s in segments], seg.start)


def _rearrange(data: bytes, start: int, end: int, ch: Chooser, starts: list[int],
               copy_at: int, floor: int | None = None) -> bytes:
    """Drop ``data[start:end]``, copy it to ``copy_at``, or move it before one of ``starts``
    (no sooner than ``floor``)."""
    piece, rest = data[start:end], data[:start] + data[end:]
    what = ch.below(3)
    if what == 0:
        return rest
    if what == 1:
        return data[:copy_at] + piece + data[copy_at:]
    other = pick(ch, starts)
    at = other if other < start else other - len(piece)
    at = at if floor is None else max(floor, at)
    return rest[:at] + piece + rest[at:]


def j_scan_marker(data: bytes, ch: Chooser) -> bytes:
    """A marker inside the entropy-coded data: RSTn, EOI, SOI, a stray one, a fill byte."""
    _, scan = jpeg_segments(data)
    if scan >= len(data) - 2:
        return data
    at = scan + ch.below(len(data) - 2 - scan)
    marker = pick(ch, [0xD0 + ch.below(8), 0xD9, 0xD8, 0xFF, 0xC4, 0xDA, ch.below(256)])
    return data[:at] + bytes([0xFF, marker]) + data[at:]


def j_premature_end(data: bytes, ch: Chooser) -> bytes:
    """The entropy data cut somewhere and an EOI appended (or not): libjpeg's premature end."""
    _, scan = jpeg_segments(data)
    if scan >= len(data):
        return data
    cut = scan + ch.below(len(data) - scan)
    return data[:cut] + (b"\xff\xd9" if ch.below(3) else b"")


def j_insert_segment(data: bytes, ch: Chooser) -> bytes:
    """A new segment before the scan: DRI, an Exif APP1 with an orientation, a COM, junk APPn."""
    segments, _ = jpeg_segments(data)
    at = pick(ch, [s.start for s in segments] or [2])
    what = ch.below(4)
    if what == 0:
        payload, marker = ch.below(65536).to_bytes(2, "big"), 0xDD  # restart interval
    elif what == 1:
        order = pick(ch, [b"II", b"MM", b"XX"])
        e = "<" if order == b"II" else ">"
        ifd = struct.pack(e + "H", 1) + struct.pack(e + "HHIHH", 0x0112, 3, 1, ch.below(10), 0)
        offset = pick(ch, [8, 0, 0xFFFF, 0xFFFFFFFF, ch.below(64)])
        payload = b"Exif\x00\x00" + order + struct.pack(e + "HI", 42, offset) + ifd
        marker = 0xE1
    elif what == 2:
        payload, marker = some_bytes(ch, ch.below(64)), 0xFE
    else:
        payload, marker = some_bytes(ch, ch.below(64)), 0xE0 + ch.below(16)
    segment = bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:at] + segment + data[at:]


JPEG = (j_length, j_sof, j_sof_type, j_tables, j_sos, j_segments, j_scan_marker,
        j_premature_end, j_insert_segment)


# --- PNG ---------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Chunk:
    start: int
    length: int
    kind: bytes
    end: int  # after the CRC


def png_chunks(data: bytes) -> list[Chunk]:
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = min(pos + 12 + length, len(data))
        chunks.append(Chunk(pos, length, data[pos + 4:pos + 8], end))
        pos = pos + 12 + length
    return chunks


def png_chunk(kind: bytes, payload: bytes, crc: bool = True) -> bytes:
    value = zlib.crc32(kind + payload) if crc else zlib.crc32(kind + payload) ^ 1
    return len(payload).to_bytes(4, "big") + kind + payload + value.to_bytes(4, "big")


def _rebuild(data: bytes, chunk: Chunk, payload: bytes, crc: bool) -> bytes:
    return data[:chunk.start] + png_chunk(chunk.kind, payload, crc) + data[chunk.end:]


def _one(data: bytes, ch: Chooser, kind: bytes | None = None) -> Chunk | None:
    chunks = [c for c in png_chunks(data) if kind is None or c.kind == kind]
    return pick(ch, chunks) if chunks else None


def p_ihdr(data: bytes, ch: Chooser) -> bytes:
    """IHDR fields (width, height, bit depth, colour type, methods, interlace), CRC
    recomputed (mostly) or not."""
    c = _one(data, ch, b"IHDR")
    if c is None or c.length != 13 or c.start + 21 > len(data):
        return data
    payload = bytearray(data[c.start + 8:c.start + 21])
    what = ch.below(7)
    if what < 2:
        old = int.from_bytes(payload[4 * what:4 * what + 4], "big")
        payload[4 * what:4 * what + 4] = interesting(ch, old, 32).to_bytes(4, "big")
    elif what == 2:
        payload[8] = pick(ch, [0, 1, 2, 4, 8, 16, 3, 255])
    elif what == 3:
        payload[9] = pick(ch, [0, 2, 3, 4, 6, 1, 5, 7, 255])
    else:
        payload[what + 6] = pick(ch, [0, 1, 2, 255])  # compression, filter, interlace
    return _rebuild(data, c, bytes(payload), ch.below(5) > 0)


def p_length(data: bytes, ch: Chooser) -> bytes:
    c = _one(data, ch)
    return data if c is None else _put(data, c.start, interesting(ch, c.length, 32)
                                       .to_bytes(4, "big"))


def p_kind(data: bytes, ch: Chooser) -> bytes:
    """A chunk's type: a case bit (critical <-> ancillary), another known type, junk."""
    c = _one(data, ch)
    if c is None:
        return data
    kind = bytearray(c.kind)
    if ch.below(2):
        kind[ch.below(4)] ^= 0x20
    else:
        kind[:] = pick(ch, [b"IDAT", b"IEND", b"IHDR", b"PLTE", b"tRNS", b"acTL", b"\0\0\0\0"])
    return _put(data, c.start + 4, bytes(kind))


def p_crc(data: bytes, ch: Chooser) -> bytes:
    c = _one(data, ch)
    return data if c is None else _put(data, c.end - 4, some_bytes(ch, 4))


def p_chunks(data: bytes, ch: Chooser) -> bytes:
    """Drop, duplicate or move a whole chunk (IEND removed, IDAT before IHDR...)."""
    chunks = png_chunks(data)
    if not chunks:
        return data
    c = pick(ch, chunks)
    return _rearrange(data, c.start, c.end, ch, [k.start for k in chunks], c.end, floor=8)


def p_pixels(data: bytes, ch: Chooser) -> bytes:
    """Valid zlib around damaged scanlines: filter types, bytes, lengths; or a cut zlib
    stream, or the pixel data split over several IDAT chunks."""
    idats = [c for c in png_chunks(data) if c.kind == b"IDAT"]
    if not idats:
        return data
    stream = b"".join(data[c.start + 8:c.start + 8 + c.length] for c in idats)
    try:
        raw = bytearray(zlib.decompress(stream))
    except zlib.error:
        raw = bytearray(stream)
    what = ch.below(5)
    if what == 0 and raw:  # a filter type byte (valid 0-4) or any byte
        raw[ch.below(len(raw))] = pick(ch, [0, 1, 2, 3, 4, 5, 255, ch.below(256)])
        stream = zlib.compress(bytes(raw))
    elif what == 1:  # too few or too many scanline bytes
        if ch.below(2):
            raw = raw[:ch.below(len(raw) + 1)]
        else:
            raw = raw + some_bytes(ch, 1 + ch.below(64))
        stream = zlib.compress(bytes(raw))
    elif what == 2:
        stream = stream[:ch.below(len(stream) + 1)]
    elif what == 3:  # a small stream that inflates far beyond the image
        stream = zlib.compress(bytes(raw) + bytes(1 << (10 + ch.below(12))))
    parts = 1 + ch.below(4)
    step = max(1, len(stream) // parts)
    pieces = [stream[i:i + step] for i in range(0, len(stream), step)] or [b""]
    new = b"".join(png_chunk(b"IDAT", p, ch.below(8) > 0) for p in pieces)
    return data[:idats[0].start] + new + data[idats[-1].end:]


def p_insert(data: bytes, ch: Chooser) -> bytes:
    """A new chunk: PLTE, tRNS, gAMA, iCCP/zTXt with junk zlib, tEXt, an early IEND, APNG."""
    chunks = png_chunks(data)
    at = pick(ch, [c.start for c in chunks] + [len(data)]) if chunks else len(data)
    kind, payload = pick(ch, [
        (b"PLTE", some_bytes(ch, 3 * ch.below(300))), (b"tRNS", some_bytes(ch, ch.below(300))),
        (b"gAMA", some_bytes(ch, 4)), (b"iCCP", b"icc\x00\x00" + some_bytes(ch, 40)),
        (b"zTXt", b"k\x00\x00" + zlib.compress(bytes(1 << 16))), (b"tEXt", b"k\x00v"),
        (b"IEND", b""), (b"acTL", some_bytes(ch, 8)), (b"sBIT", some_bytes(ch, 1 + ch.below(4)))])
    return data[:at] + png_chunk(kind, payload, ch.below(6) > 0) + data[at:]


PNG = (p_ihdr, p_length, p_kind, p_crc, p_chunks, p_pixels, p_insert)


# --- DICOM -------------------------------------------------------------------------------------

_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                 b"TM UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
UNDEFINED = 0xFFFFFFFF
SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


@dataclass(frozen=True)
class Element:
    tag: int  # group << 16 | element
    vr: bytes  # b"" for implicit VR
    start: int
    length_at: int
    length_size: int  # 2 or 4
    value: int  # start of the value
    length: int  # as declared
    end: int  # after the value (after the sequence delimiter for undefined lengths)


def dicom_elements(data: bytes) -> list[Element]:
    """The top-level data elements (file meta and data set), explicit or implicit VR little
    endian, each found by whether its VR bytes are a VR. Undefined lengths end after the next
    sequence delimiter (enough for the files made here: no nested undefined sequences)."""
    pos = 132 if data[128:132] == b"DICM" else 0
    out = []
    while pos + 8 <= len(data):
        tag = int.from_bytes(data[pos:pos + 2], "little") << 16 | int.from_bytes(
            data[pos + 2:pos + 4], "little")
        vr = data[pos + 4:pos + 6]
        if vr in _VRS and vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            at, size, head = pos + 8, 4, 12
        elif vr in _VRS:
            at, size, head = pos + 6, 2, 8
        else:
            vr, at, size, head = b"", pos + 4, 4, 8
        length = int.from_bytes(data[at:at + size], "little")
        value = pos + head
        if length == UNDEFINED:
            found = data.find(SEQ_END, value)
            end = len(data) if found < 0 else found + 8
        else:
            end = min(value + length, len(data))
        out.append(Element(tag, vr, pos, at, size, value, length, end))
        pos = end if length == UNDEFINED else value + length
    return out


def _element(data: bytes, tag: int) -> Element | None:
    return next((e for e in dicom_elements(data) if e.tag == tag), None)


def set_value(data: bytes, tag: int, value: bytes, vr: bytes = b"") -> bytes:
    """Replace (or insert, in tag order) an element's value, with a matching length."""
    value = value + (b"\0" if len(value) % 2 else b"")
    elements = dicom_elements(data)
    old = next((e for e in elements if e.tag == tag), None)
    if old is not None:
        if old.length_size == 2 and len(value) > 0xFFFF:
            return data
        head = data[old.start:old.length_at] + len(value).to_bytes(old.length_size, "little")
        return data[:old.start] + head + value + data[old.end:]
    after = next((e for e in elements if e.tag > tag), None)
    at = after.start if after else len(data)
    explicit = after.vr != b"" if after else True
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if explicit and vr:
        head += vr + (b"\0\0" + struct.pack("<I", len(value)) if vr in _LONG_VRS
                      else struct.pack("<H", len(value)))
    else:
        head += struct.pack("<I", len(value))
    return data[:at] + head + value + data[at:]


_US_TAGS = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280100: "BitsAllocated",
            0x00280101: "BitsStored", 0x00280102: "HighBit", 0x00280002: "SamplesPerPixel",
            0x00280103: "PixelRepresentation", 0x00280006: "PlanarConfiguration"}
_TEXT_TAGS: dict[int, tuple[bytes, list[bytes]]] = {
    0x00280004: (b"CS", [b"MONOCHROME1", b"MONOCHROME2", b"RGB", b"YBR_FULL", b"YBR_FULL_422",
                         b"PALETTE COLOR", b"", b"monochrome2", b"\xff\xfe"]),
    0x00020010: (b"UI", [b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.2",
                         b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.1.2.4.50",
                         b"1.2.840.10008.1.2.4.51", b"1.2.840.10008.1.2.4.57",
                         b"1.2.840.10008.1.2.4.70", b"1.2.840.10008.1.2.4.80",
                         b"1.2.840.10008.1.2.4.90", b"1.2.840.10008.1.2.4.91",
                         b"1.2.840.10008.1.2.5", b"1.2.840.10008.1.2.4.100", b"", b"1.2.3",
                         b"1.2.840.10008.1.2.4.50\x00\x00"]),
    0x00280008: (b"IS", [b"0", b"1", b"2", b"-1", b"abc", b"1e9", b"99999999", b""]),
    0x00281050: (b"DS", [b"nan", b"inf", b"-inf", b"1e400", b"0", b"-0", b"abc", b"1\\2\\",
                         b"\\", b"40\\400", b""]),
    0x00281051: (b"DS", [b"nan", b"0", b"-1", b"1e-320", b"1e400", b"abc", b"", b"1\\"]),
    0x00281052: (b"DS", [b"nan", b"inf", b"-1e308", b"abc", b"", b"0"]),
    0x00281053: (b"DS", [b"nan", b"0", b"-1", b"1e308", b"inf", b"abc", b""]),
    0x00281056: (b"CS", [b"SIGMOID", b"LINEAR_EXACT", b"LINEAR", b"bogus", b""]),
    0x00100020: (b"LO", [b"", b"\x00", "\u00e9".encode(), b"\xff\xfe", b"a\\b", b"x" * 300]),
}
PIXEL_DATA = 0x7FE00010


def d_length(data: bytes, ch: Chooser) -> bytes:
    elements = dicom_elements(data)
    if not elements:
        return data
    e = pick(ch, elements)
    bits = 8 * e.length_size
    new = UNDEFINED if bits == 32 and ch.below(8) == 0 else interesting(ch, e.length, bits)
    return _put(data, e.length_at, new.to_bytes(e.length_size, "little"))


def d_vr(data: bytes, ch: Chooser) -> bytes:
    explicit = [e for e in dicom_elements(data) if e.vr]
    if not explicit:
        return data
    e = pick(ch, explicit)
    return _put(data, e.start + 4, pick(ch, sorted(_VRS) + [b"XX", b"\0\0"]))


def d_image_value(data: bytes, ch: Chooser) -> bytes:
    """Rows, Columns, BitsAllocated/Stored, HighBit, SamplesPerPixel, PixelRepresentation..."""
    tag = pick(ch, sorted(_US_TAGS))
    old = _element(data, tag)
    original = int.from_bytes(data[old.value:old.value + 2], "little") if old else 0
    if old is not None and old.length == 2 and ch.below(4):
        return _put(data, old.value, interesting(ch, original, 16).to_bytes(2, "little"))
    return set_value(data, tag, interesting(ch, original, 16).to_bytes(2, "little"), b"US")


def d_text_value(data: bytes, ch: Chooser) -> bytes:
    """Photometric interpretation, transfer syntax, frames, window, rescale, patient id."""
    tag = pick(ch, sorted(_TEXT_TAGS))
    vr, values = _TEXT_TAGS[tag]
    return set_value(data, tag, pick(ch, values), vr)


def d_drop(data: bytes, ch: Chooser) -> bytes:
    elements = dicom_elements(data)
    key = [e for e in elements if e.tag in _US_TAGS or e.tag in _TEXT_TAGS
           or e.tag == PIXEL_DATA]
    e = pick(ch, key if key and ch.below(3) else elements) if elements else None
    return data if e is None else data[:e.start] + data[e.end:]


def _items(data: bytes, e: Element) -> list[tuple[int, int]]:
    """(start, end) of the items of an encapsulated pixel data element (BOT first)."""
    items, pos = [], e.value
    while pos + 8 <= len(data) and data[pos:pos + 4] == b"\xfe\xff\x00\xe0":
        n = int.from_bytes(data[pos + 4:pos + 8], "little")
        items.append((pos, min(pos + 8 + n, len(data))))
        pos += 8 + n
    return items


def _item(payload: bytes) -> bytes:
    payload += b"\0" if len(payload) % 2 else b""
    return b"\xfe\xff\x00\xe0" + struct.pack("<I", len(payload)) + payload


def d_pixels(data: bytes, ch: Chooser) -> bytes:
    """Pixel data: native cut or grown; encapsulated: item lengths, the offset table,
    fragments split, dropped or missing their delimiter, the JPEG inside mutated."""
    e = _element(data, PIXEL_DATA)
    if e is None:
        return data
    if e.length != UNDEFINED:  # native
        if ch.below(2):
            new = e.value + ch.below(max(1, e.length))
            return data[:new] + data[e.end:] if ch.below(2) else data[:new]
        return data[:e.end] + some_bytes(ch, 2 * (1 + ch.below(64))) + data[e.end:]
    items = _items(data, e)
    if len(items) < 2:
        return data
    (bot_start, bot_end), fragments = items[0], items[1:]
    frame = b"".join(data[s + 8:t] for s, t in fragments)
    what = ch.below(6)
    if what == 0:  # an item length
        s, _ = pick(ch, items)
        old = int.from_bytes(data[s + 4:s + 8], "little")
        return _put(data, s + 4, interesting(ch, old, 32).to_bytes(4, "little"))
    if what == 1:  # offset table entries
        bot = b"".join(struct.pack("<I", pick(ch, [0, 1, 8, UNDEFINED, ch.below(1 << 20)]))
                       for _ in range(1 + ch.below(3)))
        return data[:bot_start] + _item(bot) + data[bot_end:]
    if what == 2:  # no sequence delimiter: the file ends after the last fragment
        return data[:fragments[-1][1]]
    if what == 3:  # the JPEG inside, mutated as a .jpeg file would be
        frame = pick(ch, JPEG + GENERIC)(frame, ch) if frame else frame
    cuts = sorted(ch.below(len(frame) + 1) for _ in range(ch.below(3)))
    pieces = [frame[a:b] for a, b in zip([0, *cuts], [*cuts, len(frame)], strict=True)]
    if what == 4 and len(pieces) > 1:
        del pieces[ch.below(len(pieces))]  # a lost fragment
    body = data[bot_start:bot_end] + b"".join(_item(p) for p in pieces)
    return data[:bot_start] + body + data[fragments[-1][1]:]


def d_preamble(data: bytes, ch: Chooser) -> bytes:
    """The preamble and DICM removed (a legacy file), damaged, or the file meta dropped."""
    if data[128:132] != b"DICM":
        return b"\0" * 128 + b"DICM" + data if ch.below(2) else data
    what = ch.below(3)
    if what == 0:
        return data[132:]
    if what == 1:
        return _put(data, 128 + ch.below(4), some_bytes(ch, 1))
    body = [e for e in dicom_elements(data) if e.tag >> 16 != 2]
    return data[:132] + data[body[0].start:] if body else data


DICOM = (d_length, d_vr, d_image_value, d_text_value, d_drop, d_pixels, d_preamble)

MUTATORS: dict[str, tuple[Callable[[bytes, Chooser], bytes], ...]] = {
    "jpeg": JPEG, "png": PNG, "dicom": DICOM}


def mutate(fmt: str, data: bytes, ch: Chooser) -> bytes:
    """One to three stacked mutations, three in four of them structure-aware."""
    for _ in range(1 + ch.below(3)):
        if not data:
            break
        mutator = pick(ch, MUTATORS[fmt]) if ch.below(4) else pick(ch, GENERIC)
        data = mutator(data, ch)
    return data


# --- seeds -----------------------------------------------------------------------------------


def _picture(seed: int, height: int, width: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [(60 + 120 * np.sin((x + 7 * c) / 5.0) ** 2 + 50 * y / height
               + rng.normal(0, 12, (height, width))) for c in range(channels)]
    image = np.clip(np.dstack(planes), 0, 255).astype(np.uint8)
    return image[..., 0] if channels == 1 else image


def _encode(ext: str, image: np.ndarray, *params: int) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def _exif(data: bytes, orientation: int) -> bytes:
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00II" + struct.pack("<HI", 42, 8) + ifd + b"\0\0\0\0"
    return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


def jpeg_seeds() -> list[bytes]:
    import cv2

    gray = _picture(1, 40, 32)
    return [_encode(".jpg", gray, cv2.IMWRITE_JPEG_QUALITY, 90),
            _encode(".jpg", _picture(2, 36, 44, 3), cv2.IMWRITE_JPEG_QUALITY, 80),
            _encode(".jpg", gray, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
            _encode(".jpg", _picture(3, 48, 40), cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
            _exif(_encode(".jpg", _picture(4, 34, 40)), 6)]


def png_seeds() -> list[bytes]:
    gray16 = (_picture(5, 30, 36).astype(np.uint16) * 257 + 3)
    seeds = [_encode(".png", _picture(6, 34, 40)), _encode(".png", gray16),
             _encode(".png", _picture(7, 32, 36, 3)), _encode(".png", _picture(8, 32, 32, 4))]
    try:
        from PIL import Image
    except ImportError:  # Pillow writes the palette seed only
        return seeds
    out = io.BytesIO()
    Image.fromarray(_picture(9, 32, 40)).quantize(16).save(out, "PNG")
    return [*seeds, out.getvalue()]


def dicom_seeds() -> list[bytes]:
    from unittest import mock

    import pydicom

    uids = (f"1.2.826.0.1.3680043.10.543.{i}" for i in range(1, 1000))
    with mock.patch("pydicom.uid.generate_uid", lambda *a, **k: next(uids)):
        return _dicom_seeds(pydicom)  # the same bytes in every process: UIDs fixed


def _dicom_seeds(pydicom: Any) -> list[bytes]:
    from xraybatch.synth_dicom import to_dicom

    stored = _picture(10, 40, 34).astype(np.uint16) * 16 + 8
    native = to_dicom(stored, bits_stored=12, intercept=-1024.0,
                      window=(1024.0, 4096.0, "LINEAR"), patient_id="P1")
    mono1 = to_dicom(65535 - stored * 16, photometric="MONOCHROME1", bits_stored=16)
    encapsulated = to_dicom(jpeg=jpeg_seeds()[0], window=(128.0, 256.0, "SIGMOID"))
    ds = pydicom.dcmread(io.BytesIO(native))
    ds.compress(pydicom.uid.RLELossless, generate_instance_uid=False)
    rle = io.BytesIO()
    ds.save_as(rle, enforce_file_format=True)
    return [native, mono1, encapsulated, rle.getvalue(), legacy_dicom(native)]


def legacy_dicom(data: bytes, implicit: bool = True) -> bytes:
    """A file as an ACR-NEMA-style exporter writes it: no preamble, no file meta."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.file_meta
    ds.preamble = None
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, implicit_vr=implicit, little_endian=True,
                     enforce_file_format=False)
    return out.getvalue()


SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "jpeg": jpeg_seeds, "png": png_seeds, "dicom": dicom_seeds}


def image_case(fmt: str, seeds: Sequence[bytes], ch: Chooser) -> bytes:
    return mutate(fmt, pick(ch, seeds), ch)


# --- reference decoders ------------------------------------------------------------------------


def reference_refuses(fmt: str, data: bytes) -> str:
    """Why the reference decoder refuses ``data`` ("" if it decodes it): Pillow for JPEG and
    PNG (libjpeg, zlib and its own PNG reader, CRCs checked), pydicom for DICOM."""
    try:
        if fmt == "dicom":
            _pydicom_pixels(data)
        else:
            from PIL import Image

            if fmt == "png":
                data = _critical_chunks(data)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    except Exception as e:  # any refusal, whatever the library's error type
        return f"{type(e).__name__}: {e}"[:200]
    return ""


def _critical_chunks(data: bytes) -> bytes:
    """The PNG with its image chunks only (IHDR, PLTE of a palette image, IDAT, IEND), for
    Pillow.

    The stored grey pixels come from these chunks alone (tRNS only adds alpha, the PLTE of a
    colour image only suggests colours). libpng (under OpenCV) skips an ancillary chunk that
    is damaged (a wrong length, a bad CRC, a bogus APNG acTL) as the PNG specification
    allows; Pillow refuses the whole file for some of them, which would judge the metadata,
    not the image.
    """
    chunks = png_chunks(data)
    image = set(_IMAGE_CHUNKS)
    if len(data) > 25 and data[25] != 3:  # not a palette image: PLTE only suggests colours
        image.discard(b"PLTE")
    if all(c.kind in image for c in chunks):
        return data
    return data[:8] + b"".join(data[c.start:c.end] for c in chunks if c.kind in image)


_IMAGE_CHUNKS = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


def _pydicom_pixels(data: bytes) -> None:
    import pydicom
    from pydicom import uid

    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit is not False
                                          else uid.ExplicitVRLittleEndian)
    if data[128:132] != b"DICM" and "PixelData" in ds:  # ACR-NEMA: one grey sample by default
        if "SamplesPerPixel" not in ds:
            ds.SamplesPerPixel = 1
        if "PhotometricInterpretation" not in ds and ds.SamplesPerPixel == 1:
            ds.PhotometricInterpretation = "MONOCHROME2"
    ds.pixel_array  # noqa: B018  (decoding is the check)


# --- checks ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one case came to."""

    fmt: str
    case: int
    ingest: str = ""  # "ok", "ok+damaged" or a reason code
    inspect: str = ""  # "ok" or a reason code ("-" for tables)
    reference: str = "-"  # why the reference refuses ("" decodes it, "-" not asked: the
    # reference decoder is asked about every image xraybatch stores, no other)
    problems: list[str] = field(default_factory=list)  # broken invariants, with tracebacks
    seconds: float = 0.0
    rss_mb: float = 0.0  # the worker's peak RSS after the case
    size: int = 0


def _valid_code(code: str) -> bool:
    from xraybatch import decode

    return code in decode.REASONS


def check_image(fmt: str, data: bytes, path: Path, reference: bool = True) -> Outcome:
    """One image through ingest's reader (``decode.load``, as a chunk task calls it) and
    ``inspect``'s (``commands.inspect_image``); the invariants, and the reference's verdict."""
    from xraybatch import commands, decode

    out = Outcome(fmt, -1, size=len(data))
    path.write_bytes(data)
    try:
        image, record = decode.load(path, size=SIZE, mode="fast")
    except Exception:  # load must turn every bad file into a reason code
        out.problems.append("ingest traceback: " + traceback.format_exc())
    else:
        out.ingest = ("ok+damaged" if record.damaged else "ok") if record.valid else record.status
        if record.valid:
            if image is None or image.shape != (SIZE, SIZE) or image.dtype != np.uint8:
                out.problems.append(f"stored image of shape {getattr(image, 'shape', None)}")
        elif image is not None or not _valid_code(record.status) or "\n" in record.message:
            out.problems.append(f"bad record: {record.status!r} {record.message!r}")
    try:
        info = commands.inspect_image(path)
        out.inspect = "ok" if info["height"] and info["width"] else "empty image"
    except decode.ImageError as e:
        out.inspect = e.code
        if not _valid_code(e.code) or "\n" in str(e):
            out.problems.append(f"inspect: bad error {e.code!r} {e}")
    except Exception:
        out.problems.append("inspect traceback: " + traceback.format_exc())
    if len(data) % 32 == 0:  # one case in 32 also through the command line itself
        _check_cli(path, out)
    stored = out.ingest.startswith("ok") or out.inspect == "ok"
    out.reference = reference_refuses(fmt, data) if reference and stored else "-"
    if out.reference not in ("", "-"):
        out.problems.append(f"stored as valid, the reference refuses it: {out.reference}")
    return out


def _check_cli(path: Path, out: Outcome) -> None:
    """``xraybatch inspect FILE``: exit status 0, or 2 with one line on stderr naming the
    reason code that ``inspect_image`` gave."""
    import contextlib

    from xraybatch import cli

    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = cli.main(["inspect", str(path), "--json"])
    except BaseException:  # SystemExit included: main returns its status
        out.problems.append("cli traceback: " + traceback.format_exc())
        return
    lines = stderr.getvalue().splitlines()
    if out.inspect == "ok":
        if status != 0 or lines:
            out.problems.append(f"cli: status {status} for a readable file: {lines}")
    elif status != 2 or len(lines) != 1 or not lines[0].endswith(f"[{out.inspect}]"):
        out.problems.append(f"cli: status {status}, stderr {lines} for {out.inspect}")


# --- tables ------------------------------------------------------------------------------------

#: The image files below a table fuzz root (relative paths); the cells name them, or not.
TABLE_FILES = ("a.png", "sub/b.jpeg", "sub/deeper/c.png", "caf\u00e9 x.png",
               "\u65e5\u672c/\u80f8.jpeg", "UPPER.PNG", "dup.png", "other/dup.png")
#: Cell values that climb out of the root: the known bug fixed on branch i18-lock.
CLIMBING = ("../outside.png", "sub/../../outside.png", "../../../../etc/passwd",
            "./../outside.png")


def table_root(root: Path) -> Path:
    """The images a fuzzed table points at, and one outside the root to catch escapes."""
    root.mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(TABLE_FILES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ext = ".jpg" if rel.lower().endswith(".jpeg") else ".png"
        (root / rel).write_bytes(_encode(ext, _picture(20 + i, 12, 10)))
    (root.parent / "outside.png").write_bytes(_encode(".png", _picture(40, 12, 10)))
    return root


def _path_cell(ch: Chooser, root: Path) -> Any:
    import unicodedata

    name = pick(ch, TABLE_FILES)
    options = [name, name, "./" + name, f" {name} ", unicodedata.normalize("NFD", name),
               name.upper(), name.replace("/", "\\"), name.replace("/", "//"),
               str(root / name), str(root.parent / "outside.png"), "/etc/passwd",
               "s3://bucket/" + name, "", None, 42, 3.5, "x" * 300, name + "\x00",
               name + "\n", "\t", "sub/", ".", "..." + name, "~/" + name,
               "file://" + str(root / name), "no_such.png", name.encode("utf-8"),
               "x://" + name, "sub/s3://" + name, "C:\\" + name, *list(CLIMBING) * 4]
    return pick(ch, options)


def _label_cell(ch: Chooser) -> Any:
    return pick(ch, ["NORMAL", "PNEUMONIA", "NORMAL", " NORMAL ", "", None, 0, 1, 2.5,
                     float("nan"), "a|b", "Effusion|Mass", "|", "\u80ba\u708e", "x" * 200,
                     "1,2", '"quoted"', True])


def _split_cell(ch: Chooser) -> Any:
    return pick(ch, ["train", "val", "test", "valid", "Validation", " TEST ", "", None,
                     "training", 1, "train\n", "dev"])


def table_case(fmt: str, root: Path, ch: Chooser) -> tuple[Path, dict[str, Any]]:
    """Write one fuzzed table (CSV or Parquet) next to ``root``; return it and the column
    mapping to scan it with. Its cells include the inputs of the two table failures of
    issue 18 (paths climbing out of the root, a Parquet index that repeats, as
    ``pd.concat([train, valid])`` writes it)."""
    import pandas as pd

    n = 1 + ch.below(8)
    frame = pd.DataFrame({"path": [_path_cell(ch, root) for _ in range(n)],
                          "label": [_label_cell(ch) for _ in range(n)],
                          "split": [_split_cell(ch) for _ in range(n)],
                          "patient": [pick(ch, ["p1", "", None, 7, "p\u00e9"]) for _ in
                                      range(n)]})
    columns: dict[str, Any] = {"path": "path", "label": "label"}
    if ch.below(2):
        columns["split"] = "split"
    if ch.below(2):
        columns["patient"] = "patient"
    if ch.below(4) == 0:
        columns = {"path": "path", "labels": "label", "sep": pick(ch, ["|", ",", ";"])}
    if ch.below(5) == 0:  # an extra column, or one named like a mapped one
        frame[pick(ch, ["extra", "label ", "Unnamed: 0", "path.1"])] = range(n)
    if ch.below(6) == 0:
        frame = frame.drop(columns=pick(ch, list(frame.columns)))
    suffix = ".parquet" if fmt == "parquet" else pick(ch, [".csv", ".csv", ".tsv", ".csv.gz"])
    table = root.parent / f"table{suffix}"
    if fmt == "parquet":
        _write_parquet(frame, table, ch)
    else:
        _write_csv(frame, table, ch)
    return table, columns


def _write_parquet(frame: Any, table: Path, ch: Chooser) -> None:
    import pandas as pd

    what = ch.below(6)
    if what == 0:  # mixed types left as they are (pyarrow refuses some: then as text)
        pass
    elif what == 1:
        frame = frame.astype({c: "category" for c in frame.columns if ch.below(2)})
    else:
        frame = frame.astype(str).where(frame.notna(), None)
    if ch.below(3) == 0:
        frame = pd.concat([frame, frame.iloc[:1 + ch.below(len(frame))]])
    elif ch.below(4) == 0:
        frame.index = pick(ch, [pd.RangeIndex(5, 5 + len(frame)),
                                pd.Index([f"r{i}" for i in range(len(frame))])])
    try:
        frame.to_parquet(table, index=None if ch.below(2) else bool(ch.below(2)))
    except Exception:  # pyarrow cannot write this mix of types: write it as text
        frame.astype(str).to_parquet(table)


def _write_csv(frame: Any, table: Path, ch: Chooser) -> None:
    frame = frame.map(lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
    sep = "\t" if table.name.endswith(".tsv") else ","
    encoding = pick(ch, ["utf-8", "utf-8", "utf-8-sig", "latin-1", "utf-16"])
    try:
        text = frame.to_csv(index=bool(ch.below(4) == 0), sep=sep,
                            lineterminator=pick(ch, ["\n", "\r\n"]))
        raw = text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")
    except (UnicodeEncodeError, UnicodeError):
        raw = text.encode("utf-8", "replace")
    what = ch.below(8)
    if what == 0:
        raw = raw[:ch.below(len(raw) + 1)]  # cut inside a row or a quoted cell
    elif what == 1:
        raw = raw.replace(b",", b",,", 1)  # a ragged row
    elif what == 2:
        raw = raw + b'"unterminated\n'
    if table.name.endswith(".gz"):
        import gzip

        raw = gzip.compress(raw)
    table.write_bytes(raw)


def check_table(fmt: str, table: Path, root: Path, columns: dict[str, Any]) -> Outcome:
    """A table through the table path ``ingest --files`` takes (``scan.scan``): a one-line
    ScanError or a manifest whose every row names a file below the root, once, with a known
    split and label."""
    from xraybatch import decode
    from xraybatch.scan import ScanError, scan
    from xraybatch.sources import tables

    out = Outcome(fmt, -1, inspect="-", reference="-", size=table.stat().st_size)
    try:
        found = scan(str(root), files=str(table), columns=tables.columns_for(None, **columns))
    except ScanError as e:
        out.ingest = "ScanError"
        if "\n" in str(e):
            out.problems.append(f"ScanError of several lines: {e!r}")
        return out
    except Exception:
        out.problems.append("table traceback: " + traceback.format_exc())
        return out
    out.ingest = "scanned"
    manifest = found.manifest
    if manifest.path.duplicated().any():
        out.problems.append("a file named twice in the manifest")
    if not set(manifest.split) <= {"train", "val", "test", "none"}:
        out.problems.append(f"unknown splits {set(manifest.split)}")
    if set(found.skipped.reason) - set(tables.REASONS):
        out.problems.append(f"unknown skip reasons {set(found.skipped.reason)}")
    base = os.path.realpath(root)
    for rel in manifest.path:  # each row as ingest reads it: an image or a reason code
        try:
            _, record = decode.load(f"{base}/{rel}", size=SIZE)
        except Exception:
            out.problems.append("table row traceback: " + traceback.format_exc())
            continue
        if not record.valid and not _valid_code(record.status):
            out.problems.append(f"table row {rel!r}: bad record {record.status!r}")
        full = os.path.normpath(os.path.join(base, rel))
        if (not isinstance(rel, str) or os.path.isabs(rel)
                or os.path.commonpath([base, full]) != base):
            out.problems.append(f"manifest path outside the root: {rel!r}")
    return out


# --- the worker and the runner -----------------------------------------------------------------


def _case_rng_seed(seed: int, fmt: str, index: int) -> str:
    return f"{seed}:{fmt}:{index}"


class CaseMaker:
    """Builds and checks cases by (format, index): what a worker process runs."""

    def __init__(self, workdir: Path, seed: int = 0, reference: bool = True) -> None:
        self.workdir, self.seed, self.reference = workdir, seed, reference
        self.seeds = {fmt: make() for fmt, make in SEEDS.items()}
        self.root = table_root(workdir / "tables" / "root")

    def case_bytes(self, fmt: str, index: int) -> bytes:
        ch = RandomChooser(_case_rng_seed(self.seed, fmt, index))
        return image_case(fmt, self.seeds[fmt], ch)

    def run(self, fmt: str, index: int, data: bytes | None = None) -> Outcome:
        t0 = time.perf_counter()
        if fmt in IMAGE_FORMATS:
            data = self.case_bytes(fmt, index) if data is None else data
            out = check_image(fmt, data, self.workdir / f"case.{fmt}", self.reference)
        else:
            ch = RandomChooser(_case_rng_seed(self.seed, fmt, index))
            table, columns = table_case(fmt, self.root, ch)
            out = check_table(fmt, table, self.root, columns)
        out.case, out.seconds = index, time.perf_counter() - t0
        out.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out


def _serve(conn: Any, workdir: str, seed: int, reference: bool) -> None:
    import warnings

    import cv2

    warnings.simplefilter("ignore")  # pydicom and Pillow warn about every damaged file
    cv2.setNumThreads(1)
    maker = CaseMaker(Path(workdir), seed, reference)
    conn.send("ready")
    while True:
        request = conn.recv()
        if request is None:
            return
        try:
            out = maker.run(*request)
        except Exception:  # the harness itself (writing a table...): reported, not a crash
            out = Outcome(request[0], request[1],
                          problems=["harness error: " + traceback.format_exc()])
        conn.send(out)


class Runner:
    """Cases in one worker process, each bounded by ``timeout`` seconds (a hang kills and
    replaces the worker and is recorded as a problem; so is a crash)."""

    def __init__(self, seed: int = 0, timeout: float = 20.0, reference: bool = True) -> None:
        self.seed, self.timeout, self.reference = seed, timeout, reference
        # Every case is written to a file and read back: on tmpfs when there is one (/tmp on
        # a virtual disk costs more than the decoding of a small case).
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._tmp = tempfile.TemporaryDirectory(prefix="xraybatch-fuzz-", dir=shm)
        self._context = multiprocessing.get_context("spawn")
        self._proc: Any = None
        self._conn: Any = None
        self.peak_rss_mb = 0.0

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._proc = self._context.Process(
            target=_serve, args=(child, self._tmp.name, self.seed, self.reference),
            daemon=True)
        self._proc.start()
        child.close()
        try:
            ready = parent.poll(120) and parent.recv() == "ready"
        except EOFError:
            ready = False
        if not ready:
            self._stop()
            raise RuntimeError("the fuzz worker did not start")
        self._conn = parent

    def _stop(self) -> None:
        if self._proc is not None and self._proc.pid is not None:
            self._proc.kill()
            self._proc.join(10)
            self._proc = self._conn = None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.send(None)
                self._proc.join(5)
            except (OSError, ValueError):
                pass
        self._stop()
        self._tmp.cleanup()

    def run(self, fmt: str, index: int, data: bytes | None = None) -> Outcome:
        if self._proc is None:
            self._start()
        t0 = time.perf_counter()
        self._conn.send((fmt, index, data))
        try:
            if self._conn.poll(self.timeout):
                out = self._conn.recv()
                self.peak_rss_mb = max(self.peak_rss_mb, out.rss_mb)
                return out
            problem = f"hang: no result after {self.timeout} s"
        except EOFError:
            problem = f"crash: the worker died (exit code {self._proc.exitcode})"
        self._stop()
        return Outcome(fmt, index, problems=[problem], seconds=time.perf_counter() - t0)

    def run_many(self, cases: Iterable[tuple[str, int]]) -> Report:
        report = Report()
        for fmt, index in cases:
            report.add(self.run(fmt, index))
        report.peak_rss_mb = self.peak_rss_mb
        return report


@dataclass
class Report:
    """Figures of a run: cases per format, outcomes, the slowest case, failures."""

    cases: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # (format, ingest outcome)
    checked_by_reference: Counter = field(default_factory=Counter)  # stored images
    failures: list[Outcome] = field(default_factory=list)
    slowest: Outcome | None = None
    peak_case: Outcome | None = None
    seconds: float = 0.0
    peak_rss_mb: float = 0.0
    all: list[Outcome] = field(default_factory=list, repr=False)

    def add(self, out: Outcome) -> None:
        self.all.append(out)
        self.cases[out.fmt] += 1
        self.outcomes[(out.fmt, out.ingest or "-")] += 1
        if out.reference != "-":
            self.checked_by_reference[out.fmt] += 1
        if out.problems:
            self.failures.append(out)
        if self.slowest is None or out.seconds > self.slowest.seconds:
            self.slowest = out
        if self.peak_case is None or out.rss_mb > self.peak_case.rss_mb:
            self.peak_case = out  # the case that raised the worker's peak RSS last
        self.seconds += out.seconds

    def count(self, word: str) -> int:
        return sum(any(p.startswith(word) for p in f.problems) for f in self.failures)


def schedule(n: int, formats: Sequence[str] = FORMATS, start: int = 0, image_turns: int = 6
             ) -> list[tuple[str, int]]:
    """``n`` cases (format, index) over ``formats`` in turn: ``image_turns`` cases of each
    image format for one of each table format (a table case costs ten image cases: pandas).
    Indexes count from ``start`` per format."""
    cycle = [f for f in formats for _ in range(1 if f in TABLE_FORMATS else image_turns)]
    counts: Counter = Counter()
    cases = []
    for i in range(n):
        fmt = cycle[i % len(cycle)]
        cases.append((fmt, start + counts[fmt]))
        counts[fmt] += 1
    return cases


def minimize(data: bytes, still_fails: Callable[[bytes], bool]) -> bytes:
    """The shortest input found (removing ever smaller byte ranges) that still fails."""
    step = max(1, len(data) // 2)
    while step >= 1:
        at, shrunk = 0, False
        while at < len(data):
            candidate = data[:at] + data[at + step:]
            if candidate and still_fails(candidate):
                data, shrunk = candidate, True
            else:
                at += step
        if not shrunk:
            step //= 2
    return data


if __name__ == "__main__":  # a quick look: python tests/fuzzing.py FORMAT INDEX
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with Runner() as runner:
        print(runner.run(sys.argv[1], int(sys.argv[2])))
