"""scan_source on real exports: grouping, gzip, enhanced MR, broken files, duplicates, rejection rules."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from imaging.dicom import (
    FILE_REASONS,
    MIN_SLICES,
    SERIES_REASONS,
    ScanResult,
    SeriesRecord,
    scan_source,
    series_rejection,
)
from imaging.dicom import reader as dicom_reader

EXPECTED_COUNTS = {1301: 170, 1901: 40, 1903: 240, 2001: 212}
# slices per volume x volumes: the pCASL source holds 6 dynamics, the B0 map magnitude/phase images
EXPECTED_SHAPES = {1301: (170, 1), 1901: (40, 1), 1903: (40, 6), 2001: (53, 4)}


@pytest.fixture(scope="module")
def flat_scan(philips_flat_gunzipped: Path) -> ScanResult:
    return scan_source(philips_flat_gunzipped, workers=2)


@pytest.fixture(scope="module")
def mprage(flat_scan: ScanResult) -> SeriesRecord:
    return next(s for s in flat_scan.series if "MPRAGE" in s.header.series_description)


def by_number(scan: ScanResult) -> dict[int | None, SeriesRecord]:
    return {s.header.series_number: s for s in scan.series}


def test_flat_folder_grouped_by_series_uid(flat_scan: ScanResult, philips_flat_gunzipped: Path) -> None:
    assert flat_scan.n_files == 662
    assert flat_scan.rejected_files == ()
    got = by_number(flat_scan)
    assert {n: s.n_instances for n, s in got.items()} == EXPECTED_COUNTS
    assert {n: (s.n_slices, s.n_volumes) for n, s in got.items()} == EXPECTED_SHAPES
    assert len({s.series_uid for s in flat_scan.series}) == 4
    for s in flat_scan.series:
        assert s.rejection is None, (s.header.series_description, s.rejection_detail)
        assert all(f.parent == philips_flat_gunzipped for f in s.files)
        assert list(s.files) == sorted(s.files, key=str)
        assert len(s.files) == s.n_instances
        # every file of the series really belongs to it (the prefix is the series number here)
        assert {f.name.split("_")[0] for f in s.files} == {str(s.header.series_number)}
        assert len(s.sop_hash) == 64 and int(s.sop_hash, 16) >= 0
        assert s.patient_id and s.study_uid


def test_mprage_header_normalised(mprage: SeriesRecord) -> None:
    h = mprage.header
    assert mprage.n_instances == 170
    assert h.modality == "MR" and h.manufacturer == "Philips" and h.field_strength == 3.0
    assert h.repetition_time == pytest.approx(6.501, abs=1e-3)  # Philips stores the shot TR ...
    assert h.echo_time == pytest.approx(2.93)
    # ... and no InversionTime element: the 900 ms inversion delay is only in its private prepulse fields
    assert h.inversion_time == 900.0 and h.vendor_sequence == "T1TFE" and h.epi_factor == 1
    assert h.scanning_sequence == ("GR",) and h.sequence_variant == ("MP",)
    assert h.mr_acquisition_type == "3D"
    assert h.image_type[:2] == ("ORIGINAL", "PRIMARY")
    assert (h.rows, h.columns, h.pixel_spacing, h.slice_thickness) == (256, 256, (1.0, 1.0), 1.0)
    assert h.study_date == "20210902"


def test_gz_originals_give_the_same_series(flat_scan: ScanResult, shared_data: Path) -> None:
    gz = scan_source(shared_data / "dicom" / "philips_flat_folder", workers=2)
    assert gz.rejected_files == ()
    a, b = by_number(flat_scan), by_number(gz)
    assert a.keys() == b.keys()
    for n in a:
        assert (a[n].series_uid, a[n].sop_hash, a[n].n_instances) == (b[n].series_uid, b[n].sop_hash, b[n].n_instances)
        assert a[n].header == b[n].header
        assert all(f.name.endswith(".dcm.gz") for f in b[n].files)


def test_serial_and_parallel_scans_agree(flat_scan: ScanResult, philips_flat_gunzipped: Path) -> None:
    calls: list[tuple[int, int]] = []
    serial = scan_source(philips_flat_gunzipped, workers=1, progress=lambda d, t: calls.append((d, t)))
    assert serial.series == flat_scan.series
    assert calls[-1] == (662, 662) and all(t == 662 for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_enhanced_multiframe_reads_functional_groups(shared_data: Path) -> None:
    scan = scan_source(shared_data / "dicom" / "siemens_xa30_enhanced_t1" / "In")
    assert scan.rejected_files == ()
    (s,) = scan.series
    h = s.header
    assert s.n_instances == 1 and s.rejection is None  # 96 frames count as slices
    assert (s.n_slices, s.n_volumes) == (96, 1)
    assert h.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4.1"
    # none of these exist at the top level of this file: they come from the functional groups
    assert h.inversion_time == 900.0
    assert h.repetition_time == 1800.0
    assert h.echo_time == pytest.approx(2.41)
    assert h.flip_angle == 9.0
    assert h.pixel_spacing == (2.0, 2.0) and h.slice_thickness == 2.0
    assert "GR" in h.scanning_sequence and "IR" in h.scanning_sequence and "MP" in h.sequence_variant
    assert h.sequence_name == "*tfl3d1_16ns"


def test_broken_files_get_reason_codes(tmp_path: Path, philips_flat_gunzipped: Path) -> None:
    real = (philips_flat_gunzipped / "1301_0001.dcm").read_bytes()
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("PatientName: nobody\nthis is not DICOM\n")
    (tmp_path / "cut_in_pixels").write_bytes(real[: len(real) - 5000])  # no extension on purpose
    (tmp_path / "cut_in_header.dcm").write_bytes(real[:4000])
    packed = gzip.compress(real)
    (tmp_path / "cut.dcm.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "empty.dcm.gz").write_bytes(gzip.compress(b""))
    scan = scan_source(tmp_path)
    reasons = {f.path.name: f.reason for f in scan.rejected_files}
    assert reasons == {
        "empty.dcm": "empty_file",
        "empty.dcm.gz": "empty_file",
        "notes.txt": "not_dicom",
        "cut_in_pixels": "truncated",
        "cut_in_header.dcm": "truncated",
        "cut.dcm.gz": "truncated",
    }
    assert scan.series == () and scan.n_files == 6
    for f in scan.rejected_files:
        assert "nobody" not in f.detail and str(tmp_path) not in f.detail


def test_compressed_transfer_syntaxes_are_not_flagged_truncated(shared_data: Path) -> None:
    scan = scan_source(shared_data / "dicom" / "transfer_syntaxes" / "In")
    assert scan.rejected_files == ()
    (s,) = scan.series  # nine encodings of one Siemens mosaic, each its own instance
    assert s.n_instances == 9
    # a mosaic instance is a whole 35-slice volume (Siemens private NumberOfImagesInMosaic), not 1 slice
    assert (s.n_slices, s.n_volumes) == (35, 9) and s.rejection is None
    assert len(s.transfer_syntaxes) == 7 and "1.2.840.10008.1.2.4.90" in s.transfer_syntaxes


def test_duplicate_sop_instances_do_not_change_hash(tmp_path: Path, mprage: SeriesRecord) -> None:
    for f in mprage.files:
        shutil.copy(f, tmp_path / f.name)
    dup_dir = tmp_path / "resent"
    dup_dir.mkdir()
    shutil.copy(mprage.files[5], dup_dir / "again.dcm")
    shutil.copy(mprage.files[5], tmp_path / "zz_copy_of_6.dcm")
    scan = scan_source(tmp_path, workers=2)
    (s,) = scan.series
    assert s.n_instances == 170 and len(s.files) == 170
    assert s.sop_hash == mprage.sop_hash
    assert tmp_path / mprage.files[5].name in s.files  # the smallest path of the copies is kept
    assert dup_dir / "again.dcm" not in s.files and tmp_path / "zz_copy_of_6.dcm" not in s.files
    assert scan.n_files == 172
    # the copies left out are accounted for, with a reason code
    assert {(f.path, f.reason) for f in scan.rejected_files} == {
        (dup_dir / "again.dcm", "duplicate"),
        (tmp_path / "zz_copy_of_6.dcm", "duplicate"),
    }
    assert s.rejection is None  # a re-sent slice is not a missing or extra slice


def test_too_few_slices(tmp_path: Path, mprage: SeriesRecord) -> None:
    for f in mprage.files[: MIN_SLICES - 1]:
        shutil.copy(f, tmp_path / f.name)
    (s,) = scan_source(tmp_path).series
    assert s.rejection == "too_few_slices" and f"{MIN_SLICES - 1} slices per volume" in s.rejection_detail
    assert s.sop_hash != mprage.sop_hash


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22", "modality": "SR"}, "non_image_sop_class"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.11.1", "modality": "PR"}, "non_image_sop_class"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.59", "modality": "KO"}, "non_image_sop_class"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.7", "modality": "MR"}, "derived"),
        ({"sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "modality": "CT"}, "non_mr_modality"),
        ({"image_type": ("DERIVED", "SECONDARY", "MPR")}, "derived"),
        ({"image_type": ("DERIVED", "PRIMARY", "DIFFUSION", "ADC")}, "derived"),
        ({"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")}, "localizer"),
        ({"series_description": "SmartBrain_SURVEY"}, "localizer"),
        ({"series_description": "AAHead_Scout_64ch-head-coil"}, "localizer"),
        ({"series_description": "3-plane loc"}, "localizer"),
        ({"series_description": "ep2d_diff_ADC"}, "derived"),
        ({"series_description": "t1_mpr_sag_p2_iso"}, None),  # 'mpr' here is MPRAGE, not a reformat
        ({"series_description": "gre_FA5"}, None),  # variable-flip-angle source, not an FA map
    ],
)
def test_series_rejection_rules(mprage: SeriesRecord, changes: dict, expected: str | None) -> None:
    header = dataclasses.replace(mprage.header, **changes)
    reason, detail = series_rejection(header, n_instances=170, n_frames=170, has_geometry=True)
    assert reason == expected, detail
    assert bool(detail) == (expected is not None)
    assert expected is None or expected in SERIES_REASONS


def test_geometry_and_orientation_rules(mprage: SeriesRecord) -> None:
    h = mprage.header
    assert series_rejection(h, 170, 170, has_geometry=False)[0] == "missing_tags"
    # a handful of images in three planes is a scout; many images in several planes is broken geometry
    assert series_rejection(h, 9, 9, has_geometry=True, n_orientations=3)[0] == "localizer"
    assert series_rejection(h, 30, 30, has_geometry=True, n_orientations=3)[0] == "inconsistent_geometry"
    reason, detail = series_rejection(h, 170, 170, True, geometry_problem="slice spacing varies from 1 to 2 mm")
    assert (reason, detail) == ("inconsistent_geometry", "slice spacing varies from 1 to 2 mm")
    # too few slices per volume wins over geometry; slices per volume, not instances, is what counts
    assert series_rejection(h, 60, 60, True, n_slices=6, geometry_problem="x")[0] == "too_few_slices"
    # enhanced: one instance with many frames is a full volume; with few frames it is not
    enhanced = dataclasses.replace(h, sop_class_uid="1.2.840.10008.5.1.4.1.1.4.1")
    assert series_rejection(enhanced, 1, 96, has_geometry=True)[0] is None
    assert series_rejection(enhanced, 1, 3, has_geometry=True)[0] == "too_few_slices"


def test_reason_code_vocabularies_are_distinct() -> None:
    assert len(set(SERIES_REASONS)) == len(SERIES_REASONS) and len(set(FILE_REASONS)) == len(FILE_REASONS)
    assert "duplicate" in FILE_REASONS and "inconsistent_geometry" in SERIES_REASONS


RAW_DATA_STORAGE = "1.2.840.10008.5.1.4.1.1.66"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _object_without_pixels(path: Path, sop_class: str, modality: str, transfer_syntax: str) -> None:
    """An object as scanners write raw data and reports: image attributes copied from the acquisition
    (Rows, Columns, geometry) but no Pixel Data element."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), generate_uid(), 99
    ds.PatientID = "synthetic"
    ds.Rows = ds.Columns = 64
    ds.PixelSpacing = [1.0, 1.0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 0]
    if modality == "SR":
        item = Dataset()
        item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "no finding"
        ds.ValueType, ds.ContentSequence = "CONTAINER", Sequence([item])
    if sop_class == RAW_DATA_STORAGE:  # vendor raw data lives in a private group after the pixel data's place
        ds.private_block(0x7FE1, "VENDOR RAW DATA", create=True).add_new(0x10, "OB", bytes(2048))
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("parser", ["walker", "pydicom"])
def test_non_image_objects_are_rejected_by_sop_class_not_as_truncated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transfer_syntax: str, parser: str
) -> None:
    """Raw data and reports carry no pixel data: that is their SOP class, not a corrupt export."""
    if parser == "pydicom":  # files above the in-memory limit are parsed by pydicom from disk
        monkeypatch.setattr(dicom_reader, "_IN_MEMORY_LIMIT", 0)
    _object_without_pixels(tmp_path / "raw.dcm", RAW_DATA_STORAGE, "MR", transfer_syntax)
    _object_without_pixels(tmp_path / "sr.dcm", COMPREHENSIVE_SR, "SR", transfer_syntax)
    # the same attributes under an MR image SOP class: an image whose pixels are missing is truncated
    _object_without_pixels(tmp_path / "mr.dcm", MR_IMAGE_STORAGE, "MR", transfer_syntax)
    scan = scan_source(tmp_path, workers=1)
    assert [(f.path.name, f.reason) for f in scan.rejected_files] == [("mr.dcm", "truncated")]
    got = {s.files[0].name: (s.rejection, s.rejection_detail) for s in scan.series}
    assert set(got) == {"raw.dcm", "sr.dcm"}
    assert got["raw.dcm"][0] == "non_image_sop_class" and RAW_DATA_STORAGE in got["raw.dcm"][1]
    assert "raw data" in got["raw.dcm"][1]
    assert got["sr.dcm"][0] == "non_image_sop_class" and "structured report" in got["sr.dcm"][1]
