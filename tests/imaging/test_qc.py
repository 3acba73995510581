"""QC maths on synthetic volumes with known answers, and every rule of ``decide``."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from imaging.qc import (
    QCThresholds,
    artifact_fraction,
    background_mask,
    background_noise,
    cjv,
    cnr,
    compute_metrics,
    decide,
    dice,
    efc,
    fber,
    head_mask,
    inu_spread,
    native_tissue_metrics,
    otsu_threshold,
    snr,
    snr_wm,
    wm2max,
)
from imaging.templates import (
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
    # New metrics on the same phantom: head of constant 100 in Gaussian air of σ 4.
    head = head_mask(np.nan_to_num(nib.load(str(p["native"])).get_fdata()))
    assert m["fber"] == pytest.approx(BRAIN**2 / SIGMA**2, rel=0.1)  # mean energy 1e4 against σ² = 16
    assert m["qi1"] == pytest.approx(0.0, abs=1e-4)  # pure noise is not an artifact
    assert m["inu"] < 0.05  # no bias field was applied
    assert math.isnan(m["snr_wm"])  # no registration transform beside these files: WM not found natively
    assert 0.0 < m["efc"] < 1.0
    assert m["wm2max"] == pytest.approx(1.0, abs=0.01)  # WM (120) is the brightest tissue of `registered`
    assert m["mask_mni_dice"] == 1.0  # the mask is the MNI brain mask itself
    assert head.sum() > 0


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
        ({"brain_volume_ml": 310.0}, "fail", "mask_below_500ml"),
        ({"qi1": 0.02}, "review", "qi1_above_0.005"),
        ({"inu": 0.5}, "review", "inu_above_0.35"),
        ({"mask_mni_dice": 0.89}, "review", "mask_mni_dice_below_0.92"),
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
    from imaging.qc import background_mask

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


def test_flair_has_no_cnr_floor_but_other_contrasts_do() -> None:
    low = _with(cnr=0.8)
    assert decide(low, contrast="FLAIR") == ("pass", ())  # GM ≈ WM is what FLAIR is built for
    assert decide(low, contrast="T1w") == ("review", ("cnr_below_2",))
    assert decide(low) == ("review", ("cnr_below_2",))


def test_new_metrics_at_their_limits_do_not_fire() -> None:
    t = QCThresholds()
    at_limit = _with(qi1=t.max_qi1, inu=t.max_inu, mask_mni_dice=t.min_mask_mni_dice, brain_volume_ml=t.min_brain_ml)
    assert decide(at_limit) == ("pass", ())
    assert decide(_with(qi1=float("nan"), inu=float("nan"), mask_mni_dice=float("nan"))) == ("pass", ())


def test_dice_known_answers() -> None:
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[:4], b[2:6] = True, True  # 400 voxels each, 200 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0 and dice(a, ~a) == 0.0
    assert math.isnan(dice(np.zeros(3, bool), np.zeros(3, bool)))


# ------------------------------------------------------------------------------ new metrics, known answers


def test_efc_is_one_for_a_uniform_image_and_zero_for_a_single_voxel() -> None:
    assert efc(np.full((10, 10, 10), 7.0)) == pytest.approx(1.0)
    point = np.zeros((10, 10, 10))
    point[5, 5, 5] = 100.0
    assert efc(point) == pytest.approx(0.0, abs=1e-12)
    # Blurring spreads the energy over more voxels: entropy, hence EFC, rises.
    from scipy import ndimage

    cube = np.zeros((32, 32, 32))
    cube[12:20, 12:20, 12:20] = 100.0
    assert efc(ndimage.gaussian_filter(cube, 3.0)) > efc(cube)
    # Half the voxels at one level, half 0: E = √(N/2)·ln√(N/2), so EFC = ln(N/2) / (√2 · ln N) ≈ 0.63.
    half = np.zeros(1000)
    half[:500] = 3.0
    n = 1000
    assert efc(half) == pytest.approx(
        math.sqrt(n / 2) * math.log(math.sqrt(n / 2)) / (math.sqrt(n) * math.log(math.sqrt(n)))
    )
    assert math.isnan(efc(np.zeros(50))) and math.isnan(efc(np.array([1.0])))


def test_fber_is_the_ratio_of_mean_energies() -> None:
    head = np.full(1000, 10.0)  # energy 100
    air = np.tile([2.0, -2.0], 500)  # energy exactly 4
    assert fber(head, air) == pytest.approx(25.0)
    assert fber(np.tile([3.0, 4.0], 50), air) == pytest.approx(12.5 / 4.0)  # (9 + 16) / 2 = 12.5
    zero_filled = np.concatenate([np.zeros(900), np.full(100, 2.0)])
    assert math.isnan(fber(head, zero_filled))
    assert math.isnan(fber(head, air[:50]))  # too few air voxels to say anything


def test_wm2max_divides_the_wm_median_by_the_high_percentile() -> None:
    image = np.linspace(0.0, 100.0, 20001)  # the 99.95th percentile of this ramp is 99.95
    assert wm2max(np.array([50.0, 60.0, 70.0]), image) == pytest.approx(60.0 / 99.95)
    spiked = np.concatenate([image, np.full(100, 1000.0)])  # a few very bright voxels squeeze the range
    assert wm2max(np.array([60.0]), spiked) < 0.2
    assert math.isnan(wm2max(np.empty(0), image)) and math.isnan(wm2max(np.ones(3), np.zeros(10)))


def test_snr_wm_is_mean_over_std() -> None:
    values = np.tile([95.0, 105.0], 500)  # mean 100, sample std 5.0025
    assert snr_wm(values) == pytest.approx(100.0 / np.std(values, ddof=1))
    assert snr_wm(np.random.default_rng(3).normal(100.0, 5.0, 50000)) == pytest.approx(20.0, rel=0.02)
    assert math.isnan(snr_wm(np.full(10, 3.0))) and math.isnan(snr_wm(np.array([1.0])))


def test_inu_spread_of_known_fields() -> None:
    assert inu_spread(np.ones(1000)) == 0.0
    ramp = np.linspace(1.0, 1.6, 100001)  # values spread evenly over [1, 1.6]
    assert inu_spread(ramp) == pytest.approx(0.9 * 0.6 / 1.3, rel=1e-3)
    assert inu_spread(7.0 * ramp) == pytest.approx(inu_spread(ramp))  # N4's arbitrary scale drops out
    assert math.isnan(inu_spread(np.ones(5)))


def _ghost_phantom(zero_air: bool) -> tuple[np.ndarray, np.ndarray]:
    data = _phantom(seed=4)
    if zero_air:
        data[data != BRAIN] = 0.0
    bg = background_mask(data, (1.0, 1.0, 1.0))
    return data, bg


def test_qi1_is_zero_for_noise_and_counts_ghosts() -> None:
    data, bg = _ghost_phantom(zero_air=False)
    assert artifact_fraction(data, bg, signal=BRAIN) == 0.0  # Gaussian air: isolated 5σ voxels are opened away
    rayleigh = np.hypot(*np.random.default_rng(5).normal(0.0, SIGMA, (2, *data.shape)))
    magnitude = np.where(data == BRAIN, data, rayleigh)
    assert artifact_fraction(magnitude, background_mask(magnitude, (1.0, 1.0, 1.0)), signal=BRAIN) < 1e-4
    # A ghost: a copy of the head at 30 % intensity, shifted 45 voxels along one axis (phase encode).
    ghost = 0.3 * np.roll(np.where(data == BRAIN, BRAIN, 0.0), 45, axis=1)
    ghosted = data + ghost
    ghost_in_air = (ghost > 0) & bg
    q = artifact_fraction(ghosted, bg, signal=BRAIN)
    assert q == pytest.approx(ghost_in_air.sum() / bg.sum(), rel=0.1)
    assert q > QCThresholds().max_qi1


def test_qi1_on_a_zero_filled_air_uses_the_signal_floor() -> None:
    data, bg = _ghost_phantom(zero_air=True)
    assert artifact_fraction(data, bg, signal=BRAIN) == 0.0
    ghost = np.roll(np.where(data == BRAIN, BRAIN, 0.0), 45, axis=1)
    faint, visible = data + 0.02 * ghost, data + 0.2 * ghost  # 2 % and 20 % of the tissue signal
    assert artifact_fraction(faint, bg, signal=BRAIN) == 0.0  # below the 5 % floor
    assert artifact_fraction(visible, bg, signal=BRAIN) > 0.05
    assert math.isnan(artifact_fraction(data, np.zeros_like(bg), signal=BRAIN))


def test_inu_recovers_a_known_multiplicative_field() -> None:
    """N4 on a phantom head times exp(g·x): the measured spread matches the field's own (p95−p5)/median."""
    data = _phantom(shape=(80, 80, 80), radius=34.0, seed=6)
    x = (np.arange(80, dtype=np.float32) - 39.5) / 34.0  # −1..1 across the head
    log_field = 0.4 * x[:, None, None] * np.ones((1, 80, 80), np.float32)  # exp(±0.4) along one axis
    affine = np.eye(4)
    empty = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), affine)
    flat = native_tissue_metrics(data, affine, empty, empty, transform=None)
    biased = native_tissue_metrics(data * np.exp(log_field), affine, empty, empty, transform=None)
    # The truth over the same region N4 is read in (the head eroded by 10 mm).
    from scipy import ndimage

    inner = ndimage.distance_transform_edt(data == BRAIN) > 10.0
    truth = inu_spread(np.exp(log_field)[inner])
    assert flat["inu"] < 0.05
    assert biased["inu"] == pytest.approx(truth, rel=0.1)  # measured 0.419 against 0.415
    assert biased["inu"] > QCThresholds().max_inu > flat["inu"]
    assert math.isnan(biased["snr_wm"])  # no transform: no WM map in native space


