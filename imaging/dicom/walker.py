"""The element walker: a header parser for classic single-frame files held in memory.

Classic single-frame files (nearly all files of an export) go through this small walker, which reads
the tag/length headers of the data set, keeps the ~45 elements needed here and jumps over everything
else (vendor private groups, sequences); values are decoded only when asked for. That is several
times faster than `pydicom.dcmread(stop_before_pixels=True)`, which builds a DataElement for every
element. Enhanced multi-frame objects (timing and geometry live in nested functional groups),
big-endian, deflated and preamble-less files, and anything the walker finds odd, raise `_Fallback`
and go through pydicom (`reader`). Both paths feed the same `header.header_from_dataset`, and a test
holds them equal on every real file.
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import pydicom

from imaging.dicom.tags import (
    _KEYWORD_TAG,
    _PRIVATE,
    _PRIVATE_GROUPS,
    _PRIVATE_OFFSETS,
    _WANTED,
    ENHANCED_MR_SOP_CLASSES,
    MR_IMAGE_SOP_CLASSES,
    non_image_kind,
)
from imaging.dicom.values import _decode_value, _int, _str

# The walker stops after the last group it needs (Philips 2001); the rest is checked from the end.
_LAST_WANTED_TAG = max(g for g, _, _ in _PRIVATE) << 16 | 0xFFFF


class _Fallback(Exception):
    """The walker does not handle this file; pydicom parses it instead."""


class _Truncated(Exception):
    """The file ends inside its header or pixel data; the message says where (no header values)."""


_LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"))
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


class _RawHeader:
    """The walker's view of one data set: `get(keyword)` and `in` like a pydicom Dataset, decoded lazily."""

    __slots__ = ("_data", "_elements", "_encoding", "_private", "file_meta_ts")

    def __init__(self, data: bytes, elements: dict[int, tuple[str | None, int, int]], ts: str) -> None:
        self._data = data
        self._elements = elements
        self.file_meta_ts = ts
        self._encoding = "latin-1"
        charset = self._raw_value(0x00080005, "CS")
        charsets = [charset] if isinstance(charset, str) else (charset or [])
        if any(c.upper() in ("ISO_IR 192", "ISO 2022 IR 192") for c in charsets if c):
            self._encoding = "utf-8"
        elif any(
            c and c.upper() not in ("ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6", "ISO 2022 IR 100") for c in charsets
        ):
            raise _Fallback("non-Latin character set: let pydicom decode it")
        self._private: dict[str, Any] = {}
        creators: dict[tuple[int, int], str] = {}
        for tag in elements:
            group, elem = tag >> 16, tag & 0xFFFF
            if group in _PRIVATE_GROUPS and 0x10 <= elem <= 0xFF:
                creators[(group, elem)] = _str(self._raw_value(tag, "LO"))
        for (group, block), creator in creators.items():
            for offset in _PRIVATE_OFFSETS:
                spec = _PRIVATE.get((group, creator, offset))
                tag = (group << 16) | (block << 8) | offset
                if spec is not None and tag in elements:
                    self._private[spec[0]] = self._raw_value(tag, spec[1])

    def _raw_value(self, tag: int, dict_vr: str) -> Any:
        found = self._elements.get(tag)
        if found is None:
            return None
        vr, start, end = found
        if vr is None or vr == "UN":
            vr = dict_vr
        return _decode_value(self._data[start:end], vr, self._encoding)

    def get(self, keyword: str, default: Any = None) -> Any:
        tag = _KEYWORD_TAG.get(keyword)
        if tag is None or tag not in self._elements:
            return default
        return self._raw_value(tag, _WANTED[tag][1])

    def __contains__(self, keyword: str) -> bool:
        tag = _KEYWORD_TAG.get(keyword)
        return tag is not None and tag in self._elements

    def private(self, name: str) -> Any:
        return self._private.get(name)


