"""One file in, its header facts out (`_FileInfo`, no pixels read), or a `RejectedFile` saying why not.

Files are recognised by content, not by name: gzip by its magic bytes, DICOM by its preamble or by a
raw data set at the start. Classic files held in memory go through the element walker, the rest
through pydicom. A file whose pixel data is cut short (a half-copied export) is rejected here as
`truncated`: pydicom happily parses its header, and it would fail much later, in conversion. Objects
of a non-image SOP class (reports, raw data) are never converted, so that check is skipped for them
and the scan rejects their series as `non_image_sop_class` instead.
"""

from __future__ import annotations

import gzip
import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from imaging.dicom.header import SeriesHeader, _frame_geometry, _mosaic_slices, header_from_dataset
from imaging.dicom.tags import (
    _SECONDARY_CAPTURE_PREFIX,
    ENHANCED_MR_SOP_CLASSES,
    MR_IMAGE_SOP_CLASSES,
    non_image_kind,
)
from imaging.dicom.values import _int, _str
from imaging.dicom.walker import _UNDEFINED, _Fallback, _fast_parse, _Truncated

# Files up to this size are read into memory: the element walker needs the bytes, and gzipped files
# must be inflated anyway. Bigger files (huge enhanced objects) are parsed by pydicom from disk.
_IN_MEMORY_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class RejectedFile:
    """A file that could not join any series, or was left out of one. Reasons: `FILE_REASONS`.

    `detail` never contains header values (it may be persisted).
    """

    path: Path
    reason: str
    detail: str