# ---------------------------------------------------------------------------- injected artifact, real data


def test_ghosting_injected_into_a_real_t1w_is_caught(tmp_path: Path, shared_data: Path) -> None:
    """t1w_chris passes; the same image with motion ghosts (0.5 rad phase errors along A-P) does not.

    One registration serves both: ghosts live in the native image's air, where QI1 and SNR are measured,
    and barely move the affine (bench/qc_detection.py registers every variant anew). The MNI brain mask
    stands in for deepbet's (it only sets the brain mean and volume), keeping the test near 20 s.
    """
    from imaging.register import register_to_mni
    from imaging.templates import model_grid_brain_mask
    from synth.contrast import add_phase_ghosting

    t1 = shared_data / "nifti" / "t1w_chris.nii.gz"
    reg = register_to_mni(t1, tmp_path / "reg", contrast="T1w")
    mask = tmp_path / "mask.nii.gz"
    nib.save(model_grid_brain_mask(), str(mask))
    img = nib.load(str(t1))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S"), "the ghosting below assumes RAS axes"
    stack = np.transpose(img.get_fdata(dtype=np.float32), (2, 0, 1))  # (S slices, R rows, A cols)
    ghosted = add_phase_ghosting(stack, 2, np.random.default_rng(0), amplitude_rad=0.5)
    ghost_path = tmp_path / "ghosted.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(ghosted, (1, 2, 0)), img.affine), str(ghost_path))

    args = (Path(reg.registered_path), mask, Path(reg.fov_path), reg.similarity, reg.fov_coverage)
    clean = compute_metrics(t1, *args)
    ghost = compute_metrics(ghost_path, *args)
    assert decide(clean, contrast="T1w") == ("pass", ())
    status, reasons = decide(ghost, contrast="T1w")
    assert status == "review" and "qi1_above_0.005" in reasons
    assert ghost["qi1"] > 10 * QCThresholds().max_qi1 > clean["qi1"]
    assert ghost["efc"] > clean["efc"]  # energy spread into the air
    assert math.isfinite(clean["snr_wm"]) and math.isfinite(clean["inu"])  # the transform was found


