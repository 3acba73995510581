"""Tests of the synthetic export generator on real files (the tiny preset, generated once per module)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.errors import InvalidDicomError
from scipy import ndimage as ndi

from synth import ExportSummary, SynthConfig, generate_export
from synth.anatomy import reference_head
from synth.dicom_writer import SliceGrid, Storage, deterministic_uid, encode_pixels, plane_directions

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[ExportSummary, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    summary = generate_export(
        tmp_path_factory.mktemp("tiny") / "export",
        SynthConfig.preset("tiny"),
        progress=lambda done, total: calls.append((done, total)),
    )
    return summary, calls


@pytest.fixture(scope="module")
def truth(export) -> dict:
    return json.loads(export[0].truth_json.read_text())


@pytest.fixture(scope="module")
def headers(export, truth) -> dict[Path, pydicom.Dataset]:
    """Headers of every file that is not one of the deliberately broken ones."""
    summary = export[0]
    broken = {summary.root / b["path"] for b in truth["broken_files"]}
    out = {}
    for path in sorted(summary.dicom_dir.rglob("*")):
        if path.is_file() and path not in broken:
            out[path] = pydicom.dcmread(path, stop_before_pixels=True)
    return out


@pytest.fixture(scope="module")
def nifti(export, headers, tmp_path_factory):
    """Convert a series (by truth record) with dicom2nifti, once; returns the nibabel image."""
    import dicom2nifti.convert_dicom as convert

    cache: dict[str, nib.Nifti1Image] = {}
    work = tmp_path_factory.mktemp("nifti")

    def get(series: dict) -> nib.Nifti1Image:
        uid = series["SeriesInstanceUID"]
        if uid not in cache:
            folder = work / str(len(cache))
            folder.mkdir()
            for path, ds in headers.items():
                if ds.SeriesInstanceUID == uid:
                    shutil.copy(path, folder / path.name)
            convert.dicom_series_to_nifti(str(folder), str(folder / "out.nii.gz"), reorient_nifti=True)
            cache[uid] = nib.load(str(folder / "out.nii.gz"))
        return cache[uid]

    return get


def _series(truth: dict, role: str, subject: int = 0) -> dict:
    pid = truth["subjects"][subject]["PatientID"]
    return next(s for s in truth["series"] if s["role"] == role and s["PatientID"] == pid)


def _sample_at_mni(img: nib.Nifti1Image, series: dict, mni_points: np.ndarray) -> np.ndarray:
    """Values of a converted series at MNI points, using the pose recorded in truth.json."""
    pose = np.asarray(series["pose"]["mni_to_scanner_ras"])
    world = mni_points @ pose[:3, :3].T + pose[:3, 3]
    inv = np.linalg.inv(img.affine)
    vox = world @ inv[:3, :3].T + inv[:3, 3]
    return ndi.map_coordinates(np.asarray(img.dataobj, dtype=np.float32), vox.T, order=1)


def _mni_voxels(mask: np.ndarray, stride: int = 2) -> np.ndarray:
    """Every `stride`-th voxel index of a reference-grid mask, shape (N, 3)."""
    return np.argwhere(mask[::stride, ::stride, ::stride]) * stride


def _mni_points(mask: np.ndarray, stride: int = 2) -> np.ndarray:
    ref = reference_head()
    return _mni_voxels(mask, stride) @ ref.affine[:3, :3].T + ref.affine[:3, 3]


# --------------------------------------------------------------------------------------------------


def test_same_config_writes_byte_identical_files(export, tmp_path):
    first = export[0]
    second = generate_export(tmp_path / "again", SynthConfig.preset("tiny"))
    files_a = sorted(p.relative_to(first.root) for p in first.root.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(second.root) for p in second.root.rglob("*") if p.is_file())
    assert files_a == files_b
    differing = [p for p in files_a if (first.root / p).read_bytes() != (second.root / p).read_bytes()]
    assert differing == []
    assert second.phi_values == first.phi_values


def test_progress_reports_every_series(export):
    summary, calls = export
    assert [c[0] for c in calls] == list(range(1, summary.n_series + 1))
    assert {c[1] for c in calls} == {summary.n_series}


def test_every_intact_file_is_valid_dicom_with_expected_tags(export, truth, headers):
    summary = export[0]
    series_uids = {s["SeriesInstanceUID"] for s in truth["series"]}
    n_mr = 0
    for path, ds in headers.items():
        assert path.read_bytes()[128:132] == b"DICM", path
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SeriesInstanceUID in series_uids
        assert ds.Modality == "MR" and ds.BodyPartExamined == "BRAIN"
        for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "SOPInstanceUID", "SeriesNumber"):
            assert keyword in ds, (path, keyword)
        if ds.SOPClassUID == SC_STORAGE:
            assert list(ds.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            continue
        assert ds.SOPClassUID == MR_STORAGE
        n_mr += 1
        for keyword in (
            "EchoTime", "RepetitionTime", "FlipAngle", "ScanningSequence", "SequenceVariant", "ScanOptions",
            "MRAcquisitionType", "MagneticFieldStrength", "ManufacturerModelName", "InstanceNumber",
            "AcquisitionNumber", "FrameOfReferenceUID", "SliceThickness", "SpacingBetweenSlices",
            "StudyDate", "SeriesDate", "AcquisitionTime",
        ):  # fmt: skip
            assert keyword in ds, (path, keyword)
        assert len(ds.ImageOrientationPatient) == 6 and len(ds.ImagePositionPatient) == 3
        row, col = np.asarray(ds.ImageOrientationPatient[:3]), np.asarray(ds.ImageOrientationPatient[3:])
        assert abs(np.linalg.norm(row) - 1) < 1e-4 and abs(row @ col) < 1e-4
        assert ds.ImageType[0] in ("ORIGINAL", "DERIVED")
    assert n_mr > 0
    assert len(headers) == summary.n_files
    # Instance counts per series match the truth, and pixel data decodes to Rows x Columns.
    counts: dict[str, int] = {}
    for ds in headers.values():
        counts[ds.SeriesInstanceUID] = counts.get(ds.SeriesInstanceUID, 0) + 1
    assert counts == {s["SeriesInstanceUID"]: s["n_files"] for s in truth["series"]}
    some = next(p for p, ds in headers.items() if ds.SOPClassUID == MR_STORAGE)
    full = pydicom.dcmread(some)
    assert full.pixel_array.shape == (full.Rows, full.Columns)


def test_series_per_label_and_rejection_match_the_protocol(export, truth):
    n_studies = len(truth["subjects"])
    by_label: dict[str, int] = {}
    by_reason: dict[str | None, int] = {}
    for s in truth["series"]:
        by_label[s["expected_label"]] = by_label.get(s["expected_label"], 0) + 1
        by_reason[s["expected_rejection"]] = by_reason.get(s["expected_rejection"], 0) + 1
    assert by_label == {"T1w": n_studies, "T2w": n_studies, "FLAIR": n_studies, "other": 4 * n_studies}
    assert by_reason["localizer"] == n_studies
    assert export[0].n_series == len(truth["series"]) == 7 * n_studies
    ghosted = [s for s in truth["series"] if s["ghosting"]]
    assert len(ghosted) == 1 and ghosted[0]["role"] == "FLAIR"
    assert ghosted[0]["PatientID"] == truth["subjects"][-1]["PatientID"]
    # Layouts differ between vendors, and truth folders exist.
    assert len({s["folder"].split("/")[1] for s in truth["series"]}) == len({s["vendor"] for s in truth["series"]})
    assert all((export[0].root / s["folder"]).is_dir() for s in truth["series"])


def test_broken_files_are_present_and_broken_as_claimed(export, truth):
    root = export[0].root
    reasons = sorted(b["reason"] for b in truth["broken_files"])
    assert reasons == ["empty_file", "not_dicom", "not_dicom", "truncated"]
    for b in truth["broken_files"]:
        path = root / b["path"]
        assert path.is_file() and path.is_relative_to(export[0].dicom_dir)
        if b["reason"] == "empty_file":
            assert path.stat().st_size == 0
        elif b["reason"] == "not_dicom":
            with pytest.raises(InvalidDicomError):
                pydicom.dcmread(path)
        else:
            ds = pydicom.dcmread(path)  # the header survives, the pixel data is cut short
            assert len(ds.PixelData) < ds.Rows * ds.Columns * ds.BitsAllocated // 8


def test_dicom2nifti_recovers_t1w_geometry(truth, nifti):
    series = _series(truth, "T1w")
    img = nifti(series)
    assert sorted(img.shape) == sorted([*series["matrix"], series["n_slices"]])
    assert np.allclose(
        sorted(img.header.get_zooms()), sorted([*series["pixel_spacing_mm"], series["slice_spacing_mm"]])
    )
    # Where the truth pose puts the MNI brain, the converted image must show the T1 white matter.
    ref = reference_head()
    idx = _mni_voxels((ref.gm + ref.wm) > 0.5, stride=3)
    values = _sample_at_mni(img, series, idx @ ref.affine[:3, :3].T + ref.affine[:3, 3])
    wm = ref.wm[tuple(idx.T)]
    assert np.corrcoef(values, wm)[0, 1] > 0.7
    # And the head is where the pose says: its centroid is near the posed MNI head centre.
    data = np.asarray(img.dataobj, dtype=np.float32)
    fg = np.argwhere(data > 0.3 * np.percentile(data, 99))
    centroid = img.affine[:3, :3] @ fg.mean(axis=0) + img.affine[:3, 3]
    pose = np.asarray(series["pose"]["mni_to_scanner_ras"])
    expected = pose[:3, :3] @ np.array([0.0, -20.0, 0.0]) + pose[:3, 3]
    assert np.linalg.norm(centroid - expected) < 15.0


def test_lesions_are_on_the_recorded_side(truth, nifti):
    """Left/right cannot be checked by correlating a near-symmetric template; lesions can."""
    subject, series = next(
        (i, _series(truth, "FLAIR", i))
        for i, s in enumerate(truth["subjects"])
        if s["lesion"] and not _series(truth, "FLAIR", i)["ghosting"]
    )
    centres = np.asarray(truth["subjects"][subject]["lesion_centres_mni"])
    assert len(centres) >= 4
    img = nifti(series)
    at_lesion = _sample_at_mni(img, series, centres)
    mirrored = _sample_at_mni(img, series, centres * np.array([-1.0, 1.0, 1.0]))
    assert np.median(at_lesion) > 1.3 * np.median(mirrored)


@pytest.mark.parametrize(
    ("role", "order"),
    [("T1w", ("wm", "gm", "csf")), ("T2w", ("csf", "gm", "wm")), ("FLAIR", ("gm", "wm", "csf"))],
)
def test_tissue_contrast_ordering(truth, nifti, role, order):
    ref = reference_head()
    masks = {"wm": ref.wm > 0.97, "gm": ref.gm > 0.9, "csf": ref.ventricles & (ref.csf > 0.97)}
    for subject in range(len(truth["subjects"])):
        series = _series(truth, role, subject)
        img = nifti(series)
        means = {k: float(np.mean(_sample_at_mni(img, series, _mni_points(m)))) for k, m in masks.items()}
        assert means[order[0]] > means[order[1]] > means[order[2]], (role, subject, means)


def test_phi_is_in_headers_and_nowhere_in_paths(export, headers):
    summary = export[0]
    assert summary.phi_values
    text: set[str] = set()
    for ds in headers.values():
        for elem in ds:
            if elem.VR in ("PN", "LO", "SH", "DA", "ST"):
                text.add(str(elem.value))
    blob = "\n".join(text)
    missing = [v for v in summary.phi_values if v not in blob]
    assert missing == []
    paths = [p.relative_to(summary.root).as_posix().upper() for p in summary.root.rglob("*")]
    leaked = [(v, p) for v in summary.phi_values for p in paths if v.upper() in p]
    assert leaked == []


def test_labels_csv_has_both_classes_keyed_by_raw_patient_id(export, headers):
    rows = list(csv.DictReader(export[0].labels_csv.open()))
    assert list(rows[0]) == ["PatientID", "lesion", "enlarged_ventricles"]
    assert {r["PatientID"] for r in rows} == {ds.PatientID for ds in headers.values()}
    for column in ("lesion", "enlarged_ventricles"):
        assert {r[column] for r in rows} == {"0", "1"}


def test_labels_balanced_for_four_or_more_subjects():
    from synth.export import _labels_for

    for seed in range(4):
        cfg = SynthConfig(n_subjects=4, seed=seed)
        labels = [_labels_for(cfg, i) for i in range(4)]
        assert sorted(labels) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_philips_export_uses_rescale_slope_and_converts(tmp_path):
    """The tiny preset has no Philips study; one small subject with seed 2 lands on Philips."""
    cfg = replace(SynthConfig.preset("tiny"), n_subjects=1, seed=2, voxel_mm=3.5, broken_files=False)
    summary = generate_export(tmp_path / "philips", cfg)
    truth = json.loads(summary.truth_json.read_text())
    assert {s["vendor"] for s in truth["series"]} == {"Philips Medical Systems"}
    assert not list(summary.root.rglob("README.txt"))
    t1 = next(s for s in truth["series"] if s["role"] == "T1w")
    files = [p for p in (summary.root / t1["folder"]).iterdir()]
    datasets = [pydicom.dcmread(p) for p in files]
    mine = [ds for ds in datasets if ds.SeriesInstanceUID == t1["SeriesInstanceUID"]]
    assert len(mine) == t1["n_files"] < len(datasets)  # flat layout: one folder per study
    assert all(float(ds.RescaleSlope) > 0 and "InversionTime" not in ds for ds in mine)


def test_existing_foreign_directory_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(tmp_path)):
        generate_export(tmp_path, SynthConfig.preset("tiny"))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_config_errors_name_the_bad_value():
    with pytest.raises(ValueError, match="tiny, demo, large"):
        SynthConfig.preset("huge")
    with pytest.raises(ValueError, match="0.1"):
        SynthConfig(voxel_mm=0.1)
    with pytest.raises(ValueError, match="-1"):
        SynthConfig(n_subjects=-1)


def test_encode_pixels_round_trips_through_rescale_slope():
    real = np.linspace(0.0, 1234.5, 1000, dtype=np.float32)
    stored, slope = encode_pixels(real, Storage(signed=False, bits_stored=12, rescale=True))
    assert slope is not None and stored.dtype == np.uint16 and stored.max() <= 4095
    assert np.max(np.abs(stored * float(slope) - real)) <= float(slope) / 2 + 1e-3


def test_uids_are_deterministic_and_distinct():
    assert deterministic_uid("a", 1) == deterministic_uid("a", 1)
    assert deterministic_uid("a", 12) != deterministic_uid("a1", 2)
    assert deterministic_uid("x").startswith("2.25.") and len(deterministic_uid("x")) <= 64


@settings(max_examples=40, deadline=None)
@given(
    plane=st.sampled_from(["axial", "sagittal", "coronal"]),
    tilt=st.floats(-30, 30),
    centre=st.tuples(*[st.floats(-50, 50)] * 3),
    shape=st.tuples(st.integers(1, 300), st.integers(1, 300), st.integers(1, 200)),
)
def test_slice_grid_geometry_is_consistent(plane, tilt, centre, shape):
    row, col = plane_directions(plane, tilt)
    grid = SliceGrid.centred(centre, row, col, shape, (0.9, 1.1), 3.0, 3.3)
    assert np.allclose(grid.centre(), centre, atol=1e-6)
    m = grid.index_to_lps()
    k = shape[2] - 1
    assert np.allclose(m @ [k, 0, 0, 1], [*grid.position(k), 1.0], atol=1e-6)
    # Column index runs along the row direction (DICOM: first IOP triplet), spaced by PixelSpacing[1].
    assert np.allclose(m @ [0, 0, 1, 1] - m @ [0, 0, 0, 1], [*(np.asarray(row) * 1.1), 0.0], atol=1e-9)


def test_cli_help_lists_presets():
    out = subprocess.run([sys.executable, "-m", "synth", "--help"], capture_output=True, text=True, check=True)
    assert "--preset" in out.stdout and "large" in out.stdout and "--voxel-mm" in out.stdout
