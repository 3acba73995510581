"""Named manifest queries for exporting a snapshot to other tools (BIDS derivatives).

Pseudonymised columns only: subject, study and series keys, scanner model, QC metrics and decisions.
Free-text DICOM fields (series description, institution) never leave through an export.
"""

from __future__ import annotations

from typing import Any

from warehouse.manifest import Manifest
from warehouse.queries import EFFECTIVE_DECISION

QC_EXPORT_COLUMNS: tuple[str, ...] = (
    "snr",
    "cnr",
    "brain_volume_ml",
    "fov_coverage",
    "similarity",
    "snr_wm",
    "cjv",
    "efc",
    "fber",
    "wm2max",
    "inu",
    "qi1",
    "mask_mni_dice",
    "outlier_score",
)
"""Numeric QC columns of `qc` that an export carries, in this order."""


def snapshot_export_rows(m: Manifest, snapshot_id: str) -> list[dict[str, Any]]:
    """Every volume of a snapshot with its files, pseudonyms, scanner and QC, grouped by subject/study.

    Raises:
        LookupError: no snapshot with that id, or it has no volumes.
    """
    qc_cols = ", ".join(f"q.{c}" for c in QC_EXPORT_COLUMNS)
    rows = m.query(
        f"""
        SELECT sv.volume_id, v.subject_id, v.study_id, v.series_key, v.label, v.registered_path, v.mask_path,
               v.manufacturer, v.model_name, s.field_strength, v.skullstrip_backend,
               q.decision AS auto_decision, r.rating, {EFFECTIVE_DECISION} AS decision, q.reasons, {qc_cols}
        FROM snapshot_volumes sv JOIN volumes v USING (volume_id) LEFT JOIN qc q USING (volume_id)
        LEFT JOIN ratings r USING (volume_id) LEFT JOIN series s ON s.series_key = v.series_key
        WHERE sv.snapshot_id = ?
        ORDER BY v.subject_id, v.study_id, v.label, sv.volume_id
        """,
        [snapshot_id],
    )
    if not rows:
        known = [
            r["snapshot_id"] for r in m.query("SELECT snapshot_id FROM snapshots ORDER BY created_at DESC LIMIT 5")
        ]
        raise LookupError(
            f"snapshot {snapshot_id!r} not found or empty; recent snapshots: {', '.join(known) or '(none)'} "
            "(`mrifoundry status` lists them all)"
        )
    return rows
