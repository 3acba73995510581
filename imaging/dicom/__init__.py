"""Header-only reading of DICOM exports: series, their geometry, and why the rest is skipped."""

from imaging.dicom.scan import (
    FILE_REASONS,
    MIN_SLICES,
    SERIES_REASONS,
    RejectedFile,
    ScanResult,
    SeriesGeometry,
    SeriesHeader,
    SeriesRecord,
    codec_problem,
    default_workers,
    header_from_dataset,
    read_file,
    scan_source,
    series_geometry,
    series_rejection,
)

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