def _walk(
    data: bytes,
    pos: int,
    implicit: bool,
    keep: dict[int, tuple[str | None, int, int]] | None,
    in_item: bool,
    stop_after: int = 0xFFFFFFFF,
) -> tuple[int, tuple[int, int] | None]:
    """Walk data elements from `pos`; returns (end position, (pixel value start, length) or None).

    Top level (`keep` given): stores the wanted elements and stops at the pixel data, or at the first
    tag after `stop_after` (the caller then checks the pixel data from the end of the file). Inside an
    undefined-length item: stops after the item delimiter. Sequences are skipped, never parsed.
    """
    n = len(data)
    wanted = _WANTED
    private_groups = _PRIVATE_GROUPS
    private_offsets = _PRIVATE_OFFSETS
    long_vrs = _LONG_VRS
    tag_unpack = _TAG.unpack_from
    u32 = _U32.unpack_from
    u16 = _U16.unpack_from
    while pos < n:
        if pos + 8 > n:
            raise _Truncated(f"file ends at byte {n} inside a data element header")
        group, elem = tag_unpack(data, pos)
        tag = (group << 16) | elem
        if tag > stop_after and keep is not None:
            return pos, None
        if tag == _ITEM_END and in_item:
            return pos + 8, None
        if implicit or group == 0xFFFE:
            vr = None
            length = u32(data, pos + 4)[0]
            start = pos + 8
        else:
            vr = data[pos + 4 : pos + 6]
            if vr in long_vrs:
                if pos + 12 > n:
                    raise _Truncated(f"file ends at byte {n} inside a data element header")
                length = u32(data, pos + 8)[0]
                start = pos + 12
            else:
                if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                    raise _Fallback("not a valid explicit VR")
                length = u16(data, pos + 6)[0]
                start = pos + 8
        if keep is not None and tag in _PIXEL_TAGS:
            return start, (start, length)
        if length == _UNDEFINED:
            pos = _skip_sequence(data, start, implicit or vr == b"UN")
            continue
        end = start + length
        if end > n:
            raise _Truncated(f"an element declares {length} bytes but the file ends at byte {n}")
        if keep is not None and (
            tag in wanted
            or (
                group in private_groups
                and (0x10 <= elem <= 0xFF or ((elem >> 8) >= 0x10 and (elem & 0xFF) in private_offsets))
            )
        ):
            keep[tag] = (vr.decode("ascii") if vr is not None else None, start, end)
        pos = end
    if in_item:
        raise _Truncated(f"file ends at byte {n} inside a sequence item")
    return pos, None


