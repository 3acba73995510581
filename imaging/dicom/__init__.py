"""Header-only reading of DICOM exports: the MR image series in them, their geometry, and why the rest
is skipped. Pixel data stays on disk; conversion (`imaging.convert`) reads it later.

Raw identifiers (patient ID, study/series UIDs) live only in the in-memory records returned here;
`imaging.deid` turns them into keyed pseudonyms before anything is persisted.

One module per concern, lowest first (each imports only those above it):

    tags.py      the tags read, vendor private tags, SOP classes
    values.py    element values decoded and normalised (str, float, codes)
    walker.py    the fast element walker for classic files held in memory
    header.py    SeriesHeader and header_from_dataset (vendor quirks), per-instance geometry
    geometry.py  series_geometry: one regular slice stack per volume, or what is wrong
    reasons.py   rejection reason codes and the rules that pick one
    reader.py    read_file: one file to its header facts or a RejectedFile
    scan.py      scan_source: every file of an export grouped into de-duplicated series
"""

from imaging.dicom.geometry import SeriesGeometry, series_geometry
from imaging.dicom.header import SeriesHeader, header_from_dataset
from imaging.dicom.reader import RejectedFile, read_file
from imaging.dicom.reasons import FILE_REASONS, MIN_SLICES, SERIES_REASONS, codec_problem, series_rejection
from imaging.dicom.scan import ScanResult, SeriesRecord, default_workers, scan_source

__all__ = [
    "FILE_REASONS",
    "MIN_SLICES",
    "SERIES_REASONS",
    "RejectedFile",
    "ScanResult",
    "SeriesGeometry",
    "SeriesHeader",
    "SeriesRecord",
    "codec_problem",
    "default_workers",
    "header_from_dataset",
    "read_file",
    "scan_source",
    "series_geometry",
    "series_rejection",
]