@dataclass(frozen=True)
class _FileInfo:
    """What one worker learns from one file; small and picklable."""

    path: Path
    series_uid: str
    study_uid: str
    patient_id: str
    sop_uid: str
    header: SeriesHeader
    n_frames: int
    has_geometry: bool
    orientations: tuple[tuple[float, ...], ...]
    positions: tuple[tuple[float, float, float], ...]
    mosaic_slices: int | None
    transfer_syntax: str

    @property
    def enhanced(self) -> bool:
        return self.header.sop_class_uid in ENHANCED_MR_SOP_CLASSES


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble (old ACR-NEMA style) starts with group 0002 or 0008."""
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00") and head[2:4] < b"\x20\x00"


def _pixel_data_problem(fp: Any, ds: Any, size: int) -> str | None:
    """Detail text when the pixel data that must follow the header is cut short, else None.

    `stop_before_pixels` leaves the stream at the start of the Pixel Data element, so the element's
    declared length can be checked against the file size without reading the pixels. pydicom itself
    happily parses the header of a half-copied file, which would then fail much later in conversion.
    """
    pos = fp.tell()
    sop = _str(ds.get("SOPClassUID"))
    image_like = "Rows" in ds or sop in MR_IMAGE_SOP_CLASSES or sop.startswith(_SECONDARY_CAPTURE_PREFIX)
    if pos >= size:
        return f"file ends at byte {size} before its pixel data" if image_like else None
    head = fp.read(12)
    if len(head) < 8:
        return f"file ends at byte {size} inside the pixel data element header"
    little = head[:2] == b"\xe0\x7f"
    if not little and head[:2] != b"\x7f\xe0":
        return None  # not pixel data (e.g. trailing padding); nothing to check
    fmt = "<" if little else ">"
    implicit = (getattr(ds, "original_encoding", None) or (None, None))[0]
    if implicit is None:  # encoding unknown: explicit VR has a 2-letter VR after the tag
        implicit = head[4:6] not in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN")
    if not implicit:
        if len(head) < 12:
            return f"file ends at byte {size} inside the pixel data element header"
        length = struct.unpack(fmt + "I", head[8:12])[0]
        start = pos + 12
    else:
        length = struct.unpack(fmt + "I", head[4:8])[0]
        start = pos + 8
    if length == _UNDEFINED:  # encapsulated (compressed): must end with a sequence delimiter
        fp.seek(max(size - 8, 0))
        tail = fp.read(8)
        delim = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" if little else b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
        if tail != delim:
            return "compressed pixel data has no sequence delimiter at the end of the file"
        return None
    if start + length > size:
        return f"pixel data declares {length} bytes but only {max(size - start, 0)} are present"
    return None


class _NotDicomError(Exception):
    pass


def _pydicom_parse(fp: Any, size: int) -> tuple[Any, str | None]:
    """Full header parse with pydicom (enhanced, unusual encodings), then the pixel-data check.

    A file without the DICM preamble is accepted only when it starts like a raw data set (old
    ACR-NEMA style); anything else is not DICOM, whatever pydicom's `force` could make of it.
    """
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        fp.seek(0)
        if not _looks_like_raw_dataset(fp.read(8)):
            raise _NotDicomError from None
        fp.seek(0)
        ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
    if non_image_kind(_str(ds.get("SOPClassUID"))) is not None:
        return ds, None  # never converted, so its pixel data is not checked (non_image_sop_class)
    return ds, _pixel_data_problem(fp, ds, size)


def _load(path: Path, size: int) -> tuple[bytes | None, Any, int]:
    """(bytes, None, size) for files parsed in memory, inflating gzip (by magic bytes, not by
    extension); (None, open file, size) for big plain files."""
    with open(path, "rb") as f:
        magic = f.read(2)
        if magic == b"\x1f\x8b":
            f.seek(0)
            data = gzip.decompress(f.read())
            return data, None, len(data)
        if size <= _IN_MEMORY_LIMIT:
            f.seek(0)
            return f.read(), None, size
    return None, open(path, "rb"), size  # noqa: SIM115 - closed by the caller


def read_file(path: Path) -> _FileInfo | RejectedFile:
    """Read one file's header (no pixels) into a `_FileInfo`, or say why it cannot be used."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return RejectedFile(path, "unreadable", f"cannot stat file: {type(err).__name__}")
    if size == 0:
        return RejectedFile(path, "empty_file", "file has 0 bytes")
    try:
        data, handle, size = _load(path, size)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        return RejectedFile(path, "truncated", f"gzip stream is incomplete or corrupt ({type(err).__name__})")
    except OSError as err:
        return RejectedFile(path, "unreadable", f"cannot read file: {type(err).__name__}: {err.strerror or ''}")
    if size == 0:
        return RejectedFile(path, "empty_file", "gzip file inflates to 0 bytes")
    ds: Any = None
    problem: str | None = None
    ts = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if data is not None:
                try:
                    ds, problem = _fast_parse(data)
                    ts = ds.file_meta_ts
                except _Fallback:
                    ds = None
            if ds is None:
                fp = io.BytesIO(data) if data is not None else handle
                with fp:
                    ds, problem = _pydicom_parse(fp, size)
                meta = getattr(ds, "file_meta", None)
                ts = _str(meta.get("TransferSyntaxUID")) if meta is not None else ""
        except _NotDicomError:
            return RejectedFile(path, "not_dicom", "no DICM prefix and no DICOM data set at the start")
        except _Truncated as err:
            return RejectedFile(path, "truncated", f"header ends early: {err}")
        except (EOFError, struct.error) as err:
            return RejectedFile(path, "truncated", f"header ends early ({type(err).__name__})")
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt input
            return RejectedFile(path, "unreadable", f"pydicom cannot parse the header: {type(err).__name__}")
        finally:
            if handle is not None:
                handle.close()
        if problem:
            return RejectedFile(path, "truncated", problem)
        series_uid = _str(ds.get("SeriesInstanceUID"))
        sop_uid = _str(ds.get("SOPInstanceUID"))
        if not series_uid or not sop_uid:
            missing = [k for k, v in (("SeriesInstanceUID", series_uid), ("SOPInstanceUID", sop_uid)) if not v]
            sop = _str(ds.get("SOPClassUID"))
            what = non_image_kind(sop) or "DICOM object"
            return RejectedFile(path, "missing_tags", f"{what} without {' and '.join(missing)}; cannot group it")
        try:
            header = header_from_dataset(ds)
            orientations, positions = _frame_geometry(ds)
            mosaic = _mosaic_slices(ds, header)
        except Exception as err:  # noqa: BLE001 - malformed values deep in vendor sequences
            return RejectedFile(path, "unreadable", f"header values cannot be decoded: {type(err).__name__}")
        n_frames = max(_int(ds.get("NumberOfFrames")) or 1, 1)
        study_uid = _str(ds.get("StudyInstanceUID"))
        patient_id = _str(ds.get("PatientID"))
    if not patient_id:
        # Type 2 (may be empty). Pseudonymising "" would merge every such patient into one subject;
        # falling back to the study keeps each study its own subject, which is the safe mistake.
        patient_id = f"study:{study_uid or series_uid}"
    has_geometry = bool(orientations and positions and header.pixel_spacing and header.rows and header.columns)
    return _FileInfo(
        path=path,
        series_uid=series_uid,
        study_uid=study_uid,
        patient_id=patient_id,
        sop_uid=sop_uid,
        header=header,
        n_frames=n_frames,
        has_geometry=has_geometry,
        orientations=orientations,
        positions=positions,
        mosaic_slices=mosaic,
        transfer_syntax=ts,
    )
