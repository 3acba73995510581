"""QC maths on synthetic volumes with known answers, and every rule of ``decide``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tasks.qc import (
    QCThresholds,
    background_mask,
    background_noise,
    cjv,
    cnr,
    compute_metrics,
    decide,
    head_mask,
    otsu_threshold,
    snr,
)
from tasks.templates import (
    MODEL_GRID_SHAPE,
    model_grid_affine,
    model_grid_brain_mask,
    model_grid_gm,
    model_grid_voxel_ml,
    model_grid_wm,
)

SIGMA = 4.0
BRAIN = 100.0


def _phantom(shape: tuple[int, int, int] = (96, 96, 96), radius: float = 28.0, seed: int = 0) -> np.ndarray:
    """A constant 'head' (value BRAIN) in Gaussian background noise of std SIGMA, 1 mm voxels."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    inside = ((grid - centre[:, None, None, None]) ** 2).sum(axis=0) <= radius**2
    return np.where(inside, BRAIN, rng.normal(0.0, SIGMA, shape)).astype(np.float32)


# --------------------------------------------------------------------------------------- pure maths


def test_otsu_splits_a_bimodal_histogram_between_the_modes() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(10, 2, 5000), rng.normal(100, 5, 3000)])
    # The modes are separated by an empty gap: the middle of the gap, not its edge next to a mode.
    assert 35 < otsu_threshold(values) < 75
    assert otsu_threshold(np.full(10, 3.0)) == 3.0
    with pytest.raises(ValueError, match="no finite values"):
        otsu_threshold(np.array([np.nan]))


def test_background_is_far_from_the_head_and_snr_matches_the_analytic_value() -> None:
    data = _phantom()
    head = head_mask(data)
    truth = data == BRAIN
    assert (head == truth).mean() > 0.999
    bg = background_mask(data, (1.0, 1.0, 1.0), margin_mm=10.0)
    assert not (bg & truth).any()
    # Every background voxel is more than 10 mm from the sphere (radius 28): ≳ 38 mm from the centre.
    idx = np.argwhere(bg) - (np.asarray(data.shape) - 1) / 2
    assert np.sqrt((idx**2).sum(axis=1)).min() > 37.5
    std = background_noise(data[bg])
    assert std == pytest.approx(SIGMA, rel=0.05)
    assert snr(BRAIN, std) == pytest.approx(BRAIN / SIGMA, rel=0.05)  # 25


def test_background_margin_is_physical_for_anisotropic_voxels() -> None:
    data = _phantom()
    # Same array declared as 3 mm slices: 10 mm is ~3.3 voxels along z, so more background survives.
    iso = background_mask(data, (1.0, 1.0, 1.0)).sum()
    aniso = background_mask(data, (1.0, 1.0, 3.0)).sum()
    assert aniso != iso


def test_zero_filled_background_is_not_measurable() -> None:
    data = _phantom()
    data[data != BRAIN] = 0.0
    bg = background_mask(data, (1.0, 1.0, 1.0))
    assert math.isnan(background_noise(data[bg]))
    assert math.isnan(snr(BRAIN, float("nan"))) and math.isnan(cnr(120.0, 80.0, float("nan")))
    assert math.isnan(snr(BRAIN, 0.0))


def test_cnr_and_cjv_known_answers() -> None:
    assert cnr(120.0, 80.0, 4.0) == pytest.approx(10.0)
    assert cnr(80.0, 120.0, 4.0) == pytest.approx(10.0)  # absolute difference: T2w has GM > WM
    rng = np.random.default_rng(2)
    wm, gm = rng.normal(120, 3, 20000), rng.normal(80, 5, 20000)
    assert cjv(wm, gm) == pytest.approx((3 + 5) / 40, rel=0.03)
    assert math.isnan(cjv(np.ones(10), np.ones(10)))


