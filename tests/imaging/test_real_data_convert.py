"""Conversion of every real T1w series and every EPI series with a dcm2niix reference.

Compared in world coordinates after both volumes are taken to RAS (dicom2nifti and dcm2niix store
the same grid with different axis flips): orientation and voxel size exactly, origin within 1 mm,
and the same voxel values in the same places.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import imaging.convert as convert_mod
from imaging.convert import ConversionError, ConversionResult, convert_series, dicom_grid

ORIGIN_TOLERANCE_MM = 1.0


def assert_matches_reference(res: ConversionResult, ref_path: Path) -> None:
    ours = nib.load(res.nifti_path)
    ref = nib.as_closest_canonical(nib.load(ref_path))
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    a, b = np.asarray(ours.affine), np.asarray(ref.affine)
    assert nib.aff2axcodes(a) == nib.aff2axcodes(b) == ("R", "A", "S")
    np.testing.assert_allclose(a[:3, :3], b[:3, :3], atol=1e-4)  # orientation and voxel size
    np.testing.assert_allclose(ours.header.get_zooms()[:3], ref.header.get_zooms()[:3], atol=1e-4)
    assert np.abs(a[:3, 3] - b[:3, 3]).max() < ORIGIN_TOLERANCE_MM
    x, y = np.asanyarray(ours.dataobj, dtype=float).ravel(), np.asanyarray(ref.dataobj, dtype=float).ravel()
    assert np.corrcoef(x, y)[0, 1] > 0.999  # the same voxels in the same places


def _dcm(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.dcm"))


# GE series 4..7 differ in slice order (interleaved/sequential, inferior->superior or back); 4 and 7
# (I->S and S->I) run by default, the other two with the slow tests.
EPI_CASES = [
    *[
        pytest.param(
            f"ge_epi_{k}",
            ("nih_ge_siemens", "In", "20180918GE", f"mr_000{k}"),
            f"DCM2NIIX_regression_test_{k}.nii",
            (64, 64, 15, 10),
            marks=() if k in (4, 7) else pytest.mark.slow,
            id=f"ge_epi_{k}",
        )
        for k in range(4, 8)
    ],
    *[
        pytest.param(
            f"siemens_mosaic_{pe}",
            ("nih_ge_siemens", "In", "20180918Si", f"mr_000{k}"),
            f"EPI_PE={pe}_{k}.nii",
            (72, 72, 5, 2),
            id=f"siemens_mosaic_{pe}",
        )
        for k, pe in zip(range(3, 7), ("AP", "PA", "RL", "LR"), strict=True)
    ],
]


@pytest.mark.parametrize(("name", "parts", "ref", "shape"), EPI_CASES)
def test_epi_series_match_dcm2niix(
    dicom_data: Path, tmp_path: Path, name: str, parts: tuple, ref: str, shape: tuple
) -> None:
    res = convert_series(_dcm(dicom_data.joinpath(*parts)), tmp_path / f"{name}.nii.gz", allow_4d=True)
    assert res.shape == shape and res.orientation == "RAS" and res.converter == "dicom2nifti"
    assert_matches_reference(res, dicom_data / "nih_ge_siemens" / "Ref" / ref)


@pytest.mark.parametrize("k", range(1, 10))
def test_every_transfer_syntax_converts_to_the_reference(dicom_data: Path, tmp_path: Path, k: int) -> None:
    """One Siemens mosaic in nine encodings (JPEG, JPEG-LS, JPEG 2000, RLE, big endian, ...)."""
    res = convert_series([dicom_data / "transfer_syntaxes" / "In" / f"{k}.dcm"], tmp_path / "ts.nii.gz")
    assert res.shape == (64, 64, 35)
    assert_matches_reference(res, dicom_data / "transfer_syntaxes" / "Ref" / f"{k}.nii")


def test_philips_pcasl_matches_reference(dicom_data: Path, tmp_path: Path) -> None:
    files = sorted((dicom_data / "philips_flat_folder").glob("1901_*.dcm.gz"))
    res = convert_series(files, tmp_path / "asl.nii.gz")
    assert_matches_reference(res, dicom_data / "philips_flat_folder_ref" / "1901_WIP_3DpCASL_cl.nii.gz")


@pytest.mark.slow
def test_philips_pcasl_source_4d_matches_reference(dicom_data: Path, tmp_path: Path) -> None:
    files = sorted((dicom_data / "philips_flat_folder").glob("1903_*.dcm.gz"))
    res = convert_series(files, tmp_path / "src.nii.gz", allow_4d=True)
    assert res.shape == (96, 96, 40, 6)
    assert_matches_reference(res, dicom_data / "philips_flat_folder_ref" / "1903_WIP_SOURCE_-_3DpCASL_cl.nii.gz")


def test_ge_t1_with_scrambled_pixels_converts_on_the_dicom_grid(dicom_data: Path, tmp_path: Path) -> None:
    """The GE MP-RAGE has true headers and noise for pixels: conversion succeeds (QC must fail it later)."""
    files = sorted((dicom_data / "ge_t1_scrambled_pixels" / "In").iterdir())
    res = convert_series(files, tmp_path / "ge_t1.nii.gz")
    assert res.converter == "dicom2nifti" and res.orientation == "RAS" and sorted(res.shape) == [130, 256, 256]
    np.testing.assert_allclose(sorted(res.spacing), [0.9375, 0.9375, 1.2], atol=1e-5)
    grid = dicom_grid(files)
    assert grid is not None
    img = nib.load(res.nifti_path)
    corners = nib.affines.apply_affine(img.affine, [[0, 0, 0], np.array(img.shape) - 1]) * [-1, -1, 1]
    want = np.asarray(grid.corners_lps)
    for c in corners:  # two opposite corners of our volume are corners of the DICOM stack
        assert np.linalg.norm(want - c, axis=1).min() < 0.01


def test_wrong_geometry_from_a_converter_is_never_written(
    dicom_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converter that mislays the grid (here: flipped slice order) is caught by the independent
    check against the DICOM positions; dcm2niix takes over; when both are wrong nothing is written."""
    files = sorted((dicom_data / "philips_flat_folder").glob("1901_*.dcm.gz"))
    real = convert_mod._dicom2nifti

    def flipped(*args: object) -> nib.Nifti1Image:
        img = real(*args)
        data = np.asanyarray(img.dataobj)
        return nib.Nifti1Image(data, img.affine @ np.diag([1.0, 1.0, -1.0, 1.0]), img.header)

    monkeypatch.setattr(convert_mod, "_dicom2nifti", flipped)
    res = convert_series(files, tmp_path / "ok.nii.gz")
    assert res.converter == "dcm2niix"
    assert_matches_reference(res, dicom_data / "philips_flat_folder_ref" / "1901_WIP_3DpCASL_cl.nii.gz")

    real_dcm2niix = convert_mod._dcm2niix

    def shifted(*args: object) -> nib.Nifti1Image:
        img = real_dcm2niix(*args)
        affine = img.affine.copy()
        affine[:3, 3] += 5.0
        return nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header)

    monkeypatch.setattr(convert_mod, "_dcm2niix", shifted)
    out = tmp_path / "bad" / "never.nii.gz"
    with pytest.raises(ConversionError, match=r"not where the DICOM headers put it.*dcm2niix.*not where"):
        convert_series(files, out)
    assert not out.exists() and list(out.parent.iterdir()) == []
