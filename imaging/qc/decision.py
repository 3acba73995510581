"""The automatic pass / review / fail decision of one volume: every threshold and the hard rules.

``decide`` judges a volume against fixed floors; the metrics without an absolute scale are judged
against their (scanner, sequence) group afterwards (``imaging.qc.groups``). See docs/architecture.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

STATUSES: tuple[str, ...] = ("pass", "review", "fail")


@dataclass(frozen=True)
class QCThresholds:
    """Every QC threshold in one place: hard rules for ``decide`` and the group-outlier step.

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
        min_mask_ml: a brain mask below 500 ml (a quarter of the 1880 ml every brain is scaled to) holds no
            usable brain: stripping failed or the image is not a head (e.g. scrambled pixels). Fail, not
            review, because no reviewer can repair it; 500-1300 ml stays a review.
        cnr_by_contrast: per-contrast CNR floors overriding ``min_cnr``. FLAIR is built to make GM and WM
            look alike (GM/WM ≈ 1.1-1.3) and with MNI priors after an affine the GM mean is diluted
            further: the clean synthetic FLAIR scores 0.8. Its floor 0 disables the rule; noise in a FLAIR
            is still caught by ``min_snr``.
        max_qi1: largest share of the air holding structured signal (``artifact_fraction``). Pure noise
            leaves ≈ 0 after the opening (≤ 0.0006 on the nine clean test volumes); 0.5 % of the air above 5
            robust σ means an object-shaped signal outside the head: ghosting, wrap-around or a spike
            (review).
        max_inu: largest bias-field spread (p95 − p5) / median in the brain. T1w GM is 25-40 % darker
            than WM; once one tissue varies by 35 % of its intensity across the brain, GM in the bright
            part is as bright as WM in the dark part, and intensity no longer separates the tissues
            (review). Clean test volumes measure 0.05-0.30 (highest: the real Philips MPRAGE, 0.30, and
            whole-head T2w, 0.28); fields injected at a spread of 0.6 over the head measure 0.40-0.54.
        min_mask_mni_dice: the affine scales every brain to the template's, so a skull-strip mask that
            follows the brain overlaps the MNI brain mask almost exactly when the registration is right
            (Dice 0.946-0.985 on the nine clean test volumes). Modelling the brain as a sphere of its
            volume (radius R ≈ 77 mm), a displacement d leaves Dice ≈ 1 − 3d / (4R): 0.92 is ≈ 8 mm for
            otherwise identical masks, a misregistration a reviewer sees at once (review). It catches
            misregistration whatever the contrast, where the similarity floors are loose (T2w), but only
            when the mask was made on the volume itself: a T2w/FLAIR reusing its study's T1w mask keeps
            the T1w's overlap.
        outlier_z: group-outlier threshold on the robust z (``imaging.qc.groups``). 3.5 is Iglewicz and
            Hoaglin's (1993) rule for the modified z-score 0.6745·(x − median)/MAD, the same quantity.
        min_group_size: fewest finite values of a metric in a (scanner model, sequence class) group for
            that metric to be z-scored. The MAD of few values is itself noisy: simulated normal groups
            flag |z| > 3.5 in 5.3 % of clean values at n = 5, 1.6 % at 10, 0.6 % at 20; over ~10
            one-sided metrics that is 24 %, 8 % and 3 % of clean volumes sent to review. 10 keeps that
            below one in ten; smaller groups rely on the hard rules alone.
        min_relative_scale: floor of the z denominator as a fraction of |median|: with MAD 0 (a group of
            identical values) every deviation would be infinitely unusual; with the floor a volume must
            differ by 3.5 × 2 % = 7 % of the median to be flagged.
        outlier_metrics: (metric, bad direction) pairs the group step scores: "low" (low is bad), "high"
            or "both". FOV coverage, slices and NaN are left to the hard rules (no spread in clean
            groups).
    """

    min_fov_coverage: float = 0.90
    min_similarity: float = 0.5
    similarity_by_contrast: tuple[tuple[str, float], ...] = (("T1w", 0.6), ("T2w", 0.2), ("FLAIR", 0.45))
    min_brain_ml: float = 1300.0
    max_brain_ml: float = 2400.0
    min_snr: float = 10.0
    min_cnr: float = 2.0
    min_slices: int = 20
    min_mask_ml: float = 500.0
    cnr_by_contrast: tuple[tuple[str, float], ...] = (("FLAIR", 0.0),)
    max_qi1: float = 0.005
    max_inu: float = 0.35
    min_mask_mni_dice: float = 0.92
    outlier_z: float = 3.5
    min_group_size: int = 10
    min_relative_scale: float = 0.02
    outlier_metrics: tuple[tuple[str, str], ...] = (
        ("snr", "low"),
        ("snr_wm", "low"),
        ("cnr", "low"),
        ("cjv", "high"),
        ("efc", "high"),
        ("fber", "low"),
        ("wm2max", "both"),
        ("inu", "high"),
        ("qi1", "high"),
        ("similarity", "low"),
        ("mask_mni_dice", "low"),
        ("brain_volume_ml", "both"),
    )

    def similarity_floor(self, contrast: str | None = None) -> float:
        """The similarity floor for ``contrast`` (``min_similarity`` when it has no entry)."""
        return dict(self.similarity_by_contrast).get(contrast or "", self.min_similarity)

    def cnr_floor(self, contrast: str | None = None) -> float:
        """The CNR floor for ``contrast`` (``min_cnr`` when it has no entry)."""
        return dict(self.cnr_by_contrast).get(contrast or "", self.min_cnr)


def _below(value: float, floor: float) -> bool:
    return math.isfinite(value) and value < floor


def _above(value: float, ceiling: float) -> bool:
    return math.isfinite(value) and value > ceiling


def decide(
    metrics: Mapping[str, float], thresholds: QCThresholds | None = None, *, contrast: str | None = None
) -> tuple[str, tuple[str, ...]]:
    """Automatic decision from hard rules: ``("pass" | "review" | "fail", reason codes)``.

    Fail (the volume cannot be used as it is): ``nan_in_image``, ``empty_mask``, ``mask_below_<t>ml``,
    ``too_few_slices_<n>``, ``fov_coverage_below_<t>``, ``registration_similarity_undefined``.
    Review (a person should look): ``registration_similarity_low``, ``brain_volume_out_of_range``,
    ``snr_below_<t>``, ``cnr_below_<t>``, ``qi1_above_<t>``, ``inu_above_<t>``,
    ``mask_mni_dice_below_<t>``. A NaN metric means "not
    measurable" (e.g. SNR, CNR, FBER of a zero-filled background) and triggers nothing. CJV, EFC, FBER,
    WM2MAX and the tissue SNR have no hard rule: they depend on matrix size, share of air, contrast and
    voxel size (and CJV, with MNI priors after an affine, already scores T1w 1.3, T2w 1.9, FLAIR 10 on
    good volumes), so they are judged against their (scanner, sequence) group by
    ``imaging.qc.groups.score_groups`` (applied by ``tasks.qc_groups.apply_group_outliers``), which runs
    after all volumes of a curation run have their decision. Missing keys count as not measured.

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
    elif _below(volume, t.min_mask_ml):
        fail.append(f"mask_below_{t.min_mask_ml:g}ml")
    if _below(get("n_slices"), t.min_slices):
        fail.append(f"too_few_slices_{t.min_slices}")
    if _below(get("fov_coverage"), t.min_fov_coverage):
        fail.append(f"fov_coverage_below_{t.min_fov_coverage:.2f}")
    similarity = get("similarity")
    if "similarity" in metrics and not math.isfinite(similarity):
        fail.append("registration_similarity_undefined")
    elif _below(similarity, t.similarity_floor(contrast)):
        review.append("registration_similarity_low")

    if math.isfinite(volume) and volume >= t.min_mask_ml and not (t.min_brain_ml <= volume <= t.max_brain_ml):
        review.append("brain_volume_out_of_range")
    if _below(get("snr"), t.min_snr):
        review.append(f"snr_below_{t.min_snr:g}")
    if _below(get("cnr"), t.cnr_floor(contrast)):
        review.append(f"cnr_below_{t.cnr_floor(contrast):g}")
    if _above(get("qi1"), t.max_qi1):
        review.append(f"qi1_above_{t.max_qi1:g}")
    if _above(get("inu"), t.max_inu):
        review.append(f"inu_above_{t.max_inu:g}")
    if _below(get("mask_mni_dice"), t.min_mask_mni_dice):
        review.append(f"mask_mni_dice_below_{t.min_mask_mni_dice:g}")

    status = "fail" if fail else "review" if review else "pass"
    return status, tuple(fail + review)


QC_METRIC_COLUMNS: tuple[str, ...] = (
    "snr",
    "snr_wm",
    "cnr",
    "cjv",
    "efc",
    "fber",
    "wm2max",
    "inu",
    "qi1",
    "brain_volume_ml",
    "mask_mni_dice",
    "fov_coverage",
    "similarity",
)
"""Metrics stored as their own ``qc`` columns (filterable in SQL); every metric is also in metrics_json."""
