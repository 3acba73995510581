"""The QC metric formulas: pure numpy on arrays already cut out of an image (formulas in each docstring).

Kept apart from file I/O and registration (the mriqc habit), so each formula is tested on synthetic
values with a known answer. ``imaging.qc.compute`` decides which voxels each one sees.
"""

from __future__ import annotations

import math

import numpy as np


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
    x = np.asarray(data)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    finite = np.isfinite(x)
    n = int(np.count_nonzero(finite))
    # Only positive voxels carry energy (clipped negatives and zeros add nothing), so only they are widened
    # to float64: a third of a zero-filled head export instead of a float64 copy of the whole image.
    v = x[finite & (x > 0)].astype(np.float64)
    total = math.sqrt(float(np.dot(v, v))) if v.size else 0.0
    if n < 2 or total <= 0:
        return float("nan")
    # −Σ (v/B) ln(v/B) = (ln B · Σv − Σ v ln v) / B: the same sum without a second array of ratios.
    entropy = (math.log(total) * float(v.sum()) - float(np.dot(v, np.log(v)))) / total
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

    x = np.asarray(data)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    air = np.asarray(background, dtype=bool)
    # Non-finite voxels count as 0 (no float64 copy of the whole image: float32 compares exactly against
    # a float64 threshold, and only the air's values are widened).
    finite = np.isfinite(x)
    values = np.where(finite[air], x[air], 0.0).astype(np.float64)
    if values.size < 100:
        return float("nan")
    floor = min_fraction_of_signal * float(signal) if math.isfinite(signal) else 0.0
    if np.mean(values == 0) > max_zero_fraction:
        threshold = floor
    else:
        med = float(np.median(values))
        sigma_r = 1.4826 * float(np.median(np.abs(values - med)))
        threshold = max(med + n_sigma * sigma_r, floor)
    with np.errstate(invalid="ignore"):
        above = np.where(finite, x > threshold, threshold < 0.0)  # a non-finite voxel counts as 0
    hits = air & above
    if not hits.any():
        return 0.0
    # The opening (erosion then dilation by the 6-neighbour cross) only reaches one voxel beyond a hit,
    # so it runs on the hits' bounding box grown by two voxels: the same result for a fraction of the work.
    box = []
    for axis in range(hits.ndim):
        idx = np.flatnonzero(hits.any(axis=tuple(a for a in range(hits.ndim) if a != axis)))
        box.append(slice(max(int(idx[0]) - 2, 0), min(int(idx[-1]) + 3, hits.shape[axis])))
    opened = ndimage.binary_opening(hits[tuple(box)], structure=ndimage.generate_binary_structure(3, 1))
    return float(opened.sum() / values.size)


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


WM_MIN_PROB = 0.9
"""WM voxels for CNR/CJV: MNI WM probability ≥ 0.9 (pure WM survives an affine's residual misfit)."""
GM_MIN_PROB = 0.7
"""GM voxels: probability ≥ 0.7; the GM ribbon is thin, so 0.9 would leave few voxels on a 1.7 mm grid."""
