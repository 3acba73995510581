"""Ingest on every real vendor export: fast header walker vs pydicom, mosaics, codecs, double exports,
broken geometry, and reason codes in the manifest."""

from __future__ import annotations

import dataclasses
import gzip
import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.deid import Pseudonymizer
from imaging.dicom import (
    FILE_REASONS,
    SERIES_REASONS,
    RejectedFile,
    codec_problem,
    header_from_dataset,
    read_file,
    scan_source,
)
from imaging.dicom.header import _frame_geometry, _mosaic_slices
from imaging.dicom.reader import _FileInfo
from imaging.dicom.walker import _Fallback, _fast_parse
from tasks.context import open_warehouse
from tasks.record import record_scan

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def test_fast_walker_equals_pydicom_on_real_files(dicom_data: Path) -> None:
    """The element walker and a full pydicom parse give the same header, geometry and mosaic count."""
    files = [
        p
        for p in sorted(dicom_data.rglob("*"))
        if p.is_file() and not p.name.endswith((".txt", ".json", ".nii", ".nii.gz"))
    ]
    sample = files[::7] + [p for p in files if "20180918Si" in str(p)]
    walked = 0
    for path in sample:
        data = _bytes(path)
        try:
            raw, problem = _fast_parse(data)
        except _Fallback:
            continue  # enhanced / big-endian: pydicom's own path
        walked += 1
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        assert problem is None, path
        h_raw, h_ds = header_from_dataset(raw), header_from_dataset(ds)
        assert h_raw == h_ds, path
        assert _frame_geometry(raw) == _frame_geometry(ds), path
        assert _mosaic_slices(raw, h_raw) == _mosaic_slices(ds, h_ds), path
    assert walked >= 200


def test_nine_transfer_syntaxes_give_one_header(dicom_data: Path) -> None:
    """Implicit/explicit little endian, big endian, RLE, JPEG, JPEG-LS, JPEG 2000: same header values."""
    infos = [read_file(p) for p in sorted((dicom_data / "transfer_syntaxes" / "In").glob("*.dcm"))]
    assert all(isinstance(i, _FileInfo) for i in infos)
    # the same image written nine times; only the SeriesNumber (1..9) tells the copies apart
    headers = {dataclasses.replace(i.header, series_number=None) for i in infos}
    assert len(headers) == 1 and sorted(i.header.series_number for i in infos) == list(range(1, 10))
    (h,) = headers
    assert "MOSAIC" in h.image_type and h.sequence_name == "*epfid2d1_64"
    assert {i.mosaic_slices for i in infos} == {35}
    assert len({i.transfer_syntax for i in infos}) == 7


def test_siemens_mosaic_epi_counts_slices_not_instances(dicom_data: Path) -> None:
    scan = scan_source(dicom_data / "nih_ge_siemens" / "In" / "20180918Si")
    assert {f.reason for f in scan.rejected_files} == {"not_dicom"}  # the README text files
    assert all(f.path.name.startswith("README") for f in scan.rejected_files)
    assert len(scan.series) == 4
    for s in scan.series:
        # 2 mosaic files of 5 slices each: 2 volumes of 5 slices (dcm2niix: 72x72x5x2)
        assert (s.n_instances, s.n_slices, s.n_volumes) == (2, 5, 2)
        assert s.rejection == "too_few_slices" and "5 slices per volume" in s.rejection_detail


def test_ge_epi_time_series_shape(dicom_data: Path) -> None:
    scan = scan_source(dicom_data / "nih_ge_siemens" / "In" / "20180918GE")
    assert len(scan.series) == 4
    for s in scan.series:
        assert (s.n_instances, s.n_slices, s.n_volumes) == (150, 15, 10) and s.rejection is None
        assert s.header.vendor_sequence == "epiRT" and s.header.complex_part == "MAGNITUDE"


def test_missing_decoder_is_a_clear_per_series_error(dicom_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class NoPlugin:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg"]

    import pydicom.pixels

    codec_problem.cache_clear()
    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: NoPlugin())
    try:
        (jpeg2000,) = scan_source(dicom_data / "transfer_syntaxes" / "In" / "9.dcm").series
        (native,) = scan_source(dicom_data / "transfer_syntaxes" / "In" / "1.dcm").series
    finally:
        monkeypatch.undo()
        codec_problem.cache_clear()
    assert jpeg2000.rejection == "unsupported_codec"
    assert "JPEG 2000" in jpeg2000.rejection_detail and "pylibjpeg-openjpeg" in jpeg2000.rejection_detail
    assert "install" in jpeg2000.rejection_detail
    assert native.rejection is None  # uncompressed pixel data needs no plugin
    # with the real plugins installed, every transfer syntax in the data has a decoder
    for ts in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.5"):
        assert codec_problem(ts) is None


