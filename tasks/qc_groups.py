"""Robust group outliers: the population half of the QC decision (design.md §4).

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

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imaging.qc import QCThresholds
from warehouse.manifest import WRITE_LOCK, Manifest, now

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


def _metrics(raw: str | None) -> dict[str, float]:
    """metrics_json -> floats; JSON null (a NaN written by the QC step) becomes NaN."""
    if not raw:
        return {}
    out = {}
    for k, v in json.loads(raw).items():
        try:
            out[k] = float("nan") if v is None else float(v)
        except (TypeError, ValueError):
            continue
    return out


def load_volumes(manifest: Manifest) -> list[VolumeQC]:
    """Every volume with a QC row: its group, metrics and stored decision."""
    rows = manifest.query(
        """
        SELECT q.volume_id, q.decision, q.reasons, q.metrics_json, v.model_name, v.label
        FROM qc q JOIN volumes v USING (volume_id)
        ORDER BY q.volume_id
        """
    )
    return [
        VolumeQC(
            volume_id=r["volume_id"],
            group=(r["model_name"] or "", r["label"] or ""),
            metrics=_metrics(r["metrics_json"]),
            decision=r["decision"] or "pass",
            reasons=tuple(r["reasons"] or ()),
        )
        for r in rows
    ]


def _write(manifest: Manifest, updates: list[tuple[str, str, list[str], float | None, object]]) -> None:
    """One set-based UPDATE from an Arrow table (row-by-row executemany takes minutes at 100 k volumes)."""
    import pyarrow as pa

    ids, decisions, reasons, scores, when = (list(col) for col in zip(*updates, strict=True))
    changes = pa.table(
        {
            "volume_id": pa.array(ids, pa.string()),
            "decision": pa.array(decisions, pa.string()),
            "reasons": pa.array(reasons, pa.list_(pa.string())),
            "outlier_score": pa.array(scores, pa.float64()),
            "updated_at": pa.array(when, pa.timestamp("us")),
        }
    )
    with WRITE_LOCK, manifest.connect() as con:
        con.register("qc_group_changes", changes)
        con.execute(
            """
            UPDATE qc SET decision = c.decision, reasons = c.reasons, outlier_score = c.outlier_score,
                          updated_at = c.updated_at
            FROM qc_group_changes c WHERE qc.volume_id = c.volume_id
            """
        )
        con.unregister("qc_group_changes")


def apply_group_outliers(manifest: Manifest, thresholds: QCThresholds | None = None) -> int:
    """Score every volume against its (scanner model, sequence class) group and update the ``qc`` table.

    Writes ``decision``, ``reasons`` and ``outlier_score`` (and ``updated_at`` where any changed, so the
    dashboard's cache notices) in one transaction. Never touches "fail" decisions or the ``ratings``
    table. Run it after every volume's QC row is written and before shards are built, so a volume sent
    to review does not reach a shard. Safe to rerun.

    Args:
        manifest: the warehouse manifest (``Manifest.init()`` must have added the ``outlier_score`` column).
        thresholds: ``outlier_z``, ``min_group_size``, ``min_relative_scale``, ``outlier_metrics``.

    Returns:
        How many volumes are in review because of outliers alone (their hard rules said "pass").
    """
    volumes = load_volumes(manifest)
    verdicts = score_groups(volumes, thresholds)
    stored = {r["volume_id"]: r["outlier_score"] for r in manifest.query("SELECT volume_id, outlier_score FROM qc")}
    updates = []
    when = now()
    for vol in volumes:
        v = verdicts[vol.volume_id]
        old_score = stored.get(vol.volume_id)
        same_score = (old_score is None and v.outlier_score is None) or (
            old_score is not None and v.outlier_score is not None and math.isclose(old_score, v.outlier_score)
        )
        if v.decision == vol.decision and v.reasons == vol.reasons and same_score:
            continue
        updates.append((vol.volume_id, v.decision, list(v.reasons), v.outlier_score, when))
    if updates:
        _write(manifest, updates)
    return sum(1 for vol in volumes if vol.base_decision == "pass" and verdicts[vol.volume_id].decision == "review")
