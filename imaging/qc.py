"""Per-volume quality metrics and the automatic pass / review / fail decision (design.md §4).

Pure numpy/scipy functions on arrays (the mriqc habit: maths apart from I/O), plus one thin file-level
function, ``compute_metrics``, that loads the outputs of registration and skull stripping.

Metrics (formulas in each function's docstring): SNR (background-based) and tissue SNR (``snr_wm``),
CNR, CJV, EFC, FBER, WM2MAX, INU (spread of an N4 bias field), QI1-style artifact fraction, brain
volume, FOV coverage and registration similarity (the last two passed through from registration).

Where each metric is measured, and why:
    * Noise and everything about the air (background std, FBER, QI1, EFC) on the **native** image,
      before stripping or resampling: registration interpolates and smooths away noise, and stripping
      removes the air the noise is measured in. INU and the tissue SNR too: the registered image has
      already had a bias field divided out and its noise averaged by resampling; the brain and WM are
      found there by mapping the model-grid masks back through the registration's affine.
    * Signal (brain, GM, WM means; CJV, WM2MAX) on the **registered** image on the model grid, where the
      MNI tissue maps say which voxels are GM and WM. Registration keeps the native intensity units (its
      N4 field is normalised to mean 1), so the two can be divided.

Many exports are zero-filled outside the head (defacing, background suppression, pre-stripped data:
t1w_chris and flair_lesions here). Their background holds no noise, so SNR, CNR and FBER are reported
as NaN ("not measurable") instead of a meaningless huge value, and the decision skips those rules; the
metrics that need no background are still there for the rules and the group-wise outlier step
(``tasks.qc_groups``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    import ants

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
        outlier_z: group-outlier threshold on the robust z (``tasks.qc_groups``). 3.5 is Iglewicz and
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
    3D fill alone leaves the whole brain outside the "head" and inside the background. The closing
    runs on an edge-padded copy: with the default zero border its erosion would strip the last two
    slices wherever the head (the neck) leaves the image.
    """
    from scipy import ndimage

    finite = np.nan_to_num(np.asarray(data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    mask = finite > otsu_threshold(finite)
    pad = 2  # = the closing's iterations with a 6-neighbour structure
    padded = np.pad(mask, pad, mode="edge")
    padded = ndimage.binary_closing(padded, structure=ndimage.generate_binary_structure(3, 1), iterations=pad)
    mask = padded[pad:-pad, pad:-pad, pad:-pad]
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


def between_head(head: np.ndarray) -> np.ndarray:
    """Voxels with head on both sides along some image axis (the head's line spans, united over axes).

    A line along an axis is filled from its first to its last head voxel. This closes what hole filling
    cannot: a mouth, pharynx or neck interior that opens into the image border because the field of view
    cuts through the neck (on the Siemens XA30 T1 the whole pharynx counted as air and QI1 read 0.085).
    Air far from the head never lies between two head voxels, so the true background is kept.
    """
    m = np.asarray(head, dtype=bool)
    out = m.copy()
    for axis in range(m.ndim):
        forward = np.maximum.accumulate(m, axis=axis)
        backward = np.flip(np.maximum.accumulate(np.flip(m, axis=axis), axis=axis), axis=axis)
        out |= forward & backward
    return out


def background_mask(
    data: np.ndarray, zooms: tuple[float, ...], *, margin_mm: float = 10.0, head: np.ndarray | None = None
) -> np.ndarray:
    """Air: finite voxels at least ``margin_mm`` away from the head and not between two head voxels.

    The margin keeps out the head's edge, partial-volume voxels and most ghosting close to the scalp;
    ``between_head`` keeps out body cavities open to the image border. ``head`` may be passed when the
    caller already computed ``head_mask(data)`` (it is the slow part).
    """
    from scipy import ndimage

    head = head_mask(data) if head is None else head
    # Physical distance to the head (exact for anisotropic voxels, unlike repeated binary dilation).
    dist = ndimage.distance_transform_edt(~between_head(head), sampling=tuple(float(z) for z in zooms[:3]))
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


def snr_wm(wm: np.ndarray) -> float:
    """Tissue SNR = mean WM / std WM (the "snr_wm" of MRIQC), NaN for fewer than 2 values or std 0.

    Unlike ``snr`` it needs no background, so it is measurable on zero-filled exports too.
    ``compute_metrics`` measures it on the native, bias-corrected WM (see ``native_tissue_metrics``). The
    std (ddof = 1) holds noise *and* residual tissue mixing (MNI WM prior ≥ 0.9 through an affine, no
    subject segmentation; partial volume in thick 2D slices), so clean volumes score well below the
    background SNR (4.7-21 on the test volumes) and it is judged within its group only.
    """
    v = np.asarray(wm, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    sd = float(v.std(ddof=1))
    return float(v.mean() / sd) if sd > 0 else float("nan")


def efc(data: np.ndarray) -> float:
    """Entropy focus criterion (Atkinson et al. 1997), normalised to 1 for a uniform image.

    With N voxels of intensity x_j ≥ 0 and the total energy B = sqrt(Σ x_j²)::

        E     = −Σ (x_j / B) · ln(x_j / B)          (terms with x_j = 0 contribute 0)
        E_max = √N · ln √N                          (E of a uniform image: every x_j / B = 1/√N)
        EFC   = E / E_max

    Motion blurs edges and ghosting spreads signal into the air; both move energy out of a few bright
    voxels into many dim ones and raise the entropy, so higher is worse. A single bright voxel in a black
    image gives 0. EFC depends on the matrix size N and the share of air in the field of view, so it is
    only compared within a (scanner, sequence) group. Negative values (some converters) are clipped
    to 0 and non-finite voxels dropped; NaN when fewer than 2 voxels remain or the image is all zero.
    """
    x = np.asarray(data, dtype=np.float64).ravel()
    x = np.clip(x[np.isfinite(x)], 0.0, None)
    n = x.size
    total = float(np.sqrt(np.sum(x * x))) if n else 0.0
    if n < 2 or total <= 0:
        return float("nan")
    p = x[x > 0] / total
    entropy = float(-np.sum(p * np.log(p)))
    return entropy / (math.sqrt(n) * math.log(math.sqrt(n)))


def fber(head_values: np.ndarray, background_values: np.ndarray, *, max_zero_fraction: float = 0.5) -> float:
    """Foreground-background energy ratio = mean(x² in the head) / mean(x² in the air).

    Mean energies (not medians), so that a ghost covering a minority of the air still lowers it. Higher
    is better; noise and ghosting both raise the air's energy. NaN when the air is zero-filled (more
    than ``max_zero_fraction`` exact zeros, as for ``background_noise``: the ratio would only measure
    the export's masking), holds fewer than 100 voxels, or has zero energy.
    """
    fg = np.asarray(head_values, dtype=np.float64).ravel()
    bg = np.asarray(background_values, dtype=np.float64).ravel()
    fg, bg = fg[np.isfinite(fg)], bg[np.isfinite(bg)]
    if fg.size == 0 or bg.size < 100 or np.mean(bg == 0) > max_zero_fraction:
        return float("nan")
    bg_energy = float(np.mean(bg * bg))
    return float(np.mean(fg * fg) / bg_energy) if bg_energy > 0 else float("nan")


def wm2max(wm: np.ndarray, image_values: np.ndarray, *, percentile: float = 99.95) -> float:
    """WM2MAX = median WM intensity / ``percentile`` of the image's intensities (MRIQC's wm2max).

    Near 1 the WM sits at the top of the range (clipped or saturated intensities); far below, a few very
    bright voxels (fat, vessels, a spike or zipper artifact) squeeze the tissue into the bottom of the
    dynamic range. Contrast-dependent (T2w WM is dark), so it is judged within its group. NaN when either
    input is empty or the percentile is not positive.
    """
    w = np.asarray(wm, dtype=np.float64).ravel()
    v = np.asarray(image_values, dtype=np.float64).ravel()
    w, v = w[np.isfinite(w)], v[np.isfinite(v)]
    if w.size == 0 or v.size == 0:
        return float("nan")
    top = float(np.percentile(v, percentile))
    return float(np.median(w) / top) if top > 0 else float("nan")


def inu_spread(field_values: np.ndarray) -> float:
    """Intensity non-uniformity = (p95 − p5) / median of a multiplicative bias field inside the brain.

    Scale-free (N4's field has an arbitrary scale) and robust to the field's extreme corners: 0 for a
    flat field; field values spread evenly over [1, 1 + a] give 0.9·a / (1 + a/2), e.g. 0.42 for a 60 %
    rise across the brain. NaN for fewer than 10 values or a non-positive median.
    """
    f = np.asarray(field_values, dtype=np.float64).ravel()
    f = f[np.isfinite(f)]
    if f.size < 10:
        return float("nan")
    p5, med, p95 = np.percentile(f, [5.0, 50.0, 95.0])
    return float((p95 - p5) / med) if med > 0 else float("nan")


QI1_N_SIGMA = 5.0
"""Air voxels count as artifact above median + 5 robust σ of the air. For Rayleigh air (magnitude images)
that is ≈ 4.3 σ of the underlying Gaussian, exceeded by pure noise with probability exp(−4.3²/2) ≈ 1e-4,
and the opening below removes those isolated voxels; ghosts (a fraction of the head's signal, tens of σ)
clear it easily."""

QI1_MIN_FRACTION_OF_SIGNAL = 0.05
"""... and never below 5 % of the head's median intensity: a zero-filled air has no noise to scale a
threshold with, and a structure fainter than 5 % of the tissue signal is invisible at any usual window."""


def artifact_fraction(
    data: np.ndarray,
    background: np.ndarray,
    *,
    signal: float,
    n_sigma: float = QI1_N_SIGMA,
    min_fraction_of_signal: float = QI1_MIN_FRACTION_OF_SIGNAL,
    max_zero_fraction: float = 0.5,
) -> float:
    """QI1-style artifact fraction (Mortamet et al. 2009): share of the air holding structured signal.

    The air (``background``, already at a margin from the head) should hold noise only. With its median m
    and robust σ_r = 1.4826 · MAD::

        t    = max(m + n_sigma · σ_r, min_fraction_of_signal · signal)   (t = the second term alone when
                                                                          the air is zero-filled)
        hits = opening(air & (x > t))               (3D 6-neighbour cross: drops isolated noise spikes)
        QI1  = |hits| / |air|

    Ghosting from motion, wrap-around and spikes put copies of the head into the air and raise it; pure
    noise scores ≈ 0. The robust statistics tolerate ghosts in up to half of the air.

    Args:
        data: the native image (before stripping or resampling).
        background: bool mask of the air (``background_mask``).
        signal: typical tissue intensity (median inside the head), sets the floor of ``t``.
        n_sigma: robust σ above the air's median that counts as signal.
        min_fraction_of_signal: floor of ``t`` relative to ``signal``.
        max_zero_fraction: above this share of exact zeros the air counts as zero-filled.

    Returns:
        The fraction in [0, 1]; NaN when the air has fewer than 100 voxels.
    """
    from scipy import ndimage

    x = np.nan_to_num(np.asarray(data, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    air = np.asarray(background, dtype=bool)
    values = x[air]
    if values.size < 100:
        return float("nan")
    floor = min_fraction_of_signal * float(signal) if math.isfinite(signal) else 0.0
    if np.mean(values == 0) > max_zero_fraction:
        threshold = floor
    else:
        med = float(np.median(values))
        sigma_r = 1.4826 * float(np.median(np.abs(values - med)))
        threshold = max(med + n_sigma * sigma_r, floor)
    hits = air & (x > threshold)
    hits = ndimage.binary_opening(hits, structure=ndimage.generate_binary_structure(3, 1))
    return float(hits.sum() / values.size)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2·|A ∩ B| / (|A| + |B|) of two boolean masks; NaN when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return float(2.0 * np.logical_and(a, b).sum() / total) if total else float("nan")


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


N4_SPACING_MM = 2.0
"""The bias field for INU is fitted on the native image resampled to 2 mm: the field is smooth, so the
coarse grid loses nothing that matters, and the fit takes ≈ 1-2 s."""

N4_SPLINE_DISTANCE_MM = 200.0
N4_QC_CONVERGENCE = {"iters": [50, 50, 50], "tol": 1e-7}
"""N4 settings for *measuring* the field, not register.py's (tuned for speed as a correction). With
register.py's early stop (25/25/15 iterations, tol 1e-6) N4 recovered only 10 % of a field injected into
flair_lesions (measured spread 0.05 against 0.48); with B-spline control points every 200 mm (ANTs'
recommended N4 distance), three fitting levels (200 → 100 → 50 mm) and 50 iterations each it measured
0.39, and 0.31/0.38/0.42 against 0.29/0.34/0.41 on t1w_chris, a synthetic FLAIR and t2w_head, while its
field kept tracking the injected one (r ≥ 0.91 on every test volume)."""

BRAIN_FALLBACK_ERODE_MM = 10.0
"""Without the registration's transform (volumes not written by ``register_to_mni``), INU is measured in
the head mask eroded by 10 mm, roughly the brain inside scalp and skull."""


def _to_ants(data: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    import ants

    img = nib.Nifti1Image(np.ascontiguousarray(data, dtype=np.float32), affine)
    img.header.set_xyzt_units("mm", "sec")  # else ANTs warns about units for every image
    return ants.from_nibabel_nifti(img)


def native_tissue_metrics(
    native_data: np.ndarray,
    affine: np.ndarray,
    brain_grid: nib.Nifti1Image,
    wm_grid: nib.Nifti1Image,
    transform: Path | None,
) -> dict[str, float]:
    """INU and tissue SNR measured in the native image: ``{"inu": ..., "snr_wm": ...}``.

    1. The bias field comes from ``ants.n4_bias_field_correction(return_bias_field=True)`` on the native
       image at ``N4_SPACING_MM`` inside its Otsu head mask. It must be the native image: the registered
       one already had register.py's field divided out.
    2. The brain is the model-grid brain mask mapped back through the inverse of the registration's affine
       (``transform``); INU = ``inu_spread`` of the field there.
    3. ``snr_wm`` = ``snr_wm`` of the native intensities, divided by the field brought to the native grid,
       where the MNI WM probability mapped the same way is ≥ ``WM_MIN_PROB`` inside the brain: native
       voxels keep their own noise, which the registered image has partly averaged away (anti-aliasing
       and interpolation onto the coarser model grid).

    Without ``transform`` (a volume not written by ``register_to_mni``) INU falls back to the head eroded
    by ``BRAIN_FALLBACK_ERODE_MM`` and ``snr_wm`` is NaN (there is no WM map in native space). Either is
    NaN when N4 fails or its region is empty.
    """
    import ants
    from scipy import ndimage

    out = {"inu": float("nan"), "snr_wm": float("nan")}
    data = np.nan_to_num(np.asarray(native_data, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    full = _to_ants(data, affine)
    coarse = ants.resample_image(full, (N4_SPACING_MM,) * 3, False, 0)
    head = head_mask(coarse.numpy())
    if head.sum() < 10:
        return out
    try:
        field = ants.n4_bias_field_correction(
            coarse,
            mask=coarse.new_image_like(head.astype(np.float32)),
            shrink_factor=4,
            convergence=N4_QC_CONVERGENCE,
            spline_param=N4_SPLINE_DISTANCE_MM,
            return_bias_field=True,
        )
    except Exception:  # noqa: BLE001 - a failed fit means "not measured", not a failed QC run
        return out
    has_transform = transform is not None and Path(transform).is_file()
    region = np.zeros_like(head)
    if has_transform:
        brain = _to_ants(np.asarray(brain_grid.dataobj, dtype=np.float32), brain_grid.affine)
        tl = [str(transform)]
        mapped = ants.apply_transforms(coarse, brain, tl, interpolator="nearestNeighbor", whichtoinvert=[True])
        region = head & (mapped.numpy() > 0.5)
        wm = _to_ants(wm_grid.get_fdata(dtype=np.float32), wm_grid.affine)
        wm_native = ants.apply_transforms(full, wm, tl, interpolator="linear", whichtoinvert=[True]).numpy()
        brain_native = ants.apply_transforms(full, brain, tl, interpolator="nearestNeighbor", whichtoinvert=[True])
        field_native = ants.resample_image_to_target(field, full, interp_type="linear").numpy()
        # The 2 mm grid may stop short of the native grid's last voxels, where the interpolated field
        # falls towards 0; dividing by it there would create huge "WM" values, so those voxels are left out.
        typical = float(np.median(field.numpy()[head]))
        sel = (wm_native >= WM_MIN_PROB) & (brain_native.numpy() > 0.5) & (field_native > 0.5 * typical)
        if sel.sum() >= 100:
            out["snr_wm"] = snr_wm(data[sel] / field_native[sel])
    if region.sum() < 10:
        dist = ndimage.distance_transform_edt(head, sampling=(N4_SPACING_MM,) * 3)
        region = dist > BRAIN_FALLBACK_ERODE_MM
    if region.sum() < 10:
        region = head
    out["inu"] = inu_spread(field.numpy()[region])
    return out


def compute_metrics(
    native: Path, registered: Path, mask: Path, fov: Path, similarity: float, fov_coverage: float
) -> dict[str, float]:
    """Metrics of one volume (all floats so the row goes straight into the warehouse).

    Native image (before stripping and resampling): background noise (the SNR/CNR denominators), EFC,
    FBER, QI1, INU and the tissue SNR. Registered image (model grid, N4-corrected, MNI tissue priors):
    brain mean, WM/GM means, CJV, WM2MAX.

    Args:
        native: the converted image before registration (noise is measured here).
        registered: the model-grid image from ``register_to_mni`` (signal is measured here). Its folder
            holds the registration's affine (``register.TRANSFORM_NAME``), used to find the brain and WM in
            the native image (INU, tissue SNR).
        mask: the brain mask on the model grid (skull stripping).
        fov: the warped field of view on the model grid.
        similarity: from the registration result, passed through.
        fov_coverage: from the registration result, passed through.

    Returns:
        ``snr`` (background-based), ``snr_wm`` (tissue-based), ``cnr``, ``cjv``, ``efc``, ``fber``,
        ``wm2max``, ``inu``, ``qi1``, ``brain_volume_ml`` (mask voxels × voxel volume), ``mask_mni_dice``
        (Dice of the brain mask with the MNI brain mask: after a correct affine the two coincide), ``brain_mean``,
        ``background_std``, ``background_zero_fraction``, ``fov_coverage``, ``similarity``, ``n_slices``
        (voxels along the shortest native axis, i.e. the slice count of a 2D stack), ``has_nan``
        (1.0 if the native image holds NaN or ±inf). See each function for the formula.
    """
    from imaging.register import TRANSFORM_NAME
    from imaging.templates import model_grid_brain_mask, model_grid_gm, model_grid_wm

    nat = nib.load(str(native))
    nat_data = np.asarray(nat.get_fdata(dtype=np.float32))
    if nat_data.ndim == 4 and nat_data.shape[3] == 1:
        nat_data = nat_data[..., 0]
    has_nan = not bool(np.isfinite(nat_data).all())
    zooms = tuple(float(z) for z in nat.header.get_zooms()[:3])
    head = head_mask(nat_data)
    bg = background_mask(nat_data, zooms, head=head)
    bg_values = nat_data[bg]
    bg_std = background_noise(bg_values)
    zero_fraction = float(np.mean(bg_values == 0)) if bg_values.size else float("nan")
    head_values = nat_data[head & np.isfinite(nat_data)]
    head_median = float(np.median(head_values)) if head_values.size else float("nan")

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
    mask_grid = nib.Nifti1Image(brain.astype(np.uint8), mask_img.affine)
    transform = Path(registered).parent / TRANSFORM_NAME
    native = native_tissue_metrics(nat_data, nat.affine, mask_grid, model_grid_wm(), transform)

    return {
        "snr": snr(brain_mean, bg_std),
        "snr_wm": native["snr_wm"],
        "cnr": cnr(wm_mean, gm_mean, bg_std),
        "cjv": cjv(wm, gm),
        "efc": efc(nat_data),
        "fber": fber(head_values, bg_values),
        "wm2max": wm2max(wm, reg[in_fov]),
        "inu": native["inu"],
        "qi1": artifact_fraction(nat_data, bg, signal=head_median),
        "brain_volume_ml": float(brain.sum()) * voxel_ml,
        "mask_mni_dice": dice(brain, np.asarray(model_grid_brain_mask().dataobj) > 0),
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
    ``tasks.qc_groups.apply_group_outliers``, which runs after all volumes of a curation run have their
    decision. Missing keys count as not measured.

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


# ------------------------------------------------------------------------------------- warehouse row


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
