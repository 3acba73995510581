"""The DICOM vocabulary of the scan: the tags it reads, the vendor private elements worth reading, and
the SOP classes that hold MR images (or never hold images).

One table each, so the element walker (`walker`), the header normaliser (`header`), the file reader
(`reader`) and the rejection rules (`reasons`) cannot disagree about them.
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, tag_for_keyword

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


def non_image_kind(sop_class_uid: str) -> str | None:
    """What an object of a never-image SOP class holds (e.g. "structured report / key object
    selection"), or None for any other SOP class.

    Scanners copy image attributes (Rows, Columns, geometry) into raw data and report objects that
    carry no pixel data; deciding by SOP class first keeps such an object from looking like a
    half-copied image (`truncated`): it is rejected as `non_image_sop_class` and its pixel data,
    if it has any, is never checked.
    """
    return next((kind for prefix, kind in _NON_IMAGE_SOP_PREFIXES.items() if sop_class_uid.startswith(prefix)), None)


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
    "PixelBandwidth",
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