def test_background_excludes_a_cavity_that_opens_into_the_image_border() -> None:
    """A pharynx-like cavity between two walls of the neck, open to three image borders (the FOV cuts the
    neck): no 2D or 3D hole fill closes it, but it lies between head voxels along y (regression: the
    Siemens XA30 T1's pharynx counted as air and QI1 read 0.085)."""
    z, y, x = np.mgrid[:60, :60, :60]
    img = np.random.default_rng(1).normal(20, 5, size=z.shape)
    img[((z - 42) ** 2 + (y - 30) ** 2 + (x - 30) ** 2) < 16**2] = 600  # head
    neck = z < 30
    img[neck & (((y >= 18) & (y < 22)) | ((y >= 38) & (y < 42)))] = 900  # neck walls across the whole x range
    cavity = neck & (y >= 22) & (y < 38)
    img[cavity] = np.random.default_rng(2).normal(20, 5, size=int(cavity.sum()))  # dark, noise-like
    head = head_mask(img)
    assert not head[cavity].all()  # hole filling alone leaves the cavity out of the head ...
    bg = background_mask(img, (2.0, 2.0, 2.0), margin_mm=4.0, head=head)
    assert not bg[cavity].any()  # ... but it is not air
    assert bg[55:, :5, :5].all() and bg[:, 50:, 50:].sum() > 1000  # the real air is kept


