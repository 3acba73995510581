"""`SeriesHeader`: the header facts classification and the manifest need, in one vocabulary for
every vendor, and the per-instance geometry (orientations, positions, mosaic slice count).

`header_from_dataset` takes a pydicom Dataset or the walker's `_RawHeader` alike, so both parsing
paths give the same header. Vendor quirks are resolved here and nowhere else: enhanced MR keeps its
timing in functional groups, Philips its inversion delay and GE its sequence name and image kind in
private tags, Siemens its mosaic slice count too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imaging.dicom.tags import _PRIVATE
from imaging.dicom.values import _codes, _decode_value, _float, _floats, _int, _str
from imaging.dicom.walker import _RawHeader

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
    pixel_bandwidth: float | None = None  # Hz/pixel: echo-planar readouts need >~1400, TSE/GRE far less


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
        pixel_bandwidth=_float(ds.get("PixelBandwidth")),
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
