"""convert_series against dcm2niix reference outputs, compared in world coordinates."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import imaging.convert as convert_mod
from imaging.convert import ConversionError, ConversionResult, convert_series


def philips(shared_data: Path, number: int) -> list[Path]:
    return sorted((shared_data / "dicom" / "philips_flat_folder").glob(f"{number}_*.dcm.gz"))


def xa30(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "dicom" / "siemens_xa30_enhanced_t1" / "In").glob("*.dcm"))


def unit_axes(affine: np.ndarray) -> np.ndarray:
    m = np.asarray(affine, dtype=float)[:3, :3]
    return m / np.linalg.norm(m, axis=0)


def assert_same_world_grid(res: ConversionResult, ref_path: Path, tol_mm: float = 1.0) -> None:
    """Same voxel grid in scanner space: centre, axes and voxel size, after RAS reorientation of both."""
    ours = nib.load(res.nifti_path)
    ref = nib.as_closest_canonical(nib.load(ref_path))
    assert ours.shape[:3] == ref.shape[:3]
    centre = (np.array(ours.shape[:3]) - 1) / 2
    world = nib.affines.apply_affine
    assert np.abs(world(ours.affine, centre) - world(ref.affine, centre)).max() < tol_mm
    for corner in ([0, 0, 0], np.array(ours.shape[:3]) - 1):  # no flip: corners land on the same spot
        assert np.abs(world(ours.affine, corner) - world(ref.affine, corner)).max() < tol_mm
    assert np.abs(unit_axes(ours.affine) - unit_axes(ref.affine)).max() < 1e-3
    np.testing.assert_allclose(ours.header.get_zooms()[:3], ref.header.get_zooms()[:3], atol=1e-4)
    a, b = np.asanyarray(ours.dataobj, dtype=float), np.asanyarray(ref.dataobj, dtype=float)
    if a.ndim == b.ndim:
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999  # same voxels in the same places


@pytest.fixture(scope="module")
def mprage(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> ConversionResult:
    out = tmp_path_factory.mktemp("mprage") / "t1w.nii.gz"
    return convert_series(philips(shared_data, 1301), out)


def test_philips_mprage_is_3d_ras_with_reference_geometry(mprage: ConversionResult, shared_data: Path) -> None:
    ref = json.loads(
        (shared_data / "dicom" / "philips_flat_folder_ref" / "1301_WIP_ADNI_Sag3D_MPRAGE_cl.json").read_text()
    )
    assert mprage.converter == "dicom2nifti"
    assert mprage.orientation == "RAS" and len(mprage.shape) == 3
    assert sorted(mprage.shape) == [170, 256, 256]
    # voxel size: 1 mm in-plane, SpacingBetweenSlices 1 mm (dicom2nifti derives the slice step from
    # positions in float32: 0.9999992 mm, hence the 1e-5 tolerance)
    np.testing.assert_allclose(sorted(mprage.spacing), [1.0, ref["SpacingBetweenSlices"], 1.0], atol=1e-5)
    # axes: each voxel axis is +- the DICOM row / column / normal direction, taken to RAS
    iop = np.array(ref["ImageOrientationPatientDICOM"], dtype=float)
    row, col = iop[:3], iop[3:]
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    expected = [row * lps_to_ras, col * lps_to_ras, np.cross(row, col) * lps_to_ras]
    axes = unit_axes(np.array(mprage.affine))
    for k in range(3):
        assert max(abs(float(np.dot(axes[:, k], e))) for e in expected) > 0.9999
    assert np.all(np.diag(axes) > 0.9)  # RAS: each axis points the canonical way
    img = nib.load(mprage.nifti_path)
    assert img.shape == mprage.shape and np.allclose(img.affine, np.array(mprage.affine))
    assert float(np.asanyarray(img.dataobj).max()) > 0
    assert [p.name for p in mprage.nifti_path.parent.iterdir()] == ["t1w.nii.gz"]  # atomic: no temp left


def test_philips_pcasl_matches_reference_nifti(shared_data: Path, tmp_path: Path) -> None:
    res = convert_series(philips(shared_data, 1901), tmp_path / "asl.nii.gz")
    assert res.orientation == "RAS" and res.shape == (96, 96, 40)
    assert_same_world_grid(res, shared_data / "dicom" / "philips_flat_folder_ref" / "1901_WIP_3DpCASL_cl.nii.gz")


def test_xa30_enhanced_matches_reference_in_world_space(shared_data: Path, tmp_path: Path) -> None:
    res = convert_series(xa30(shared_data), tmp_path / "xa30.nii")
    assert res.converter == "dicom2nifti" and res.orientation == "RAS" and res.shape == (96, 128, 128)
    assert_same_world_grid(res, shared_data / "dicom" / "siemens_xa30_enhanced_t1" / "Ref" / "5_anat-T1w_acq-tfl.nii")
    # the reference stores x0 = -89.58 (RAS) where dicom2nifti's own output is LAS with x0 = +100.42
    assert res.affine[0][3] == pytest.approx(-89.576, abs=0.01)


def test_dcm2niix_fallback(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("simulated dicom2nifti failure")

    monkeypatch.setattr(convert_mod, "_dicom2nifti", broken)
    res = convert_series(xa30(shared_data), tmp_path / "xa30.nii.gz")
    assert res.converter == "dcm2niix" and res.orientation == "RAS"
    assert_same_world_grid(res, shared_data / "dicom" / "siemens_xa30_enhanced_t1" / "Ref" / "5_anat-T1w_acq-tfl.nii")


def test_4d_series_refused_unless_allowed(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "src.nii.gz"
    with pytest.raises(ConversionError, match=r"4D series \(6 volumes at the same slice positions\)"):
        convert_series(philips(shared_data, 1903), out)
    assert not out.exists()


def test_missing_slice_is_refused_not_converted(shared_data: Path, tmp_path: Path) -> None:
    files = philips(shared_data, 1901)
    gappy = files[:20] + files[21:]
    with pytest.raises(ConversionError, match="refused"):
        convert_series(gappy, tmp_path / "gappy.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_both_converters_failing_names_both(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_text("not a dicom file")
    with pytest.raises(ConversionError, match="both converters failed.*dicom2nifti.*dcm2niix"):
        convert_series([junk], tmp_path / "out" / "junk.nii.gz")
    with pytest.raises(ConversionError, match="no files"):
        convert_series([], tmp_path / "x.nii.gz")
    with pytest.raises(ConversionError, match=r"\.nii\.gz or \.nii"):
        convert_series([junk], tmp_path / "x.mgz")
