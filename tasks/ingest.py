"""Header-only scan of a DICOM export: find the MR image series in it and say why the rest is skipped.

A hospital export is an arbitrary tree (or one flat folder) of DICOM files, some gzipped, some with
no extension, mixed with reports, secondary captures, half-copied files and the odd README. This
module reads only the headers (pixel data stays on disk), groups instances by SeriesInstanceUID
whatever the folder layout, de-duplicates re-sent instances, and attaches to every series either
nothing (it goes on to classification) or a rejection reason code with a PHI-free explanation.

Raw identifiers (patient ID, study/series UIDs) live only in the in-memory records returned here;
`tasks.deid` turns them into keyed pseudonyms before anything is persisted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import multiprocessing
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

# Series with fewer slices than this cannot make a useful 3D volume (scouts, single-slice tests).
MIN_SLICES = 10
# Files up to this size are read into memory first: parsing from BytesIO is ~1.5x faster than from a
# buffered file, and gzipped files must be inflated anyway. Bigger files are parsed from disk.
_IN_MEMORY_LIMIT = 64 * 1024 * 1024
# Below this many files a process pool costs more (start-up, pickling) than it saves.
_PARALLEL_MIN_FILES = 256
_CHUNK = 48

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

_HEADER_TAGS = [
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "StudyDate",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "SeriesDescription",
    "ProtocolName",
    "SequenceName",
    "PulseSequenceName",
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "FlipAngle",
    "ScanningSequence",
    "SequenceVariant",
    "ScanOptions",
    "MRAcquisitionType",
    "ImageType",
    "ContrastBolusAgent",
    "ContrastBolusAgentSequence",
    "Rows",
    "Columns",
    "PixelSpacing",
    "SliceThickness",
    "SeriesNumber",
    "InstanceNumber",
    "NumberOfFrames",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    # Enhanced MR: the MR Pulse Sequence module replaces ScanningSequence/SequenceVariant ...
    "EchoPulseSequence",
    "SteadyStatePulseSequence",
    "EchoPlanarPulseSequence",
    "SegmentedKSpaceTraversal",
    "SpectrallySelectedSuppression",
    "OversamplingPhase",
    "MagnetizationTransfer",
    # ... and timing/geometry live in the functional groups.
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
]


@dataclass(frozen=True)
class SeriesHeader:
    """The header fields classification and the manifest need, normalised across vendors.

    Times are in milliseconds (as DICOM stores them); an InversionTime of 0 (GE writes it for non-IR
    sequences) becomes None. Multi-valued code strings are tuples of upper-case strings.
    `study_date` is the raw DICOM date: only `tasks.deid` may turn it into a shifted date.
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


@dataclass(frozen=True)
class SeriesRecord:
    """One series of the export. The raw identifiers are for pseudonymisation only, never persisted."""

    series_uid: str
    study_uid: str
    patient_id: str
    files: tuple[Path, ...]
    sop_hash: str
    header: SeriesHeader
    n_instances: int
    rejection: str | None
    rejection_detail: str


@dataclass(frozen=True)
class RejectedFile:
    """A file that could not join any series. Reasons: not_dicom, truncated, unreadable, missing_tags,
    empty_file. `detail` never contains header values (it may be persisted)."""

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
    orientation: tuple[float, ...] | None


# --------------------------------------------------------------------------------------------------
# Value normalisation


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v) for v in value).strip()
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
    return out if out == out else None  # NaN -> None


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
    if value is None:
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def _item(ds: Any, keyword: str) -> Any:
    """First item of a sequence attribute, or None."""
    seq = ds.get(keyword) if ds is not None else None
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
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