def _skip_sequence(data: bytes, pos: int, implicit: bool) -> int:
    """Position after an undefined-length sequence starting at `pos` (its first item tag)."""
    n = len(data)
    while True:
        if pos + 8 > n:
            raise _Truncated(f"file ends at byte {n} inside a sequence")
        group, elem = _TAG.unpack_from(data, pos)
        tag = (group << 16) | elem
        length = _U32.unpack_from(data, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise _Fallback("unexpected tag inside a sequence")
        if length == _UNDEFINED:
            pos, _ = _walk(data, pos, implicit, None, in_item=True)
        else:
            pos += length


def _meta(data: bytes) -> tuple[int, dict[int, str]]:
    """Parse the file meta group (always explicit VR little endian); returns (data set start, values)."""
    pos, n = 132, len(data)
    values: dict[int, str] = {}
    while pos + 8 <= n:
        group, elem = _TAG.unpack_from(data, pos)
        if group != 0x0002:
            return pos, values
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > n:
                break
            length, start = _U32.unpack_from(data, pos + 8)[0], pos + 12
        else:
            length, start = _U16.unpack_from(data, pos + 6)[0], pos + 8
        if length == _UNDEFINED or start + length > n:
            raise _Fallback("odd file meta group")
        if elem in (0x0002, 0x0003, 0x0010):
            values[elem] = data[start : start + length].decode("latin-1").strip("\x00 ")
        pos = start + length
    raise _Truncated(f"file ends at byte {n} inside the file meta information")


@functools.lru_cache(maxsize=64)
def _walker_handles(ts: str) -> tuple[bool, bool]:
    """(handled, implicit) for a transfer syntax: little endian, not deflated, known to pydicom."""
    if ts == _IMPLICIT_LE:
        return True, True
    if ts == _EXPLICIT_LE:
        return True, False
    try:
        uid = pydicom.uid.UID(ts)
        return bool(uid.is_compressed and uid.is_little_endian and not uid.is_deflated), False
    except ValueError:
        return False, False


def _fast_parse(data: bytes) -> tuple[_RawHeader, str | None]:
    """Walk a classic file held in memory; returns (header view, truncation detail or None).

    Objects of a non-image SOP class (`tags.non_image_kind`) get no pixel-data check at all.

    Raises `_Fallback` for anything that pydicom should parse instead (enhanced objects, big endian,
    deflate, no preamble, non-Latin character sets, malformed structure) and `_Truncated` when the
    header itself is cut short.
    """
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Fallback("no preamble")
    start, meta = _meta(data)
    ts = meta.get(0x0010, "")
    handled, implicit = _walker_handles(ts)
    if not handled or meta.get(0x0002, "") in ENHANCED_MR_SOP_CLASSES:
        raise _Fallback("enhanced or unusual encoding")
    elements: dict[int, tuple[str | None, int, int]] = {}
    pos, pixel = _walk(data, start, implicit, elements, in_item=False, stop_after=_LAST_WANTED_TAG)
    header = _RawHeader(data, elements, ts)
    if _int(header.get("NumberOfFrames") or 1) not in (None, 1):
        raise _Fallback("multi-frame")
    if non_image_kind(_str(header.get("SOPClassUID"))) is not None:
        return header, None  # never converted, so its pixel data is not checked (non_image_sop_class)
    if pixel is None and pos < len(data):
        # Everything needed is read; what is left is mostly vendor private data. Find the pixel data
        # from the end of the file, and walk the rest only when that shortcut cannot confirm it.
        pixel = _pixel_data_from_end(data, implicit)
        if pixel is None:
            _, pixel = _walk(data, pos, implicit, {}, in_item=False)
    n = len(data)
    if pixel is None:
        image_like = 0x00280010 in elements or _str(header.get("SOPClassUID")) in MR_IMAGE_SOP_CLASSES
        return header, (f"file ends at byte {n} before its pixel data" if image_like else None)
    value_start, length = pixel
    if length == _UNDEFINED:  # encapsulated (compressed): must end with a sequence delimiter
        if not data.endswith(_SEQUENCE_DELIMITER):
            return header, "compressed pixel data has no sequence delimiter at the end of the file"
        return header, None
    if value_start + length > n:
        return header, f"pixel data declares {length} bytes but only {max(n - value_start, 0)} are present"
    return header, None


def _pixel_data_from_end(data: bytes, implicit: bool) -> tuple[int, int] | None:
    """(value start, length) of a Pixel Data element found from the end of the file, when it is
    intact and ends exactly at the end of the file (or is encapsulated and the file ends with the
    sequence delimiter); None when the shortcut cannot confirm it.

    Only a positive answer is trusted: a false positive needs the tag bytes inside the pixels *and*
    a length field pointing exactly at the end of the file.
    """
    pos = data.rfind(b"\xe0\x7f\x10\x00")
    if pos < 0:
        return None
    if implicit:
        start, length = pos + 8, _U32.unpack_from(data, pos + 4)[0] if pos + 8 <= len(data) else -1
    else:
        if data[pos + 4 : pos + 6] not in (b"OB", b"OW") or data[pos + 6 : pos + 8] != b"\x00\x00":
            return None
        start, length = pos + 12, _U32.unpack_from(data, pos + 8)[0] if pos + 12 <= len(data) else -1
    if length == _UNDEFINED:
        return None  # encapsulated pixel data: its fragments may hide the tag bytes; walk instead
    return (start, length) if start + length == len(data) else None
