"""Header-only scan of a DICOM export: find the MR image series in it and say why the rest is skipped.

A hospital export is an arbitrary tree (or one flat folder) of DICOM files, some gzipped, some with
no extension, mixed with reports, secondary captures, half-copied files and the odd README. This
module reads only the headers (pixel data stays on disk), groups instances by SeriesInstanceUID
whatever the folder layout, de-duplicates re-sent instances and double exports, and attaches to every
series either nothing (it goes on to classification) or a rejection reason code with a PHI-free
explanation. Every file that joins no series gets a reason code too.

Speed: classic single-frame files (nearly all files of an export) go through a small element walker
that reads the tag/length headers of the data set, keeps the ~45 elements needed here and jumps over
everything else (vendor private groups, sequences); values are decoded only when asked for. That is
several times faster than `pydicom.dcmread(stop_before_pixels=True)`, which builds a DataElement for
every element. Enhanced multi-frame objects (timing and geometry live in nested functional groups),
big-endian, deflated and preamble-less files, and anything the walker finds odd, go through pydicom.
Both paths feed the same `header_from_dataset`, and a test holds them equal on every real file.

Raw identifiers (patient ID, study/series UIDs) live only in the in-memory records returned here;
`imaging.deid` turns them into keyed pseudonyms before anything is persisted.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import math
import multiprocessing
import os
import re
import struct
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.errors import InvalidDicomError

# Series with fewer slices than this (per volume) cannot make a useful 3D volume (scouts, test slices).
MIN_SLICES = 10
# Files up to this size are read into memory: the element walker needs the bytes, and gzipped files
# must be inflated anyway. Bigger files (huge enhanced objects) are parsed by pydicom from disk.
_IN_MEMORY_LIMIT = 64 * 1024 * 1024
# Below this many files a process pool costs more (fork, pickling results) than it saves.
_PARALLEL_MIN_FILES = 256
_CHUNK = 64
# Geometry tolerances. Slice spacing may wobble by float rounding of positions (Philips: 0.9999992 mm)
# but not by a missing slice (100 %); a stack whose slices drift sideways by more than the conversion
# tolerance (1 mm from first to last slice) is sheared (gantry tilt) and has no orthogonal affine.
SPACING_TOLERANCE = 0.05  # relative to the median slice gap
MAX_SHEAR_MM = 1.0
_ORIENTATION_TOLERANCE = 1e-2

MR_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
ENHANCED_MR_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"}
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# SOP classes that are never images, by prefix: SR documents, presentation states, key objects,
# raw data, spectroscopy, encapsulated documents, registrations, segmentations.
_NON_IMAGE_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88": "structured report / key object selection",
    "1.2.840.10008.5.1.4.1.1.11": "presentation state",
    "1.2.840.10008.5.1.4.1.1.66": "raw data / registration / segmentation",
    "1.2.840.10008.5.1.4.1.1.104": "encapsulated document",
    "1.2.840.10008.5.1.4.1.1.4.2": "MR spectroscopy",
    "1.2.840.10008.1.3.10": "media storage directory (DICOMDIR)",
}
_NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "DOC", "REG", "SEG", "RWV", "PLAN", "FID"}

# Rejection reason codes (series level and file level), for the manifest and the dashboard filters.
SERIES_REASONS = (
    "non_image_sop_class",
    "non_mr_modality",
    "missing_tags",
    "localizer",
    "derived",
    "unsupported_codec",
    "too_few_slices",
    "inconsistent_geometry",
)
FILE_REASONS = ("not_dicom", "truncated", "unreadable", "missing_tags", "empty_file", "duplicate")

_HEADER_TAGS = (
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "Modality",
    "Manufacturer",
    "SeriesDescription",
    "ManufacturerModelName",
    "PatientID",
    "ContrastBolusAgent",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "SequenceName",
    "SliceThickness",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "MagneticFieldStrength",
    "ProtocolName",
    "AcquisitionMatrix",
    "AngioFlag",
    "EchoTrainLength",
    "FlipAngle",
    "PulseSequenceName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "PixelSpacing",
)
# tag -> (keyword, VR from the data dictionary: needed to decode implicit-VR files)
_WANTED: dict[int, tuple[str, str]] = {tag_for_keyword(k): (k, dictionary_VR(tag_for_keyword(k))) for k in _HEADER_TAGS}
_KEYWORD_TAG = {k: t for t, (k, _) in _WANTED.items()}

# Vendor private elements worth reading: (group, private creator, element offset) -> (name, VR).
# Siemens writes the slice count of a mosaic only here; Philips writes the inversion delay of its
# TFE sequences and its own sequence name here (not in InversionTime); GE names the pulse sequence
# and says whether an image is magnitude, phase, real or imaginary.
_PRIVATE: dict[tuple[int, str, int], tuple[str, str]] = {
    (0x0019, "SIEMENS MR HEADER", 0x0A): ("SiemensImagesInMosaic", "US"),
    (0x0019, "GEMS_ACQU_01", 0x9C): ("GEPulseSequenceName", "LO"),
    (0x0019, "GEMS_ACQU_01", 0x9E): ("GEInternalPulseSequenceName", "LO"),
    (0x0043, "GEMS_PARM_01", 0x2F): ("GEImageKind", "SS"),
    (0x2001, "Philips Imaging DD 001", 0x13): ("PhilipsEPIFactor", "SL"),
    (0x2001, "Philips Imaging DD 001", 0x1B): ("PhilipsPrepulseDelay", "FL"),
    (0x2001, "Philips Imaging DD 001", 0x1C): ("PhilipsPrepulseType", "CS"),
    (0x2001, "Philips Imaging DD 001", 0x20): ("PhilipsScanningTechnique", "LO"),
}
_PRIVATE_GROUPS = {g for g, _, _ in _PRIVATE}
_PRIVATE_OFFSETS = {o for _, _, o in _PRIVATE}
# The walker stops after the last group it needs (Philips 2001); the rest is checked from the end.
_LAST_WANTED_TAG = max(g for g, _, _ in _PRIVATE) << 16 | 0xFFFF
_GE_IMAGE_KIND = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}


@dataclass(frozen=True)
class SeriesHeader:
    """The header fields classification and the manifest need, normalised across vendors.

    Times are in milliseconds (as DICOM stores them); an InversionTime of 0 (GE writes it for non-IR
    sequences) becomes None. Multi-valued code strings are tuples of upper-case strings.
    `study_date` is the raw DICOM date: only `imaging.deid` may turn it into a shifted date.
    `vendor_sequence` is the vendor's own sequence name from its private tags (Philips "T1TFE",
    GE "MP-RAGE"); `complex_part` is MAGNITUDE/PHASE/REAL/IMAGINARY where only a private tag says it;
    `angio_flag` is AngioFlag "Y" (the scanner marks angiography acquisitions); `epi_factor` is the
    echo-planar factor where only a private tag says it (Philips: its DWI says "SE", not "EP").
    """

    modality: str
    sop_class_uid: str
    manufacturer: str
    model_name: str
    field_strength: float | None
    series_description: str
    protocol_name: str
    sequence_name: str
    repetition_time: float | None
    echo_time: float | None
    inversion_time: float | None
    flip_angle: float | None
    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    mr_acquisition_type: str
    image_type: tuple[str, ...]
    contrast_agent: str
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    series_number: int | None
    study_date: str
    vendor_sequence: str = ""
    complex_part: str = ""
    angio_flag: bool = False
    epi_factor: int | None = None
    echo_train_length: int | None = None


@dataclass(frozen=True)
class SeriesRecord:
    """One series of the export. The raw identifiers are for pseudonymisation only, never persisted.

    `n_instances` counts DICOM instances (files); `n_slices` is slices per volume (a Siemens mosaic
    instance holds a whole volume, an enhanced instance many frames) and `n_volumes` the number of
    volumes (time points, echoes) the series holds.
    """

    series_uid: str
    study_uid: str
    patient_id: str
    files: tuple[Path, ...]
    sop_hash: str
    header: SeriesHeader
    n_instances: int
    rejection: str | None
    rejection_detail: str
    n_slices: int = 0
    n_volumes: int = 1
    transfer_syntaxes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RejectedFile:
    """A file that could not join any series, or was left out of one. Reasons: `FILE_REASONS`.

    `detail` never contains header values (it may be persisted).
    """

    path: Path
    reason: str
    detail: str


@dataclass(frozen=True)
class ScanResult:
    series: tuple[SeriesRecord, ...]
    rejected_files: tuple[RejectedFile, ...]
    n_files: int
    seconds: float


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


# --------------------------------------------------------------------------------------------------
# Value normalisation (works on pydicom values and on the walker's decoded values alike)


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


def _item(ds: Any, keyword: str) -> Any:
    """First item of a sequence attribute, or None."""
    seq = ds.get(keyword) if ds is not None else None
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError, KeyError):
        return None


def _fg(ds: Any, macro: str, keyword: str) -> Any:
    """A value from an enhanced-object functional group: shared groups first, then the first frame.

    Enhanced MR puts timing, geometry and frame type in macros (e.g. MRTimingAndRelatedParameters
    Sequence > RepetitionTime) that may be shared by all frames or repeated per frame.
    """
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        item = _item(_item(ds, groups), macro)
        if item is not None and keyword in item:
            value = item.get(keyword)
            if value is not None and value != "":
                return value
    return None


def _private(ds: Any, name: str) -> Any:
    """A vendor private value by its `_PRIVATE` name, from the walker's header or a pydicom Dataset."""
    if isinstance(ds, _RawHeader):
        return ds.private(name)
    for (group, creator, offset), (pname, _) in _PRIVATE.items():
        if pname != name:
            continue
        try:
            value = ds.private_block(group, creator)[offset].value
        except (KeyError, ValueError, AttributeError, TypeError):
            return None
        if isinstance(value, bytes):  # implicit VR read without a private dictionary entry
            value = _decode_value(value, _PRIVATE[(group, creator, offset)][1], "latin-1")
        return value
    raise KeyError(f"unknown private element name {name!r}")  # pragma: no cover - programming error


