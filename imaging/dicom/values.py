"""Element values as the scan uses them: raw bytes decoded the way pydicom would, and any value
(pydicom's or the walker's) normalised to str, float, int or a tuple of codes.

The same helpers serve both parsing paths, which is what keeps the walker's header equal to
pydicom's. Malformed values (vendors do write junk) become None or () instead of raising.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pydicom

_TEXT_VRS = frozenset(("LT", "ST", "UT"))
_STRING_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "UC", "UR", *_TEXT_VRS)
)
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}


def _decode_value(raw: bytes, vr: str, encoding: str) -> Any:
    """Decode one element value the way pydicom would: str / list of str / number / list of numbers."""
    if vr in _STRING_VRS:
        text = (
            raw.decode(encoding, "replace")
            if vr in ("LO", "LT", "PN", "SH", "ST", "UT", "UC")
            else raw.decode("latin-1")
        )
        text = text.rstrip("\x00 ")
        if vr in _TEXT_VRS:
            return text
        parts = [p.strip(" \x00") for p in text.split("\\")]
        return parts[0] if len(parts) == 1 else parts
    fmt = _BINARY_FORMATS.get(vr)
    if fmt is not None:
        size = struct.calcsize(fmt)
        n = len(raw) // size
        vals = struct.unpack(f"<{n}{fmt}", raw[: n * size])
        return vals[0] if n == 1 else list(vals) if n else None
    return raw


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip()
    if isinstance(value, bytes):
        return value.decode("latin-1", "replace").strip("\x00 ")
    return str(value).strip()


def _float(value: Any) -> float | None:
    """First number of a DS/IS/FD value; None when absent or malformed (vendors do write junk)."""
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        if not value:
            return None
        value = value[0]
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> int | None:
    f = _float(value)
    return int(f) if f is not None else None


def _codes(value: Any) -> tuple[str, ...]:
    """A CS value (single or multi) as a tuple of upper-case strings; tolerates 'A\\B' in one string."""
    if value is None:
        return ()
    items = value if isinstance(value, pydicom.multival.MultiValue | list | tuple) else [value]
    out: list[str] = []
    for item in items:
        out.extend(p.strip().upper() for p in str(item).split("\\") if p.strip())
    return tuple(out)


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None or isinstance(value, str | bytes):
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n and all(math.isfinite(v) for v in vals) else None
