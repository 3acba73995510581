"""Reads and writes of the ``qc`` table beyond the per-volume upsert: the group-outlier step and reports.

The group step rewrites the verdicts of a whole warehouse at once, so its write is one set-based UPDATE
from an Arrow table rather than one statement per volume (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from warehouse.manifest import WRITE_LOCK, Manifest


@dataclass(frozen=True)
class QCVerdictUpdate:
    """The new automatic verdict of one volume, as the group-outlier step computed it.

    Attributes:
        volume_id: the volume whose ``qc`` row changes.
        decision: "pass", "review" or "fail".
        reasons: reason codes, in the order the dashboard shows them.
        outlier_score: largest bad-direction robust z in its group; None when none was scored.
        updated_at: when the verdict changed (the dashboard's cache key).
    """

    volume_id: str
    decision: str
    reasons: tuple[str, ...]
    outlier_score: float | None
    updated_at: datetime


def qc_group_rows(m: Manifest) -> list[dict[str, Any]]:
    """Every volume with a QC row: id, stored decision, reasons, metrics_json, scanner model and class."""
    return m.query(
        """
        SELECT q.volume_id, q.decision, q.reasons, q.metrics_json, v.model_name, v.label
        FROM qc q JOIN volumes v USING (volume_id)
        ORDER BY q.volume_id
        """
    )


def qc_outlier_scores(m: Manifest) -> dict[str, float | None]:
    """volume_id -> stored ``outlier_score`` (None where the group step scored nothing yet)."""
    return {r["volume_id"]: r["outlier_score"] for r in m.query("SELECT volume_id, outlier_score FROM qc")}


def update_qc_verdicts(m: Manifest, updates: Sequence[QCVerdictUpdate]) -> int:
    """Write decision, reasons, outlier_score and updated_at of many volumes in one UPDATE.

    Row-by-row executemany takes minutes at 100 k volumes; a join against a registered Arrow table takes
    well under a second. Volumes without a ``qc`` row are ignored. Returns ``len(updates)``.
    """
    if not updates:
        return 0
    import pyarrow as pa

    changes = pa.table(
        {
            "volume_id": pa.array([u.volume_id for u in updates], pa.string()),
            "decision": pa.array([u.decision for u in updates], pa.string()),
            "reasons": pa.array([list(u.reasons) for u in updates], pa.list_(pa.string())),
            "outlier_score": pa.array([u.outlier_score for u in updates], pa.float64()),
            "updated_at": pa.array([u.updated_at for u in updates], pa.timestamp("us")),
        }
    )
    with WRITE_LOCK, m.connect() as con:
        con.register("qc_group_changes", changes)
        con.execute(
            """
            UPDATE qc SET decision = c.decision, reasons = c.reasons, outlier_score = c.outlier_score,
                          updated_at = c.updated_at
            FROM qc_group_changes c WHERE qc.volume_id = c.volume_id
            """
        )
        con.unregister("qc_group_changes")
    return len(updates)


def qc_report_rows(m: Manifest) -> list[dict[str, Any]]:
    """The run report's QC table: one row per volume with its class, decision, reasons and key metrics.

    Ordered by decision, class and id so the report reads the same on every run.
    """
    return m.query(
        "SELECT v.volume_id, v.label, q.decision, array_to_string(q.reasons, ', ') AS reasons, q.snr, q.cnr, "
        "q.brain_volume_ml, q.similarity, q.fov_coverage FROM volumes v JOIN qc q USING (volume_id) "
        "ORDER BY q.decision, v.label, v.volume_id"
    )
