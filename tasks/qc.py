"""Per-volume quality metrics and the automatic pass / review / fail decision (design.md §4).

Pure numpy/scipy functions on arrays (the mriqc habit: maths apart from I/O), plus one thin file-level
function, ``compute_metrics``, that loads the outputs of registration and skull stripping.

Where each metric is measured, and why:
    * Noise (the background) on the **native** image, before stripping or resampling: registration
      interpolates and smooths away noise, and stripping removes the air the noise is measured in.
    * Signal (brain, GM, WM means) on the **registered** image on the model grid, where the MNI tissue
      maps say which voxels are GM and WM. Registration keeps the native intensity units (its N4 field
      is normalised to mean 1), so the two can be divided.

Many exports are zero-filled outside the head (defacing, background suppression, pre-stripped data:
t1w_chris and flair_lesions here). Their background holds no noise, so SNR and CNR are reported as NaN
("not measurable") instead of a meaningless huge value, and the decision skips those rules; CJV, which
needs no background, is reported for the group-wise outlier step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

STATUSES: tuple[str, ...] = ("pass", "review", "fail")


@dataclass(frozen=True)
class QCThresholds:
    """Hard-rule thresholds for ``decide``. Defaults are explained per field.

    Attributes:
        min_fov_coverage: fraction of the MNI brain mask the acquired field of view must cover; below it
            part of the brain is missing, which no later step can repair (fail). 0.90 tolerates a clipped
            cerebellum or vertex; the cropped-top test volume scores far lower.
        min_similarity: registration similarity floor for contrasts without their own entry (review).
        similarity_by_contrast: per-contrast floors, because the contrasts reach different levels against
            their templates. Measured on the test volumes (6 mm FWHM similarity, good registration →
            shifted 10 mm): T1w 0.81 → 0.53, T2w 0.35 → 0.16, FLAIR 0.69 → 0.33. Each floor sits
            between the two, nearer the bad value, so only clearly misregistered volumes are flagged.
        min_brain_ml / max_brain_ml: plausible brain-mask volume on the model grid. After the affine to
            MNI every brain is scaled to template size, so the volume is nearly constant: the deepbet
            masks of the three test volumes measure 1877-1971 ml (MNI mask: 1882 ml). Outside
            1300-2400 ml the mask has lost a lobe or leaked into the scalp (review).
        min_snr: mean brain / background std. Below 10 the noise is visible at a glance (review).
        min_cnr: |mean WM − mean GM| / background std. Below 2 GM and WM are hard to tell apart (review).
        min_slices: fewest slices along the shortest image axis. 3D acquisitions have 100+; a 2D stack of
            fewer than 20 slices cannot cover a brain at useful resolution (fail).
    """

    min_fov_coverage: float = 0.90
    min_similarity: float = 0.5
    similarity_by_contrast: tuple[tuple[str, float], ...] = (("T1w", 0.6), ("T2w", 0.2), ("FLAIR", 0.45))
    min_brain_ml: float = 1300.0
    max_brain_ml: float = 2400.0
    min_snr: float = 10.0
    min_cnr: float = 2.0
    min_slices: int = 20

    def similarity_floor(self, contrast: str | None = None) -> float:
        """The similarity floor for ``contrast`` (``min_similarity`` when it has no entry)."""
        return dict(self.similarity_by_contrast).get(contrast or "", self.min_similarity)


# ------------------------------------------------------------------------------------------ pure maths


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the intensity that maximises the between-class variance of a 2-class split.

    Computed on a ``bins``-bin histogram of the finite values; for a constant input returns that value.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("otsu_threshold got no finite values; check the image for NaN/empty data")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    # Every threshold inside an empty gap of the histogram splits identically (a plateau of maxima);
    # take the middle of the first plateau rather than its lower end, which would hug the dark mode.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-9))
    run_end = best[0]
    while run_end + 1 < between.size and run_end + 1 in best:
        run_end += 1
    k = (best[0] + run_end) // 2
    # The threshold sits at the upper edge of the last bin assigned to the lower class.
    return float(edges[int(k) + 1])


def head_mask(data: np.ndarray) -> np.ndarray:
    """The head: voxels above the Otsu threshold, largest connected component, holes filled.

    Holes are filled in 3D and then slice by slice along every axis: on T1w the dark skull separates
    the bright scalp from the brain, and where the scalp shell is open (neck, a cut field of view) a
    3D fill alone leaves the whole brain outside the "head" and inside the background.
    """
    from scipy import ndimage

    finite = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    mask = finite > otsu_threshold(finite)
    mask = ndimage.binary_closing(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=2)
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


def background_mask(data: np.ndarray, zooms: tuple[float, ...], *, margin_mm: float = 10.0) -> np.ndarray:
    """Air: finite voxels at least ``margin_mm`` away from the head (Otsu head mask dilated).

    The margin keeps out the head's edge, partial-volume voxels and most ghosting close to the scalp.
    """
    from scipy import ndimage

    head = head_mask(data)
    # Physical distance to the head (exact for anisotropic voxels, unlike repeated binary dilation).
    dist = ndimage.distance_transform_edt(~head, sampling=tuple(float(z) for z in zooms[:3]))
    return (dist > margin_mm) & np.isfinite(data)


def background_noise(values: np.ndarray, *, max_zero_fraction: float = 0.5) -> float:
    """Standard deviation of background values, or NaN when the background is zero-filled.

    If more than ``max_zero_fraction`` of the voxels are exactly 0, the background was masked (defacing,
    background suppression, a pre-stripped export) and carries no noise information. Returns NaN for
    fewer than 100 voxels as well.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 100 or np.mean(v == 0) > max_zero_fraction:
        return float("nan")
    return float(v.std())