def _classic_copies(enhanced: Path, out: Path, frames: range) -> list[Path]:
    """Classic MR Image Storage files of some frames of a real enhanced object, same SeriesInstanceUID
    (what a Philips console writes when a series is exported both ways)."""
    src = pydicom.dcmread(enhanced)
    pixels = src.pixel_array
    shared = src.SharedFunctionalGroupsSequence[0]
    first = src.PerFrameFunctionalGroupsSequence[0]
    iop = (shared.get("PlaneOrientationSequence") or first.PlaneOrientationSequence)[0].ImageOrientationPatient
    measures = (shared.get("PixelMeasuresSequence") or first.PixelMeasuresSequence)[0]
    paths = []
    for k in frames:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(out / f"classic_{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        for keyword in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "PatientID",
            "StudyDate",
            "Modality",
            "Manufacturer",
            "ManufacturerModelName",
            "SeriesDescription",
            "ProtocolName",
            "SeriesNumber",
            "ImageType",
        ):
            setattr(ds, keyword, src.get(keyword))
        ds.SOPClassUID = MR_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = ["GR", "IR"], ["SK", "SP", "MP"], "3D"
        ds.RepetitionTime, ds.EchoTime, ds.InversionTime, ds.FlipAngle = 1800, 2.41, 900, 9
        frame = src.PerFrameFunctionalGroupsSequence[k]
        ds.ImagePositionPatient = frame.PlanePositionSequence[0].ImagePositionPatient
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing, ds.SliceThickness = measures.PixelSpacing, measures.SliceThickness
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = int(src.Rows), int(src.Columns)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = int(src.PixelRepresentation)
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = out / f"classic_{k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_classic_and_enhanced_export_of_one_series(dicom_data: Path, tmp_path: Path) -> None:
    enhanced = next((dicom_data / "siemens_xa30_enhanced_t1" / "In").glob("*.dcm"))
    both = tmp_path / "both"
    both.mkdir()
    shutil.copy(enhanced, both / "enhanced.dcm")
    classic = _classic_copies(enhanced, both, range(96))
    scan = scan_source(both)
    (s,) = scan.series  # one SeriesInstanceUID: one series, not 97 instances of a mixed one
    assert s.n_instances == 96 and set(s.files) == set(classic) and s.n_slices == 96 and s.rejection is None
    assert [(f.path.name, f.reason) for f in scan.rejected_files] == [("enhanced.dcm", "duplicate")]
    assert "enhanced MR copy" in scan.rejected_files[0].detail
    # an incomplete classic export loses to the complete enhanced object, again deterministically
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(enhanced, partial / "enhanced.dcm")
    for p in classic[:50]:
        shutil.copy(p, partial / p.name)
    scan2 = scan_source(partial)
    (s2,) = scan2.series
    assert [f.name for f in s2.files] == ["enhanced.dcm"] and s2.n_slices == 96
    assert sorted(f.reason for f in scan2.rejected_files) == ["duplicate"] * 50
    assert scan_source(partial).series == scan2.series  # same answer on a rerun


@pytest.fixture(scope="module")
def pcasl_files(philips_flat_gunzipped: Path) -> list[Path]:
    return sorted(philips_flat_gunzipped.glob("1901_*.dcm"))


def _rewrite(files: list[Path], out: Path, change) -> None:
    out.mkdir()
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        change(k, ds)
        ds.save_as(out / f.name)


def _unchanged(k: int, ds: pydicom.Dataset) -> None:
    return None


def _sheared(k: int, ds: pydicom.Dataset) -> None:
    """Each slice 0.2 mm further along its rows than the last: a sheared stack, 7.8 mm overall."""
    row = [float(v) for v in ds.ImageOrientationPatient[:3]]
    ds.ImagePositionPatient = [float(v) + 0.2 * k * r for v, r in zip(ds.ImagePositionPatient, row, strict=True)]


def _every_other_coronal(k: int, ds: pydicom.Dataset) -> None:
    if k % 2:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


@pytest.mark.parametrize(
    ("case", "drop", "change", "expected_detail"),
    [
        ("missing_slice", 20, _unchanged, "slice spacing varies from 4 to 8 mm"),
        ("gantry_tilt", None, _sheared, "sideways across the stack"),
        ("mixed_orientations", None, _every_other_coronal, "2 different slice orientations"),
    ],
)
def test_inconsistent_geometry_is_rejected(
    pcasl_files: list[Path], tmp_path: Path, case: str, drop: int | None, change, expected_detail: str
) -> None:
    files = [f for k, f in enumerate(pcasl_files) if k != drop]
    _rewrite(files, tmp_path / case, change)
    (s,) = scan_source(tmp_path / case).series
    assert s.rejection == "inconsistent_geometry", (s.rejection, s.rejection_detail)
    assert expected_detail in s.rejection_detail
    (original,) = [u for u in scan_source(pcasl_files[0].parent).series if u.header.series_number == 1901]
    assert original.rejection is None