def _enhanced_sequence_codes(ds: Any) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Classic ScanningSequence / SequenceVariant / ScanOptions rebuilt from the enhanced MR modules.

    Enhanced MR drops the classic codes; the MR Pulse Sequence and MR Modifier macros carry the same
    physics in other words, and the classifier speaks the classic vocabulary.
    """
    scanning: list[str] = []
    variant: list[str] = []
    options: list[str] = []
    echo = _str(ds.get("EchoPulseSequence")).upper()
    if echo in ("SPIN", "BOTH"):
        scanning.append("SE")
    if echo in ("GRADIENT", "BOTH"):
        scanning.append("GR")
    if _str(ds.get("EchoPlanarPulseSequence")).upper() == "YES":
        scanning.append("EP")
    inversion = _str(_fg(ds, "MRModifierSequence", "InversionRecovery")).upper() == "YES"
    if inversion:
        scanning.append("IR")
        options.append("IR")
    segmented = _str(ds.get("SegmentedKSpaceTraversal")).upper()
    if segmented and segmented != "SINGLE":
        variant.append("SK")
    spoiling = _str(_fg(ds, "MRModifierSequence", "Spoiling")).upper()
    if spoiling and spoiling != "NONE":
        variant.append("SP")
    steady = _str(ds.get("SteadyStatePulseSequence")).upper()
    if steady == "FREE_PRECESSION":
        variant.append("SS")
    elif steady == "TIME_REVERSED":
        variant.append("TRSS")
    t2prep = _str(_fg(ds, "MRModifierSequence", "T2Preparation")).upper() == "YES"
    if inversion or t2prep:
        variant.append("MP")
    if _str(ds.get("OversamplingPhase")).upper() not in ("", "NONE"):
        variant.append("OSP")
    if _str(ds.get("MagnetizationTransfer")).upper() not in ("", "NONE"):
        variant.append("MTC")
    if "FAT" in _str(ds.get("SpectrallySelectedSuppression")).upper():
        options.append("FS")
    return tuple(scanning), tuple(variant), tuple(options)


def _is_enhanced(ds: Any) -> bool:
    return "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds


def header_from_dataset(ds: Any) -> SeriesHeader:
    """The normalised `SeriesHeader` of one DICOM instance (classic or enhanced MR).

    This is the single place where vendor quirks become one vocabulary: enhanced objects get their
    timing from the functional groups and classic codes rebuilt from the pulse-sequence module;
    Philips TFE sequences get their inversion time from the private prepulse delay; GE's "0" TI
    means no inversion. `ds` is a pydicom Dataset (or the scan's own header view of one).
    """
    enhanced = _is_enhanced(ds)
    tr = _float(ds.get("RepetitionTime"))
    te = _float(ds.get("EchoTime"))
    ti = _float(ds.get("InversionTime"))
    fa = _float(ds.get("FlipAngle"))
    scanning = _codes(ds.get("ScanningSequence"))
    variant = _codes(ds.get("SequenceVariant"))
    options = _codes(ds.get("ScanOptions"))
    image_type = _codes(ds.get("ImageType"))
    spacing = _floats(ds.get("PixelSpacing"), 2)
    thickness = _float(ds.get("SliceThickness"))
    sequence_name = _str(ds.get("SequenceName"))
    contrast = _str(ds.get("ContrastBolusAgent"))
    if enhanced:
        tr = tr if tr is not None else _float(_fg(ds, "MRTimingAndRelatedParametersSequence", "RepetitionTime"))
        fa = fa if fa is not None else _float(_fg(ds, "MRTimingAndRelatedParametersSequence", "FlipAngle"))
        te = te if te is not None else _float(_fg(ds, "MREchoSequence", "EffectiveEchoTime"))
        if ti is None and _str(_fg(ds, "MRModifierSequence", "InversionRecovery")).upper() == "YES":
            ti = _float(_fg(ds, "MRModifierSequence", "InversionTimes"))
        if not (scanning or variant):
            scanning, variant, enhanced_options = _enhanced_sequence_codes(ds)
            options = options or enhanced_options
        image_type = image_type or _codes(_fg(ds, "MRImageFrameTypeSequence", "FrameType"))
        spacing = spacing or _floats(_fg(ds, "PixelMeasuresSequence", "PixelSpacing"), 2)
        thickness = thickness if thickness is not None else _float(_fg(ds, "PixelMeasuresSequence", "SliceThickness"))
        sequence_name = sequence_name or _str(ds.get("PulseSequenceName"))
        agent = _item(ds, "ContrastBolusAgentSequence")
        if not contrast and agent is not None:
            contrast = _str(agent.get("CodeMeaning")) or "yes"
    if ti is not None and ti <= 0:
        ti = None
    manufacturer = _str(ds.get("Manufacturer"))
    vendor_sequence = ""
    complex_part = ""
    epi_factor = None
    if manufacturer.upper().startswith("PHILIPS"):
        vendor_sequence = _str(_private(ds, "PhilipsScanningTechnique"))
        epi_factor = _int(_private(ds, "PhilipsEPIFactor"))
        delay = _float(_private(ds, "PhilipsPrepulseDelay"))
        if ti is None and delay and delay > 0 and _str(_private(ds, "PhilipsPrepulseType")).upper() == "INV":
            ti = delay  # Philips TFE: the inversion delay lives only in its private prepulse fields
    elif manufacturer.upper().startswith("GE"):
        vendor_sequence = _str(_private(ds, "GEPulseSequenceName")) or _str(_private(ds, "GEInternalPulseSequenceName"))
        kind = _int(_private(ds, "GEImageKind"))
        complex_part = _GE_IMAGE_KIND.get(kind, "") if kind is not None else ""
    return SeriesHeader(
        modality=_str(ds.get("Modality")).upper(),
        sop_class_uid=_str(ds.get("SOPClassUID")),
        manufacturer=manufacturer,
        model_name=_str(ds.get("ManufacturerModelName")),
        field_strength=_float(ds.get("MagneticFieldStrength")),
        series_description=_str(ds.get("SeriesDescription")),
        protocol_name=_str(ds.get("ProtocolName")),
        sequence_name=sequence_name,
        repetition_time=tr,
        echo_time=te,
        inversion_time=ti,
        flip_angle=fa,
        scanning_sequence=scanning,
        sequence_variant=variant,
        scan_options=options,
        mr_acquisition_type=_str(ds.get("MRAcquisitionType")).upper(),
        image_type=image_type,
        contrast_agent=contrast,
        rows=_int(ds.get("Rows")) or 0,
        columns=_int(ds.get("Columns")) or 0,
        pixel_spacing=(spacing[0], spacing[1]) if spacing else None,
        slice_thickness=thickness,
        series_number=_int(ds.get("SeriesNumber")),
        study_date=_str(ds.get("StudyDate")),
        vendor_sequence=vendor_sequence,
        complex_part=complex_part,
        angio_flag=_str(ds.get("AngioFlag")).upper() == "Y",
        epi_factor=epi_factor,
        echo_train_length=_int(ds.get("EchoTrainLength")),
    )


def _frame_geometry(ds: Any) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, float, float], ...]]:
    """Distinct slice orientations and every frame's position (one frame for classic instances)."""
    if not _is_enhanced(ds):
        iop = _floats(ds.get("ImageOrientationPatient"), 6)
        ipp = _floats(ds.get("ImagePositionPatient"), 3)
        return ((iop,) if iop else ()), ((ipp,) if ipp else ())  # type: ignore[return-value]
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    shared_iop = _floats(getattr(_item(shared, "PlaneOrientationSequence"), "ImageOrientationPatient", None), 6)
    shared_ipp = _floats(getattr(_item(shared, "PlanePositionSequence"), "ImagePositionPatient", None), 3)
    orientations: list[tuple[float, ...]] = []
    positions: list[tuple[float, float, float]] = []
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or ():
        iop = _floats(getattr(_item(frame, "PlaneOrientationSequence"), "ImageOrientationPatient", None), 6)
        ipp = _floats(getattr(_item(frame, "PlanePositionSequence"), "ImagePositionPatient", None), 3)
        iop = iop or shared_iop
        ipp = ipp or shared_ipp
        if iop and iop not in orientations:
            orientations.append(iop)
        if ipp:
            positions.append(ipp)  # type: ignore[arg-type]
    if not orientations and shared_iop:
        orientations.append(shared_iop)
    return tuple(orientations), tuple(positions)


def _mosaic_slices(ds: Any, header: SeriesHeader) -> int | None:
    """Slices in one Siemens mosaic instance, or None when the instance is not a mosaic.

    The count is in a Siemens private element; without it (private tags stripped) the number of
    tiles is an upper bound: rows / acquisition rows squared.
    """
    if "MOSAIC" not in header.image_type:
        return None
    n = _int(_private(ds, "SiemensImagesInMosaic"))
    if n and n > 0:
        return n
    matrix = [v for v in (_floats(ds.get("AcquisitionMatrix"), 4) or ()) if v > 0]
    if matrix and header.rows:
        tiles = int(header.rows // max(matrix))
        return max(tiles * tiles, 1)
    return None


# --------------------------------------------------------------------------------------------------
# The element walker (classic files)


class _Fallback(Exception):
    """The walker does not handle this file; pydicom parses it instead."""


class _Truncated(Exception):
    """The file ends inside its header or pixel data; the message says where (no header values)."""


_LONG_VRS = frozenset((b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UR", b"UT", b"UN", b"SV", b"UV"))
_TEXT_VRS = frozenset(("LT", "ST", "UT"))
_STRING_VRS = frozenset(
    ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "UC", "UR", *_TEXT_VRS)
)
_BINARY_FORMATS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_LE = "1.2.840.10008.1.2.1"
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_TAG = struct.Struct("<HH")


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


# --------------------------------------------------------------------------------------------------
# Reading one file


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
            what = next((d for p, d in _NON_IMAGE_SOP_PREFIXES.items() if sop.startswith(p)), "DICOM object")
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


def _read_chunk(paths: Sequence[Path]) -> list[_FileInfo | RejectedFile]:
    return [read_file(p) for p in paths]


# --------------------------------------------------------------------------------------------------
# Series-level decisions

# Distinctive words match anywhere ("SmartSurvey", "AAHead_Scout"); short ones need word boundaries.
_LOCALIZER_RE = re.compile(
    r"(locali[sz]er|scout|survey|aahead)|(?<![a-z])(3[-_ ]?pl(ane)?|tri[-_ ]?pl(ane)?|three[-_ ]?plane|loc)(?![a-z])"
)
_DERIVED_IMAGE_TYPES = {
    "ADC",
    "EADC",
    "FA",
    "TRACE",
    "TRACEW",
    "CALC_BVALUE",
    "MIP",
    "MNIP",
    "MPR",
    "PROJECTION IMAGE",
    "SUBTRACTION",
    "T1 MAP",
    "T2 MAP",
    "T2_MAP",
    "T1_MAP",
    "R2_MAP",
    "FIELD_MAP",
    "CBF",
    "CBV",
    "MTT",
    "TTP",
}
_DERIVED_DESC_RE = re.compile(
    r"(?<![a-z0-9])(adc|eadc|fa|colfa|color ?fa|trace|tracew|t1 ?map|t2 ?map|mip|mnip|mpr reformat|"
    r"reformat|subtraction)(?![a-z0-9])"
)


@dataclass(frozen=True)
class SeriesGeometry:
    """What the instances' positions say about a series: slices per volume, volumes, and any problem.

    `problem` is a PHI-free sentence when the stack is not one regular grid (mixed orientations,
    varying slice spacing, sheared/gantry-tilted stack, incomplete volumes), else "".
    """

    n_orientations: int
    n_slices: int
    n_volumes: int
    problem: str


def _orientation_clusters(orientations: Iterable[tuple[float, ...]], tol: float = _ORIENTATION_TOLERANCE) -> list:
    reps: list[tuple[float, ...]] = []
    for o in orientations:
        if not any(max(abs(a - b) for a, b in zip(o, r, strict=True)) < tol for r in reps):
            reps.append(o)
    return reps


def series_geometry(
    orientations: Sequence[tuple[float, ...]],
    positions: Sequence[tuple[float, float, float]],
    mosaic_slices: int | None = None,
) -> SeriesGeometry:
    """Check that the frames of a series form regular slice stacks, one per volume.

    Args:
        orientations: every distinct ImageOrientationPatient seen in the series.
        positions: ImagePositionPatient of every frame (instances of a classic series, frames of an
            enhanced one, one per mosaic instance).
        mosaic_slices: slices inside each Siemens mosaic instance (positions are then per volume).
    """
    reps = _orientation_clusters(orientations)
    if len(reps) > 1:
        return SeriesGeometry(len(reps), len(positions), 1, f"{len(reps)} different slice orientations in one series")
    if not reps or not positions:
        return SeriesGeometry(len(reps), mosaic_slices or len(positions), 1, "")
    row, col = reps[0][:3], reps[0][3:]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    dist = sorted((sum(p[i] * normal[i] for i in range(3)), p) for p in positions)
    # cluster positions that are the same slice (repeated per volume, tiny float jitter)
    clusters: list[list[tuple[float, tuple[float, float, float]]]] = []
    for d, p in dist:
        if clusters and d - clusters[-1][-1][0] < 0.01:
            clusters[-1].append((d, p))
        else:
            clusters.append([(d, p)])
    n_unique = len(clusters)
    counts = Counter(len(c) for c in clusters)
    if mosaic_slices:
        return SeriesGeometry(1, mosaic_slices, len(positions) // max(n_unique, 1) or 1, "")
    if len(counts) > 1:
        few, many = min(counts), max(counts)
        return SeriesGeometry(
            1, n_unique, many, f"{few} images at some slice positions and {many} at others (incomplete volumes)"
        )
    n_volumes = next(iter(counts))
    if n_unique >= 3:
        centres = [sum(d for d, _ in c) / len(c) for c in clusters]
        gaps = [b - a for a, b in zip(centres, centres[1:], strict=False)]
        median = sorted(gaps)[len(gaps) // 2]
        worst = max(abs(g - median) for g in gaps)
        if median <= 0 or worst > SPACING_TOLERANCE * median:
            return SeriesGeometry(
                1,
                n_unique,
                n_volumes,
                f"slice spacing varies from {min(gaps):.3g} to {max(gaps):.3g} mm (missing or irregular slices)",
            )
    if n_unique >= 2:
        first, last = clusters[0][0][1], clusters[-1][0][1]
        step = [last[i] - first[i] for i in range(3)]
        along = sum(step[i] * normal[i] for i in range(3))
        sideways = math.sqrt(max(sum(s * s for s in step) - along * along, 0.0))
        if sideways > MAX_SHEAR_MM:
            angle = math.degrees(math.atan2(sideways, abs(along)))
            return SeriesGeometry(
                1,
                n_unique,
                n_volumes,
                f"slices shift {sideways:.3g} mm sideways across the stack ({angle:.2g} deg): gantry tilt / "
                f"sheared stack",
            )
    return SeriesGeometry(1, n_unique, n_volumes, "")


@functools.lru_cache(maxsize=64)
def codec_problem(transfer_syntax: str) -> str | None:
    """Why pixel data in this transfer syntax cannot be decoded here, or None when it can.

    pydicom decodes compressed pixel data through optional plugins (pylibjpeg + its libjpeg/openjpeg
    backends, python-gdcm, pillow); a missing plugin is a per-series error that names what to install.
    """
    if not transfer_syntax:
        return None
    try:
        uid = pydicom.uid.UID(transfer_syntax)
        compressed = uid.is_compressed
    except ValueError:
        return f"unknown transfer syntax {transfer_syntax}: no decoder known for it"
    if not compressed:
        return None
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"transfer syntax {uid.name} ({uid}) has no pixel decoder in pydicom"
    if not decoder.is_available:
        plugins = ", ".join(sorted(decoder.missing_dependencies)) or "a pixel data plugin"
        return (
            f"transfer syntax {uid.name} ({uid}) needs a decoder that is not installed ({plugins}); "
            f"install pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg or python-gdcm"
        )
    return None


def series_rejection(
    header: SeriesHeader,
    n_instances: int,
    n_frames: int,
    has_geometry: bool,
    n_orientations: int = 1,
    *,
    n_slices: int | None = None,
    geometry_problem: str = "",
    transfer_syntaxes: Sequence[str] = (),
) -> tuple[str | None, str]:
    """Reason code (one of `SERIES_REASONS`) and PHI-free detail for a series that must not be
    curated, or (None, "").

    Order matters: the first matching reason is the one reported (a secondary capture of a scout is
    "derived", an SR without geometry is "non_image_sop_class", a three-plane scout is "localizer"
    rather than "inconsistent_geometry").

    Args:
        n_slices: slices per volume when known (mosaic / repeated positions); else derived from
            instance and frame counts.
        geometry_problem: `SeriesGeometry.problem` of the series.
        transfer_syntaxes: the series' transfer syntaxes, to check a decoder exists.
    """
    sop = header.sop_class_uid
    if sop.startswith(_SECONDARY_CAPTURE_PREFIX):
        return "derived", f"Secondary Capture SOP class {sop}"
    if sop not in MR_IMAGE_SOP_CLASSES:
        kind = next((d for p, d in _NON_IMAGE_SOP_PREFIXES.items() if sop.startswith(p)), None)
        if kind or header.modality in _NON_IMAGE_MODALITIES:
            return "non_image_sop_class", f"SOP class {sop or '(missing)'} ({kind or header.modality}) has no image"
        if header.modality != "MR":
            return "non_mr_modality", f"modality {header.modality or '(missing)'} with SOP class {sop or '(missing)'}"
        return "non_image_sop_class", f"SOP class {sop or '(missing)'} is not an MR image storage class"
    if header.modality != "MR":
        return "non_mr_modality", f"modality {header.modality or '(missing)'} in an MR SOP class"
    if not has_geometry:
        return "missing_tags", "no ImageOrientationPatient/ImagePositionPatient/PixelSpacing/Rows: no geometry"
    if "LOCALIZER" in header.image_type:
        return "localizer", "ImageType contains LOCALIZER"
    for field_name, text in (("SeriesDescription", header.series_description), ("ProtocolName", header.protocol_name)):
        m = _LOCALIZER_RE.search(text.lower())
        if m:
            return "localizer", f"{field_name} contains localizer keyword '{m.group(0)}'"
    if n_orientations > 1 and n_instances <= 5 * n_orientations:
        return "localizer", f"{n_orientations} slice orientations in {n_instances} images (multi-plane scout)"
    if header.image_type[:1] == ("DERIVED",) or "SECONDARY" in header.image_type[:2]:
        return "derived", f"ImageType {'/'.join(header.image_type[:2])} (not an original acquisition)"
    maps = sorted(_DERIVED_IMAGE_TYPES.intersection(header.image_type))
    if maps:
        return "derived", f"ImageType contains {', '.join(maps)} (computed map)"
    m = _DERIVED_DESC_RE.search(header.series_description.lower())
    if m:
        return "derived", f"SeriesDescription contains derived-map keyword '{m.group(1)}'"
    for ts in dict.fromkeys(transfer_syntaxes):
        problem = codec_problem(ts)
        if problem:
            return "unsupported_codec", problem
    if n_slices is None:
        n_slices = (
            n_frames if header.sop_class_uid in ENHANCED_MR_SOP_CLASSES or n_frames > n_instances else n_instances
        )
    if n_slices < MIN_SLICES:
        return "too_few_slices", f"{n_slices} slices per volume < {MIN_SLICES}: too few for a 3D volume"
    if n_orientations > 1:
        return "inconsistent_geometry", f"{n_orientations} different slice orientations in one series"
    if geometry_problem:
        return "inconsistent_geometry", geometry_problem
    return None, ""


def _sop_hash(sop_uids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


def _build_series(infos: list[_FileInfo]) -> tuple[SeriesRecord, list[RejectedFile]]:
    """One series from its files, plus the files left out of it (duplicates), deterministically."""
    dropped: list[RejectedFile] = []
    # Same SOPInstanceUID more than once (re-sent, copied into two folders): keep the smallest path.
    by_sop: dict[str, _FileInfo] = {}
    for info in sorted(infos, key=lambda i: str(i.path)):
        kept = by_sop.setdefault(info.sop_uid, info)
        if kept is not info:
            dropped.append(
                RejectedFile(
                    info.path, "duplicate", "same SOPInstanceUID as another file of the series (kept that one)"
                )
            )
    unique = list(by_sop.values())
    # The same acquisition exported twice, as classic and as enhanced MR (Philips keeps the
    # SeriesInstanceUID for both): keep the copy with more images, classic on a tie.
    classic = [i for i in unique if not i.enhanced]
    enhanced = [i for i in unique if i.enhanced]
    if classic and enhanced:
        n_classic = len(classic)
        n_enhanced = sum(i.n_frames for i in enhanced)
        keep, drop, what = (
            (classic, enhanced, "enhanced") if n_classic >= n_enhanced else (enhanced, classic, "classic")
        )
        for info in drop:
            dropped.append(
                RejectedFile(
                    info.path,
                    "duplicate",
                    f"{what} MR copy of a series that is also exported as "
                    f"{'classic' if what == 'enhanced' else 'enhanced'} MR ({n_classic} classic images, "
                    f"{n_enhanced} enhanced frames); the copy with more images is used",
                )
            )
        unique = keep
    kept = sorted(unique, key=lambda i: str(i.path))
    first = kept[0]
    n_frames = sum(i.n_frames for i in kept)
    has_geometry = all(i.has_geometry for i in kept)
    orientations = [o for i in kept for o in i.orientations]
    positions = [p for i in kept for p in i.positions]
    mosaic = first.mosaic_slices if all(i.mosaic_slices == first.mosaic_slices for i in kept) else None
    geometry = series_geometry(orientations, positions, mosaic)
    transfer_syntaxes = tuple(sorted({i.transfer_syntax for i in kept if i.transfer_syntax}))
    reason, detail = series_rejection(
        first.header,
        len(kept),
        n_frames,
        has_geometry,
        geometry.n_orientations,
        n_slices=geometry.n_slices if has_geometry else None,
        geometry_problem=geometry.problem,
        transfer_syntaxes=transfer_syntaxes,
    )
    record = SeriesRecord(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        files=tuple(i.path for i in kept),
        sop_hash=_sop_hash(i.sop_uid for i in kept),
        header=first.header,
        n_instances=len(kept),
        rejection=reason,
        rejection_detail=detail,
        n_slices=geometry.n_slices,
        n_volumes=geometry.n_volumes,
        transfer_syntaxes=transfer_syntaxes,
    )
    return record, dropped


# --------------------------------------------------------------------------------------------------
# Scanning a folder


def _list_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    out: list[Path] = []
    for root, dirs, files in os.walk(source):
        dirs.sort()
        out.extend(Path(root) / name for name in sorted(files))
    return out


def default_workers() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def _read_all(
    paths: list[Path], workers: int, progress: Callable[[int, int], None] | None
) -> list[_FileInfo | RejectedFile]:
    total = len(paths)
    if workers <= 1 or total < _PARALLEL_MIN_FILES:
        results = []
        for n, p in enumerate(paths, start=1):
            results.append(read_file(p))
            if progress is not None and (n % _CHUNK == 0 or n == total):
                progress(n, total)
        return results
    chunks = [paths[i : i + _CHUNK] for i in range(0, total, _CHUNK)]
    results_by_chunk: dict[int, list[_FileInfo | RejectedFile]] = {}
    done = 0
    # fork, explicitly (3.14 changes the Linux default): forked workers start in milliseconds with
    # pydicom already imported; forkserver/spawn workers re-import it and need a __main__ guard in
    # the caller, and threads gain nothing (parsing holds the GIL). Caveat of fork under a threaded
    # caller (Prefect): a lock held by another thread at fork time stays held in the child; the
    # children only parse files, which keeps that window small, and workers=1 avoids it entirely.
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(max_workers=min(workers, len(chunks)), mp_context=ctx) as pool:
        futures = {pool.submit(_read_chunk, chunk): i for i, chunk in enumerate(chunks)}
        for fut in as_completed(futures):
            results_by_chunk[futures[fut]] = fut.result()
            done += len(chunks[futures[fut]])
            if progress is not None:
                progress(done, total)
    return [r for i in range(len(chunks)) for r in results_by_chunk[i]]


def scan_source(
    source: Path, *, workers: int | None = None, progress: Callable[[int, int], None] | None = None
) -> ScanResult:
    """Scan every file under `source` (a folder, or one file) and group the DICOM ones into series.

    Args:
        source: export root; any layout (flat, patient/study/series, PACS hash folders).
        workers: processes for header parsing; default: the CPUs this process may use. Parsing is
            pure-Python and GIL-bound, so threads do not help; processes do (see the module notes).
        progress: called as progress(files_done, files_total) while reading.

    Returns:
        Series sorted by (study, series number, UID), with rejections filled in, plus the files
        that could not join a series (or were left out of one as duplicates).
    """
    t0 = time.perf_counter()
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"DICOM source {source} does not exist; pass the export folder (or one file)")
    paths = _list_files(source)
    results = _read_all(paths, default_workers() if workers is None else workers, progress)
    rejected: list[RejectedFile] = []
    groups: dict[str, list[_FileInfo]] = {}
    for r in results:
        if isinstance(r, RejectedFile):
            rejected.append(r)
        else:
            groups.setdefault(r.series_uid, []).append(r)
    series = []
    for infos in groups.values():
        record, dropped = _build_series(infos)
        series.append(record)
        rejected.extend(dropped)
    series.sort(
        key=lambda s: (s.study_uid, s.header.series_number if s.header.series_number is not None else -1, s.series_uid)
    )
    return ScanResult(
        series=tuple(series),
        rejected_files=tuple(sorted(rejected, key=lambda r: str(r.path))),
        n_files=len(paths),
        seconds=time.perf_counter() - t0,
    )
