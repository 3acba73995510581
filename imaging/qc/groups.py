"""Robust group outliers: the population half of the QC decision, pure numpy (docs/architecture.md).

``decide`` judges one volume against fixed floors. Most metrics (EFC, FBER, WM2MAX, CJV, ...) have no
absolute scale: they depend on the scanner, coil, matrix and sequence. So, after a curation run, each
volume is compared with the other volumes of its (scanner model, sequence class) group::

    z = (x − median) / max(1.4826 · MAD, min_relative_scale · |median|)

1.4826 · MAD estimates the standard deviation of normal data, so z reads like an ordinary z-score, and
neither the median nor the MAD is moved by a minority of bad volumes (breakdown point 50 %). Only the
direction that means trouble counts (low SNR, high INU; both ways for brain volume and WM2MAX, see
``QCThresholds.outlier_metrics``). A volume's ``outlier_score`` is its largest such z over the metrics
(NULL when no metric of its group could be scored). A "pass" with any z above ``outlier_z`` becomes
"review" with reasons such as ``outlier_snr_z-4.1``; a "review" keeps its decision and gains the
reasons; a "fail" is never changed. Human ratings live in the ``ratings`` table and are not touched
(they win over the automatic decision anyway).

The step is idempotent: outlier reasons of a previous run are stripped before the volume's own
(hard-rule) decision is recovered, so rerunning it, or running it after new volumes arrived, never
stacks reasons or keeps a stale "review".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imaging.qc.decision import QCThresholds

OUTLIER_PREFIX = "outlier_"
"""Reason codes written by this step start with this; ``decide`` never produces one."""

MAD_TO_SD = 1.4826
"""1 / Φ⁻¹(3/4): makes the MAD a consistent estimator of σ for normal data."""

DIRECTIONS: tuple[str, ...] = ("low", "high", "both")


@dataclass(frozen=True)
class VolumeQC:
    """What the group step needs of one volume.

    Attributes:
        volume_id: the volume.
        group: (scanner model, sequence class); a missing model or label is its own "" group.
        metrics: metric name -> value (NaN = not measured).
        decision: the stored automatic decision (may already hold a previous run's outlier verdict).
        reasons: the stored reason codes.
    """

    volume_id: str
    group: tuple[str, str]
    metrics: Mapping[str, float]
    decision: str
    reasons: tuple[str, ...]

    @property
    def base_reasons(self) -> tuple[str, ...]:
        """The hard-rule reasons: the stored ones without any earlier outlier verdict."""
        return tuple(r for r in self.reasons if not r.startswith(OUTLIER_PREFIX))

    @property
    def base_decision(self) -> str:
        """``decide``'s own verdict: a review that only outliers caused was a pass."""
        if self.decision == "fail":
            return "fail"
        return "review" if self.base_reasons else "pass"


@dataclass(frozen=True)
class Verdict:
    """The group step's result for one volume.

    Attributes:
        decision: the new automatic decision.
        reasons: hard-rule reasons followed by outlier reasons (worst first).
        outlier_score: largest bad-direction robust z over the scored metrics; None if none was scored.
        zs: metric -> signed robust z, for every metric scored for this volume.
    """

    decision: str
    reasons: tuple[str, ...]
    outlier_score: float | None
    zs: Mapping[str, float]


def robust_location_scale(values: Sequence[float], *, min_relative_scale: float) -> tuple[float, float]:
    """Median and scale = max(1.4826 · MAD, min_relative_scale · |median|) of the finite ``values``.

    The floor keeps z finite when most of a group shares one value (MAD 0, e.g. a metric that saturates):
    a deviation must then exceed ``outlier_z · min_relative_scale`` of the median to count. Returns
    (NaN, NaN) for no finite values; the scale may be 0 when the median is 0 and the MAD too.
    """
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med)))
    return med, max(MAD_TO_SD * mad, min_relative_scale * abs(med))


def _bad(z: float, direction: str) -> float:
    """The part of z that means trouble: z for "high", −z for "low", |z| for "both"."""
    if direction == "high":
        return z
    if direction == "low":
        return -z
    return abs(z)


def score_groups(volumes: Sequence[VolumeQC], thresholds: QCThresholds | None = None) -> dict[str, Verdict]:
    """Robust z-scores within (scanner model, sequence class) groups and the resulting verdicts (pure).

    Per group and metric, the reference population is the group's volumes whose own decision is not
    "fail" (a broken volume says nothing about what normal looks like) and whose value is finite. A
    metric is scored in a group only with at least ``min_group_size`` such values and a positive scale.
    Every volume of the group, failed ones included, then gets its z (failed volumes get a score too, so
    the dashboard can sort them, but their decision never changes).

    Raises:
        ValueError: an unknown direction in ``thresholds.outlier_metrics``.
    """
    t = thresholds or QCThresholds()
    for metric, direction in t.outlier_metrics:
        if direction not in DIRECTIONS:
            raise ValueError(
                f"outlier direction {direction!r} for {metric!r} is not one of {', '.join(DIRECTIONS)}; "
                "fix QCThresholds.outlier_metrics"
            )
    groups: dict[tuple[str, str], list[VolumeQC]] = defaultdict(list)
    for vol in volumes:
        groups[vol.group].append(vol)

    verdicts: dict[str, Verdict] = {}
    for members in groups.values():
        stats: dict[str, tuple[float, float]] = {}
        for metric, _ in t.outlier_metrics:
            ref = [float(v.metrics.get(metric, math.nan)) for v in members if v.base_decision != "fail"]
            ref = [x for x in ref if math.isfinite(x)]
            if len(ref) < t.min_group_size:
                continue
            med, scale = robust_location_scale(ref, min_relative_scale=t.min_relative_scale)
            if math.isfinite(scale) and scale > 0:
                stats[metric] = (med, scale)
        for vol in members:
            zs: dict[str, float] = {}
            flagged: list[tuple[float, str]] = []
            for metric, direction in t.outlier_metrics:
                x = float(vol.metrics.get(metric, math.nan))
                if metric not in stats or not math.isfinite(x):
                    continue
                med, scale = stats[metric]
                z = (x - med) / scale
                zs[metric] = z
                if _bad(z, direction) > t.outlier_z:
                    flagged.append((_bad(z, direction), f"{OUTLIER_PREFIX}{metric}_z{z:+.1f}"))
            score = max((max(_bad(zs[m], d), 0.0) for m, d in t.outlier_metrics if m in zs), default=None)
            outlier_reasons = tuple(code for _, code in sorted(flagged, key=lambda f: -f[0]))
            base = vol.base_decision
            if base == "fail":
                decision, reasons = "fail", vol.base_reasons
            else:
                decision = "review" if base == "review" or outlier_reasons else "pass"
                reasons = vol.base_reasons + outlier_reasons
            verdicts[vol.volume_id] = Verdict(decision, reasons, score, zs)
    return verdicts