def test_incomplete_volume_in_a_time_series(philips_flat_gunzipped: Path, tmp_path: Path) -> None:
    files = sorted(philips_flat_gunzipped.glob("1903_*.dcm"))  # 40 slices x 6 dynamics
    for f in files[:100] + files[101:]:
        shutil.copy(f, tmp_path / f.name)
    (s,) = scan_source(tmp_path).series
    assert s.rejection == "inconsistent_geometry"
    assert "5 images at some slice positions and 6 at others" in s.rejection_detail


def test_every_rejection_has_a_reason_code_in_the_manifest(dicom_data: Path, tmp_path: Path) -> None:
    scan = scan_source(dicom_data, workers=2)
    ctx = open_warehouse(tmp_path / "wh", run_id="run-test")
    record_scan(ctx, dicom_data, scan, Pseudonymizer(bytes(range(32))))
    m = ctx.manifest
    files = m.query("SELECT relpath, reason, detail FROM rejected_files")
    assert files and {r["reason"] for r in files} <= set(FILE_REASONS)
    assert all(r["detail"] for r in files)
    assert {r["reason"] for r in files} == {"not_dicom"}  # READMEs and the dcm2niix reference NIfTI/JSON
    assert all(not r["relpath"].endswith((".dcm", ".dcm.gz")) for r in files)
    series = m.query("SELECT series_number, state, reason, detail FROM series")
    rejected = [r for r in series if r["state"] == "rejected"]
    assert rejected and {r["reason"] for r in rejected} <= set(SERIES_REASONS)
    assert all(r["detail"] for r in rejected)
    assert sorted(r["series_number"] for r in rejected) == [3, 4, 5, 6]  # the 5-slice Siemens mosaics
    assert {r["reason"] for r in rejected} == {"too_few_slices"}
    not_rejected = [r for r in series if r["state"] != "rejected"]
    assert all(r["reason"] in (None, "class_other") for r in not_rejected)


def _non_image(path: Path, sop_class: str, modality: str, like: pydicom.Dataset, pixels: bool = False) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    ds.StudyInstanceUID, ds.PatientID = like.StudyInstanceUID, like.PatientID
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 99
    if pixels:  # a screenshot: an image, but not an acquisition
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(256)
    ds.save_as(path, enforce_file_format=True)


def test_reports_presentation_states_and_screenshots_beside_real_images(
    pcasl_files: list[Path], tmp_path: Path
) -> None:
    for f in pcasl_files:
        shutil.copy(f, tmp_path / f.name)
    like = pydicom.dcmread(pcasl_files[0], stop_before_pixels=True)
    _non_image(tmp_path / "sr.dcm", "1.2.840.10008.5.1.4.1.1.88.11", "SR", like)
    _non_image(tmp_path / "pr.dcm", "1.2.840.10008.5.1.4.1.1.11.1", "PR", like)
    _non_image(tmp_path / "ko.dcm", "1.2.840.10008.5.1.4.1.1.88.59", "KO", like)
    _non_image(tmp_path / "sc.dcm", "1.2.840.10008.5.1.4.1.1.7", "OT", like, pixels=True)
    scan = scan_source(tmp_path)
    by_file = {s.files[0].name: s for s in scan.series if len(s.files) == 1}
    assert {name: s.rejection for name, s in by_file.items()} == {
        "sr.dcm": "non_image_sop_class",
        "pr.dcm": "non_image_sop_class",
        "ko.dcm": "non_image_sop_class",
        "sc.dcm": "derived",
    }
    (pcasl,) = [s for s in scan.series if s.header.series_number == 1901]
    assert pcasl.rejection is None and pcasl.n_instances == 40 and scan.rejected_files == ()


@pytest.mark.parametrize("name", ["2.dcm", "9.dcm", "3.dcm"])  # implicit VR, JPEG 2000, big endian
def test_truncated_files_in_any_encoding(dicom_data: Path, tmp_path: Path, name: str) -> None:
    data = (dicom_data / "transfer_syntaxes" / "In" / name).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-100])
    (tmp_path / "whole.dcm").write_bytes(data)
    got = read_file(tmp_path / "cut.dcm")
    assert isinstance(got, RejectedFile) and got.reason == "truncated", got
    assert isinstance(read_file(tmp_path / "whole.dcm"), _FileInfo)