def _header_from_dataset(ds: Any) -> tuple[SeriesHeader, int, bool, tuple[float, ...] | None]:
    """Build the normalised header, frame count, geometry presence and slice orientation of one file."""
    enhanced = "SharedFunctionalGroupsSequence" in ds or "PerFrameFunctionalGroupsSequence" in ds
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
    iop = _floats(ds.get("ImageOrientationPatient"), 6)
    ipp = _floats(ds.get("ImagePositionPatient"), 3)
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
        iop = iop or _floats(_fg(ds, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        ipp = ipp or _floats(_fg(ds, "PlanePositionSequence", "ImagePositionPatient"), 3)
        sequence_name = sequence_name or _str(ds.get("PulseSequenceName"))
        agent = _item(ds, "ContrastBolusAgentSequence")
        if not contrast and agent is not None:
            contrast = _str(agent.get("CodeMeaning")) or "yes"
    if ti is not None and ti <= 0:
        ti = None
    header = SeriesHeader(
        modality=_str(ds.get("Modality")).upper(),
        sop_class_uid=_str(ds.get("SOPClassUID")),
        manufacturer=_str(ds.get("Manufacturer")),
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
    )
    n_frames = max(_int(ds.get("NumberOfFrames")) or 1, 1)
    has_geometry = bool(iop and ipp and spacing and header.rows and header.columns)
    return header, n_frames, has_geometry, iop


# --------------------------------------------------------------------------------------------------
# Reading one file


def _load_bytes(path: Path, size: int) -> tuple[io.BytesIO | Any, int]:
    """Open a file for parsing, inflating gzip transparently (by magic bytes, not by extension)."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        with gzip.open(path, "rb") as g:
            data = g.read()
        return io.BytesIO(data), len(data)
    if size <= _IN_MEMORY_LIMIT:
        with open(path, "rb") as f:
            return io.BytesIO(f.read()), size
    return open(path, "rb"), size  # noqa: SIM115 - closed by the caller


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
    if length == 0xFFFFFFFF:  # encapsulated (compressed): must end with a sequence delimiter
        fp.seek(size - 8)
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


_HEADER_TAG_IDS = [Tag(k) for k in _HEADER_TAGS]
_PIXEL_DATA_TAG_LE = b"\xe0\x7f\x10\x00"
_SEQUENCE_DELIMITER_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _after_group_0028(tag: int, vr: str | None, length: int) -> bool:
    """Stop a classic-image parse after the Image Pixel module: nothing later is needed.

    What follows is mostly private vendor data (Siemens CSA, Philips 2001/2005 groups) that costs
    about half the parse time and is never used here.
    """
    return tag > 0x0028FFFF


def _read(fp: Any, *, force: bool, early: bool) -> Any:
    fp.seek(0)
    if early:
        return pydicom.filereader.read_partial(
            fp, stop_when=_after_group_0028, specific_tags=_HEADER_TAG_IDS, force=force
        )
    return pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=_HEADER_TAGS, force=force)


def _pixel_data_ends_file(data: bytes, ds: Any) -> bool:
    """True when the last Pixel Data element in `data` is intact and ends exactly at end of file.

    Only a positive answer is trusted (a false positive needs the tag bytes inside the pixels *and*
    a length field pointing exactly at the end of the file); anything else goes to the full parse.
    """
    implicit, little = getattr(ds, "original_encoding", None) or (None, None)
    if not little:
        return False
    pos = data.rfind(_PIXEL_DATA_TAG_LE)
    if pos < 0:
        return False
    if implicit:
        start, length = pos + 8, struct.unpack("<I", data[pos + 4 : pos + 8])[0]
    else:
        if data[pos + 4 : pos + 6] not in (b"OB", b"OW") or data[pos + 6 : pos + 8] != b"\x00\x00":
            return False
        start, length = pos + 12, struct.unpack("<I", data[pos + 8 : pos + 12])[0]
    if length == 0xFFFFFFFF:
        return data.endswith(_SEQUENCE_DELIMITER_LE)
    return start + length == len(data)


def _parse_header(fp: Any, size: int) -> tuple[Any, str | None]:
    """Parse the header and check the pixel data is complete; returns (dataset, truncation detail).

    Fast path for classic single-frame files held in memory: stop parsing after group 0028 and
    verify the pixel data by locating its element from the end of the file. Enhanced multi-frame
    files (whose timing and geometry live in the functional groups near the end of the header) and
    anything the fast check cannot confirm get a full header parse up to the pixel data.
    """
    in_memory = isinstance(fp, io.BytesIO)
    force = False
    try:
        ds = _read(fp, force=False, early=in_memory)
    except InvalidDicomError:
        fp.seek(0)
        if not _looks_like_raw_dataset(fp.read(8)):
            raise _NotDicomError from None
        force = True
        ds = _read(fp, force=True, early=in_memory)
    if in_memory:
        multiframe = _str(ds.get("SOPClassUID")) in ENHANCED_MR_SOP_CLASSES or (_int(ds.get("NumberOfFrames")) or 1) > 1
        if not multiframe and _pixel_data_ends_file(fp.getvalue(), ds):
            return ds, None
        ds = _read(fp, force=force, early=False)
    return ds, _pixel_data_problem(fp, ds, size)


def read_file(path: Path) -> _FileInfo | RejectedFile:
    """Read one file's header (no pixels) into a `_FileInfo`, or say why it cannot be used."""
    try:
        size = path.stat().st_size
    except OSError as err:
        return RejectedFile(path, "unreadable", f"cannot stat file: {type(err).__name__}")
    if size == 0:
        return RejectedFile(path, "empty_file", "file has 0 bytes")
    try:
        fp, size = _load_bytes(path, size)
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        return RejectedFile(path, "truncated", f"gzip stream is incomplete or corrupt ({type(err).__name__})")
    except OSError as err:
        return RejectedFile(path, "unreadable", f"cannot read file: {type(err).__name__}: {err.strerror or ''}")
    if size == 0:
        return RejectedFile(path, "empty_file", "gzip file inflates to 0 bytes")
    with fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds, problem = _parse_header(fp, size)
        except _NotDicomError:
            return RejectedFile(path, "not_dicom", "no DICM prefix and no DICOM data set at the start")
        except (EOFError, struct.error) as err:
            return RejectedFile(path, "truncated", f"header ends early ({type(err).__name__})")
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt input
            return RejectedFile(path, "unreadable", f"pydicom cannot parse the header: {type(err).__name__}")
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
            header, n_frames, has_geometry, iop = _header_from_dataset(ds)
        except Exception as err:  # noqa: BLE001 - malformed values deep in vendor sequences
            return RejectedFile(path, "unreadable", f"header values cannot be decoded: {type(err).__name__}")
    study_uid = _str(ds.get("StudyInstanceUID"))
    patient_id = _str(ds.get("PatientID"))
    if not patient_id:
        # Type 2 (may be empty). Pseudonymising "" would merge every such patient into one subject;
        # falling back to the study keeps each study its own subject, which is the safe mistake.
        patient_id = f"study:{study_uid or series_uid}"
    return _FileInfo(
        path=path,
        series_uid=series_uid,
        study_uid=study_uid,
        patient_id=patient_id,
        sop_uid=sop_uid,
        header=header,
        n_frames=n_frames,
        has_geometry=has_geometry,
        orientation=iop,
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


def _orientation_clusters(orientations: Iterable[tuple[float, ...] | None], tol: float = 1e-2) -> int:
    reps: list[tuple[float, ...]] = []
    for o in orientations:
        if o is None:
            continue
        if not any(max(abs(a - b) for a, b in zip(o, r, strict=True)) < tol for r in reps):
            reps.append(o)
    return len(reps)


def series_rejection(
    header: SeriesHeader, n_instances: int, n_frames: int, has_geometry: bool, n_orientations: int = 1
) -> tuple[str | None, str]:
    """Reason code and PHI-free detail for a series that must not be curated, or (None, "").

    Order matters: the first matching reason is the one reported (a secondary capture of a scout is
    "derived", an SR without geometry is "non_image_sop_class").
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
    if n_orientations > 1:
        return "localizer", f"{n_orientations} different slice orientations in one series (multi-plane scout)"
    if header.image_type[:1] == ("DERIVED",) or "SECONDARY" in header.image_type[:2]:
        return "derived", f"ImageType {'/'.join(header.image_type[:2])} (not an original acquisition)"
    maps = sorted(_DERIVED_IMAGE_TYPES.intersection(header.image_type))
    if maps:
        return "derived", f"ImageType contains {', '.join(maps)} (computed map)"
    m = _DERIVED_DESC_RE.search(header.series_description.lower())
    if m:
        return "derived", f"SeriesDescription contains derived-map keyword '{m.group(1)}'"
    slices = n_frames if header.sop_class_uid in ENHANCED_MR_SOP_CLASSES or n_frames > n_instances else n_instances
    if slices < MIN_SLICES:
        unit = "frames" if slices == n_frames and n_frames > n_instances else "instances"
        return "too_few_slices", f"{slices} {unit} < {MIN_SLICES}: too few slices for a 3D volume"
    return None, ""


def _sop_hash(sop_uids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sop_uids)).encode()).hexdigest()


def _build_series(infos: list[_FileInfo]) -> SeriesRecord:
    # De-duplicate re-sent instances: keep the copy with the smallest path (stable across runs).
    by_sop: dict[str, _FileInfo] = {}
    for info in sorted(infos, key=lambda i: str(i.path)):
        by_sop.setdefault(info.sop_uid, info)
    kept = sorted(by_sop.values(), key=lambda i: str(i.path))
    first = kept[0]
    n_frames = sum(i.n_frames for i in kept)
    has_geometry = all(i.has_geometry for i in kept)
    reason, detail = series_rejection(
        first.header, len(kept), n_frames, has_geometry, _orientation_clusters(i.orientation for i in kept)
    )
    return SeriesRecord(
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        patient_id=first.patient_id,
        files=tuple(i.path for i in kept),
        sop_hash=_sop_hash(by_sop),
        header=first.header,
        n_instances=len(kept),
        rejection=reason,
        rejection_detail=detail,
    )


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
    # fork, explicitly (3.14 changes the Linux default): on 662 Philips files and 2 cores, forked
    # workers were ~1.4x faster than one process, forkserver/spawn workers (which re-import pydicom
    # and need a __main__ guard in the caller) were slower than one process, and threads gained
    # nothing (parsing holds the GIL). Caveat of fork under a threaded caller (Prefect): a lock held by
    # another thread at fork time stays held in the child; the children only parse files, which keeps
    # that window small, and workers=1 avoids it entirely.
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
        that could not join a series.
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
    series = [_build_series(infos) for infos in groups.values()]
    series.sort(
        key=lambda s: (s.study_uid, s.header.series_number if s.header.series_number is not None else -1, s.series_uid)
    )
    return ScanResult(
        series=tuple(series),
        rejected_files=tuple(sorted(rejected, key=lambda r: str(r.path))),
        n_files=len(paths),
        seconds=time.perf_counter() - t0,
    )
