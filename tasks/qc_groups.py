"""The group-outlier step against the warehouse: load every volume's QC row, score, write what changed.

The scoring itself is pure and lives in ``imaging.qc.groups`` (docs/architecture.md); the SQL lives in
``warehouse.qc_store``. This module only turns stored rows into ``VolumeQC`` and verdicts back into rows.
"""

from __future__ import annotations

import json
import math

from imaging.qc import QCThresholds, VolumeQC, score_groups
from warehouse.manifest import Manifest, now
from warehouse.qc_store import QCVerdictUpdate, qc_group_rows, qc_outlier_scores, update_qc_verdicts


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
    return [
        VolumeQC(
            volume_id=r["volume_id"],
            group=(r["model_name"] or "", r["label"] or ""),
            metrics=_metrics(r["metrics_json"]),
            decision=r["decision"] or "pass",
            reasons=tuple(r["reasons"] or ()),
        )
        for r in qc_group_rows(manifest)
    ]


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
    stored = qc_outlier_scores(manifest)
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
        updates.append(QCVerdictUpdate(vol.volume_id, v.decision, v.reasons, v.outlier_score, when))
    update_qc_verdicts(manifest, updates)
    return sum(1 for vol in volumes if vol.base_decision == "pass" and verdicts[vol.volume_id].decision == "review")