def snr(brain_mean: float, background_std: float) -> float:
    """SNR = mean brain intensity / std of background air (NaN if either is unknown or the std is 0).

    For magnitude images the air is Rayleigh-distributed, its std is 0.655·σ of the underlying Gaussian
    noise (mriqc's Dietrich SNR divides by that factor); no correction is applied here, so the value is
    comparable within this pipeline, not with mriqc's ``snr_d``.
    """
    if not (math.isfinite(brain_mean) and math.isfinite(background_std)) or background_std <= 0:
        return float("nan")
    return float(brain_mean / background_std)


def cnr(wm_mean: float, gm_mean: float, background_std: float) -> float:
    """CNR = |mean WM − mean GM| / std of background air (NaN if unknown)."""
    if not all(math.isfinite(x) for x in (wm_mean, gm_mean, background_std)) or background_std <= 0:
        return float("nan")
    return float(abs(wm_mean - gm_mean) / background_std)


def cjv(wm: np.ndarray, gm: np.ndarray) -> float:
    """Coefficient of joint variation (σ_WM + σ_GM) / |μ_WM − μ_GM| (mriqc); NaN if the means tie."""
    wm, gm = np.asarray(wm, dtype=np.float64), np.asarray(gm, dtype=np.float64)
    if wm.size < 2 or gm.size < 2:
        return float("nan")
    diff = abs(wm.mean() - gm.mean())
    return float((wm.std() + gm.std()) / diff) if diff > 0 else float("nan")


def tissue_values(
    image: np.ndarray, prob: np.ndarray, region: np.ndarray, *, min_prob: float, min_voxels: int = 100
) -> np.ndarray:
    """Intensities of ``image`` where the tissue probability is ≥ ``min_prob`` inside ``region``.

    Returns an empty array when fewer than ``min_voxels`` qualify (e.g. a tiny field of view).
    """
    sel = region & (prob >= min_prob)
    return image[sel] if sel.sum() >= min_voxels else np.empty(0, dtype=image.dtype)


# ------------------------------------------------------------------------------------ file level


WM_MIN_PROB = 0.9
"""WM voxels for CNR/CJV: MNI WM probability ≥ 0.9 (pure WM survives an affine's residual misfit)."""
GM_MIN_PROB = 0.7
"""GM voxels: probability ≥ 0.7; the GM ribbon is thin, so 0.9 would leave few voxels on a 1.7 mm grid."""