# ------------------------------------------------------------------------------------ file level


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Native phantom with noise SIGMA; registered model-grid image with WM 120, GM 80, rest 100."""
    folder = tmp_path_factory.mktemp("qc")
    native = _phantom()
    native[0, 0, 0] = np.nan
    wm = model_grid_wm().get_fdata() >= 0.9
    gm = model_grid_gm().get_fdata() >= 0.7
    reg = np.full(MODEL_GRID_SHAPE, 100.0, np.float32)
    reg[gm] = 80.0
    reg[wm] = 120.0
    mask = np.asarray(model_grid_brain_mask().dataobj).astype(np.uint8)
    fov = np.ones(MODEL_GRID_SHAPE, np.uint8)
    paths = {k: folder / f"{k}.nii.gz" for k in ("native", "registered", "mask", "fov")}
    nib.save(nib.Nifti1Image(native, np.eye(4)), str(paths["native"]))
    nib.save(nib.Nifti1Image(reg, model_grid_affine()), str(paths["registered"]))
    nib.save(nib.Nifti1Image(mask, model_grid_affine()), str(paths["mask"]))
    nib.save(nib.Nifti1Image(fov, model_grid_affine()), str(paths["fov"]))
    return paths


def test_compute_metrics_known_answers(synthetic_files: dict[str, Path]) -> None:
    p = synthetic_files
    m = compute_metrics(p["native"], p["registered"], p["mask"], p["fov"], similarity=0.8, fov_coverage=0.97)
    reg = nib.load(str(p["registered"])).get_fdata()
    mask = np.asarray(nib.load(str(p["mask"])).dataobj) > 0
    expected_mean = reg[mask].mean()
    assert m["background_std"] == pytest.approx(SIGMA, rel=0.05)
    assert m["snr"] == pytest.approx(expected_mean / SIGMA, rel=0.05)
    assert m["cnr"] == pytest.approx(40.0 / SIGMA, rel=0.05)
    assert m["cjv"] == pytest.approx(0.0, abs=1e-9)  # noiseless tissue classes
    assert m["brain_volume_ml"] == pytest.approx(mask.sum() * model_grid_voxel_ml())
    assert m["has_nan"] == 1.0  # the one NaN voxel planted in the native image
    assert m["n_slices"] == 96.0
    assert (m["similarity"], m["fov_coverage"]) == (0.8, 0.97)
    assert all(isinstance(v, float) for v in m.values())


# ------------------------------------------------------------------------------------------ decide


GOOD = {
    "snr": 30.0,
    "cnr": 8.0,
    "cjv": 1.2,
    "brain_volume_ml": 1880.0,
    "fov_coverage": 0.99,
    "similarity": 0.81,
    "n_slices": 176.0,
    "has_nan": 0.0,
}


def _with(**changes: float) -> dict[str, float]:
    return {**GOOD, **changes}


def test_a_good_volume_passes() -> None:
    assert decide(GOOD) == ("pass", ())
    assert decide(GOOD, contrast="T1w") == ("pass", ())


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [
        ({"has_nan": 1.0}, "fail", "nan_in_image"),
        ({"brain_volume_ml": 0.0}, "fail", "empty_mask"),
        ({"n_slices": 12.0}, "fail", "too_few_slices_20"),
        ({"fov_coverage": 0.62}, "fail", "fov_coverage_below_0.90"),
        ({"similarity": float("nan")}, "fail", "registration_similarity_undefined"),
        ({"similarity": 0.3}, "review", "registration_similarity_low"),
        ({"brain_volume_ml": 3100.0}, "review", "brain_volume_out_of_range"),
        ({"brain_volume_ml": 700.0}, "review", "brain_volume_out_of_range"),
        ({"snr": 6.0}, "review", "snr_below_10"),
        ({"cnr": 1.1}, "review", "cnr_below_2"),
    ],
)
def test_each_rule_fires(changes: dict[str, float], status: str, reason: str) -> None:
    assert decide(_with(**changes), contrast="T1w") == (status, (reason,))


def test_similarity_floor_depends_on_contrast() -> None:
    low = _with(similarity=0.3)
    assert decide(low, contrast="T1w")[0] == "review"
    assert decide(low, contrast="T2w") == ("pass", ())  # T2w reaches ~0.35 when well registered
    assert decide(low)[0] == "review"  # unknown contrast: the generic floor 0.5


def test_unmeasurable_metrics_trigger_nothing_and_failures_come_first() -> None:
    assert decide(_with(snr=float("nan"), cnr=float("nan"))) == ("pass", ())
    assert decide({}) == ("pass", ())
    status, reasons = decide(_with(snr=3.0, has_nan=1.0, fov_coverage=0.5))
    assert status == "fail"
    assert reasons == ("nan_in_image", "fov_coverage_below_0.90", "snr_below_10")


def test_thresholds_are_frozen_and_configurable() -> None:
    t = QCThresholds()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.min_snr = 1.0  # type: ignore[misc]
    strict = QCThresholds(min_fov_coverage=0.995)
    assert decide(GOOD, strict) == ("fail", ("fov_coverage_below_0.99",))
    assert t.similarity_floor("FLAIR") == 0.45 and t.similarity_floor(None) == t.min_similarity


def test_background_excludes_brain_inside_an_open_scalp_shell():
    """T1w: bright scalp, dark skull, brain inside, shell open at the neck (regression: the brain was
    counted as background because a 3D hole fill cannot close an open shell)."""
    from tasks.qc import background_mask

    z, y, x = np.mgrid[:60, :60, :60]
    r = np.sqrt((z - 35) ** 2 + (y - 30) ** 2 + (x - 30) ** 2)
    img = np.random.default_rng(0).normal(20, 5, size=r.shape)
    img[(r > 22) & (r < 25)] = 900  # scalp
    img[r < 18] = 600  # brain; 18..22 stays dark like skull
    img[:12, 20:40, 20:40] = 900  # neck, opening the shell downwards
    img[:35][(r[:35] > 22) & (r[:35] < 25)] = 900
    img[:14][(r[:14] < 25)] = 20  # cut the bottom of the shell open
    bg = background_mask(img, (2.0, 2.0, 2.0), margin_mm=4.0)
    assert not bg[r < 18].any()
    assert img[bg].std() < 10
