"""Per-volume quality metrics and the automatic pass / review / fail decision (docs/architecture.md).

One concern per module:
    * ``masks``: where the head and the air are (Otsu, head mask, background mask).
    * ``metrics``: the formulas, pure numpy (SNR, tissue SNR, CNR, CJV, EFC, FBER, WM2MAX, INU spread,
      QI1-style artifact fraction, Dice).
    * ``native``: INU and tissue SNR in the native image (ANTs N4, masks mapped back from MNI).
    * ``compute``: ``compute_metrics``, every metric of one volume from the files registration and
      skull stripping wrote (brain volume, FOV coverage and similarity are passed through).
    * ``decision``: ``QCThresholds`` and ``decide``, the hard rules of one volume.
    * ``groups``: robust z-scores within (scanner model, sequence class) groups, the population half.

The names below are re-exported so callers import from ``imaging.qc`` and need not know the split.
"""

from __future__ import annotations

from imaging.qc.compute import compute_metrics
from imaging.qc.decision import QC_METRIC_COLUMNS, STATUSES, QCThresholds, decide
from imaging.qc.groups import (
    DIRECTIONS,
    MAD_TO_SD,
    OUTLIER_PREFIX,
    Verdict,
    VolumeQC,
    robust_location_scale,
    score_groups,
)
from imaging.qc.masks import background_mask, between_head, head_mask, otsu_threshold
from imaging.qc.metrics import (
    GM_MIN_PROB,
    QI1_MIN_FRACTION_OF_SIGNAL,
    QI1_N_SIGMA,
    WM_MIN_PROB,
    artifact_fraction,
    background_noise,
    cjv,
    cnr,
    dice,
    efc,
    fber,
    inu_spread,
    snr,
    snr_wm,
    tissue_values,
    wm2max,
)
from imaging.qc.native import (
    BRAIN_FALLBACK_ERODE_MM,
    N4_QC_CONVERGENCE,
    N4_SPACING_MM,
    N4_SPLINE_DISTANCE_MM,
    native_tissue_metrics,
)

__all__ = [
    "BRAIN_FALLBACK_ERODE_MM",
    "DIRECTIONS",
    "GM_MIN_PROB",
    "MAD_TO_SD",
    "N4_QC_CONVERGENCE",
    "N4_SPACING_MM",
    "N4_SPLINE_DISTANCE_MM",
    "OUTLIER_PREFIX",
    "QC_METRIC_COLUMNS",
    "QI1_MIN_FRACTION_OF_SIGNAL",
    "QI1_N_SIGMA",
    "STATUSES",
    "WM_MIN_PROB",
    "QCThresholds",
    "Verdict",
    "VolumeQC",
    "artifact_fraction",
    "background_mask",
    "background_noise",
    "between_head",
    "cjv",
    "cnr",
    "compute_metrics",
    "decide",
    "dice",
    "efc",
    "fber",
    "head_mask",
    "inu_spread",
    "native_tissue_metrics",
    "otsu_threshold",
    "robust_location_scale",
    "score_groups",
    "snr",
    "snr_wm",
    "tissue_values",
    "wm2max",
]