def compute_metrics(
    native: Path, registered: Path, mask: Path, fov: Path, similarity: float, fov_coverage: float
) -> dict[str, float]:
    """Metrics of one volume (all floats so the row goes straight into the warehouse).

    Args:
        native: the converted image before registration (noise is measured here).
        registered: the model-grid image from ``register_to_mni`` (signal is measured here).
        mask: the brain mask on the model grid (skull stripping).
        fov: the warped field of view on the model grid.
        similarity: from the registration result, passed through.
        fov_coverage: from the registration result, passed through.

    Returns:
        ``snr``, ``cnr``, ``cjv``, ``brain_volume_ml`` (mask voxels × voxel volume), ``brain_mean``,
        ``background_std``, ``background_zero_fraction``, ``fov_coverage``, ``similarity``, ``n_slices``
        (voxels along the shortest native axis, i.e. the slice count of a 2D stack), ``has_nan``
        (1.0 if the native image holds NaN or ±inf).
    """
    from tasks.templates import model_grid_gm, model_grid_wm

    nat = nib.load(str(native))
    nat_data = np.asarray(nat.get_fdata(dtype=np.float32))
    if nat_data.ndim == 4 and nat_data.shape[3] == 1:
        nat_data = nat_data[..., 0]
    has_nan = not bool(np.isfinite(nat_data).all())
    zooms = tuple(float(z) for z in nat.header.get_zooms()[:3])
    bg = background_mask(nat_data, zooms)
    bg_values = nat_data[bg]
    bg_std = background_noise(bg_values)
    zero_fraction = float(np.mean(bg_values == 0)) if bg_values.size else float("nan")

    reg = np.nan_to_num(np.asarray(nib.load(str(registered)).get_fdata(dtype=np.float32)))
    mask_img = nib.load(str(mask))
    brain = np.asarray(mask_img.dataobj) > 0
    in_fov = np.asarray(nib.load(str(fov)).dataobj) > 0
    voxel_ml = float(np.prod(mask_img.header.get_zooms()[:3])) / 1000.0
    region = brain & in_fov
    brain_mean = float(reg[region].mean()) if region.any() else float("nan")
    wm = tissue_values(reg, model_grid_wm().get_fdata(dtype=np.float32), region, min_prob=WM_MIN_PROB)
    gm = tissue_values(reg, model_grid_gm().get_fdata(dtype=np.float32), region, min_prob=GM_MIN_PROB)
    wm_mean = float(wm.mean()) if wm.size else float("nan")
    gm_mean = float(gm.mean()) if gm.size else float("nan")

    return {
        "snr": snr(brain_mean, bg_std),
        "cnr": cnr(wm_mean, gm_mean, bg_std),
        "cjv": cjv(wm, gm),
        "brain_volume_ml": float(brain.sum()) * voxel_ml,
        "brain_mean": brain_mean,
        "background_std": bg_std,
        "background_zero_fraction": zero_fraction,
        "fov_coverage": float(fov_coverage),
        "similarity": float(similarity),
        "n_slices": float(min(nat_data.shape[:3])),
        "has_nan": 1.0 if has_nan else 0.0,
    }


# --------------------------------------------------------------------------------------- decision


def _below(value: float, floor: float) -> bool:
    return math.isfinite(value) and value < floor


def decide(
    metrics: Mapping[str, float], thresholds: QCThresholds | None = None, *, contrast: str | None = None
) -> tuple[str, tuple[str, ...]]:
    """Automatic decision from hard rules: ``("pass" | "review" | "fail", reason codes)``.

    Fail (the volume cannot be used as it is): ``nan_in_image``, ``empty_mask``,
    ``too_few_slices_<n>``, ``fov_coverage_below_<t>``, ``registration_similarity_undefined``.
    Review (a person should look): ``registration_similarity_low``, ``brain_volume_out_of_range``,
    ``snr_below_<t>``, ``cnr_below_<t>``. A NaN SNR/CNR means "not measurable" (zero-filled
    background) and triggers nothing. CJV has no hard rule: with MNI tissue priors after an affine (no
    subject segmentation) good volumes already score T1w 1.3, T2w 1.9, FLAIR 10 (GM ≈ WM in FLAIR), so
    it is only meaningful relative to its (scanner, sequence) group. Missing keys count as not measured.
    Robust z-scores within (scanner, sequence) groups (design.md §4) are a separate, population step.

    Args:
        metrics: output of ``compute_metrics`` (or any mapping with the same keys).
        thresholds: defaults to ``QCThresholds()``.
        contrast: selects the per-contrast similarity floor.
    """
    t = thresholds or QCThresholds()

    def get(key: str) -> float:
        return float(metrics.get(key, float("nan")))

    fail: list[str] = []
    review: list[str] = []

    if get("has_nan") > 0:
        fail.append("nan_in_image")
    volume = get("brain_volume_ml")
    if math.isfinite(volume) and volume <= 0:
        fail.append("empty_mask")
    if _below(get("n_slices"), t.min_slices):
        fail.append(f"too_few_slices_{t.min_slices}")
    if _below(get("fov_coverage"), t.min_fov_coverage):
        fail.append(f"fov_coverage_below_{t.min_fov_coverage:.2f}")
    similarity = get("similarity")
    if "similarity" in metrics and not math.isfinite(similarity):
        fail.append("registration_similarity_undefined")
    elif _below(similarity, t.similarity_floor(contrast)):
        review.append("registration_similarity_low")

    if math.isfinite(volume) and volume > 0 and not (t.min_brain_ml <= volume <= t.max_brain_ml):
        review.append("brain_volume_out_of_range")
    if _below(get("snr"), t.min_snr):
        review.append(f"snr_below_{t.min_snr:g}")
    if _below(get("cnr"), t.min_cnr):
        review.append(f"cnr_below_{t.min_cnr:g}")

    status = "fail" if fail else "review" if review else "pass"
    return status, tuple(fail + review)