# ------------------------------------------------------------- fast masks equal their scipy definitions


def _reference_head_mask(data: np.ndarray) -> np.ndarray:
    """head_mask as first written: scipy's closing, labelling and per-slice binary_fill_holes."""
    from scipy import ndimage

    finite = np.nan_to_num(np.asarray(data, dtype=np.float32))
    mask = finite > otsu_threshold(finite)
    padded = np.pad(mask, 2, mode="edge")
    padded = ndimage.binary_closing(padded, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
    mask = padded[2:-2, 2:-2, 2:-2]
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndimage.binary_fill_holes(mask)
    filled = mask.copy()
    for axis in range(3):
        for i in range(mask.shape[axis]):
            index = [slice(None)] * 3
            index[axis] = i
            filled[tuple(index)] |= ndimage.binary_fill_holes(mask[tuple(index)])
    return filled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_mask_equals_the_scipy_definition(seed: int) -> None:
    """Blobs with cavities, several components and open shells (smoothed noise thresholded by Otsu)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (40, 52, 36)), 1.5 + seed).astype(np.float32)
    data[rng.random(data.shape) < 0.002] = 5.0  # isolated bright specks: extra components
    expected = _reference_head_mask(data)
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(head_mask(data), expected)


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (0.9, 1.1, 3.0)])
def test_background_margin_equals_the_exact_distance_transform(zooms: tuple[float, float, float]) -> None:
    from scipy import ndimage

    from imaging.qc.masks import near_mask

    rng = np.random.default_rng(7)
    mask = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (48, 40, 30)), 3.0) > 0.08
    mask[:, :, :4] = False  # keep space around part of it, so the bounding-box crop matters
    expected = ndimage.distance_transform_edt(~mask, sampling=zooms) <= 6.0
    assert 0 < expected.sum() < expected.size
    np.testing.assert_array_equal(near_mask(mask, zooms, 6.0), expected)
    assert not near_mask(np.zeros_like(mask), zooms, 6.0).any()


# ----------------------------------------------------------- ANTs' resampling, computed without ANTs


def _oblique_image(shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int) -> nib.Nifti1Image:
    """Smooth random intensities on a rotated, anisotropic grid (every axis differs)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    affine = np.eye(4)
    affine[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0] @ np.diag(spacing)
    affine[:3, 3] = rng.uniform(-40.0, 40.0, 3)
    data = ndimage.gaussian_filter(rng.random(shape), 1.5).astype(np.float32) * 100.0
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    return img


@pytest.mark.parametrize(
    ("shape", "spacing"),
    [((37, 41, 29), (0.88, 0.9, 1.3)), ((20, 21, 9), (1.0, 1.0, 2.5)), ((10, 12, 11), (2.9, 2.9, 2.9))],
)
def test_resampling_to_a_spacing_equals_ants(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
    """Same grid and values as ants.resample_image, including an upsampled axis whose last voxels lie
    past the input (ITK's 0 there) and ResampleImage's rounding of the size (2.9 mm × 10 / 2 = 14.5)."""
    import ants

    from imaging.qc.native import resample_to_spacing

    image = ants.from_nibabel_nifti(_oblique_image(shape, spacing, seed=len(shape) + shape[0]))
    expected = ants.resample_image(image, (2.0, 2.0, 2.0), False, 0)
    ours = resample_to_spacing(image, 2.0)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.origin, expected.origin)
    np.testing.assert_allclose(ours.direction, expected.direction)
    np.testing.assert_allclose(ours.spacing, expected.spacing)
    np.testing.assert_allclose(ours.numpy(), expected.numpy(), rtol=0, atol=1e-4)
    assert ((ours.numpy() == 0) == (expected.numpy() == 0)).all()


def test_field_and_wm_at_native_voxels_equal_ants(tmp_path: Path) -> None:
    """QC reads the N4 field and the MNI WM map at native brain voxels as ANTs' resampling would."""
    import ants

    from imaging.qc.metrics import WM_MIN_PROB
    from imaging.qc.native import _field_at, _wm_at, resample_to_spacing

    native = _oblique_image((60, 70, 50), (0.9, 0.95, 1.1), seed=3)
    field = resample_to_spacing(ants.from_nibabel_nifti(native), 2.0)
    box = (slice(5, 52), slice(3, 66), slice(4, 50))
    corner = np.eye(4)
    corner[:3, 3] = [b.start for b in box]
    box_img = nib.Nifti1Image(np.ascontiguousarray(native.get_fdata(dtype=np.float32)[box]), native.affine @ corner)
    box_img.header.set_xyzt_units("mm", "sec")
    full = ants.from_nibabel_nifti(box_img)
    voxels = np.nonzero(np.random.default_rng(0).random(full.shape) < 0.3)
    expected = ants.resample_image_to_target(field, full, interp_type="linear").numpy()[voxels]
    np.testing.assert_allclose(_field_at(field, box_img.affine, voxels), expected, rtol=1e-5, atol=1e-4)

    # A WM-like map on a grid, and a registration-like affine (MNI -> native) with rotation and scaling.
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid_affine[:3, 3] = [-30.0, -34.0, -28.0]
    wm_img = nib.Nifti1Image(_oblique_image((30, 34, 28), (2.0, 2.0, 2.0), seed=4).get_fdata() / 60.0, grid_affine)
    wm_img.header.set_xyzt_units("mm", "sec")
    rotation = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)) * 0.1 + np.eye(3))[0]
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        precision="float",
        dimension=3,
        matrix=rotation @ np.diag([0.95, 1.05, 1.0]),
        center=(1.0, 2.0, -3.0),
        translation=(-native.affine[0, 3] + 10.0, -native.affine[1, 3] + 5.0, native.affine[2, 3]),
    )
    path = tmp_path / "affine.mat"
    ants.write_transform(tx, str(path))
    wm_box = ants.apply_transforms(
        full, ants.from_nibabel_nifti(wm_img), [str(path)], interpolator="linear", whichtoinvert=[True]
    ).numpy()[voxels]
    ours = _wm_at(voxels, box_img.affine, path, wm_img.get_fdata(dtype=np.float32), wm_img.affine)
    reach = wm_box >= WM_MIN_PROB
    assert 100 < reach.sum() < reach.size  # the map crosses the threshold inside the box
    np.testing.assert_array_equal(ours >= WM_MIN_PROB, reach)
    np.testing.assert_allclose(ours[reach], wm_box[reach], rtol=1e-6)
