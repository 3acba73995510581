"""Benchmark cohort records: targets per subject, fixed splits, which snapshot holds what.

Every SQL statement the evaluation needs about subjects lives here, as a named typed function.
"""

from __future__ import annotations

from typing import Any

from warehouse.manifest import Manifest

SCHEMES: tuple[str, ...] = ("random", "held_out_site")
SPLITS: tuple[str, ...] = ("train", "val", "test", "pool", "unused")


def latest_cohort(m: Manifest) -> dict[str, Any] | None:
    """The most recently generated benchmark cohort, or None for a warehouse curated from DICOM."""
    rows = m.query("SELECT * FROM cohorts ORDER BY created_at DESC, cohort_id LIMIT 1")
    return rows[0] if rows else None


def cohort_for_snapshot(m: Manifest, snapshot_id: str) -> dict[str, Any] | None:
    """The cohort whose labelled set or pool is this snapshot (how a checkpoint finds its cohort)."""
    rows = m.query(
        "SELECT * FROM cohorts WHERE labelled_snapshot_id = ? OR pool_snapshot_id = ? ORDER BY created_at DESC LIMIT 1",
        [snapshot_id, snapshot_id],
    )
    return rows[0] if rows else None


def subject_targets(m: Manifest) -> dict[str, dict[str, Any]]:
    """Every label column per subject (binary, continuous, survival); NULLs stay None."""
    rows = m.query(
        "SELECT subject_id, lesion, enlarged_ventricles, age, lesion_count, lesion_load_ml, survival_time, event "
        "FROM labels ORDER BY subject_id"
    )
    return {r.pop("subject_id"): r for r in rows}


def splits(m: Manifest, scheme: str) -> dict[str, str]:
    """subject_id -> split for one scheme ('random' or 'held_out_site'); empty when none is stored."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    rows = m.query("SELECT subject_id, split FROM subject_splits WHERE scheme = ?", [scheme])
    return {r["subject_id"]: r["split"] for r in rows}


def split_counts(m: Manifest) -> list[dict[str, Any]]:
    """Subjects per (scheme, split), for the report and the CLI summary."""
    return m.query(
        "SELECT scheme, split, count(*) AS n_subjects FROM subject_splits GROUP BY scheme, split ORDER BY scheme, split"
    )


def volume_sites(m: Manifest, volume_ids: list[str]) -> dict[str, str]:
    """volume_id -> site (stored as the volume's manufacturer) for the given volumes."""
    if not volume_ids:
        return {}
    rows = m.query(
        "SELECT volume_id, manufacturer FROM volumes WHERE list_contains(?, volume_id)",
        [list(volume_ids)],
    )
    return {r["volume_id"]: r["manufacturer"] for r in rows}


def checkpoint_by_id(m: Manifest, checkpoint_id: str) -> dict[str, Any] | None:
    rows = m.query("SELECT * FROM checkpoints WHERE checkpoint_id = ?", [checkpoint_id])
    return rows[0] if rows else None


def evaluation_rows(m: Manifest, run_id: str) -> list[dict[str, Any]]:
    """One evaluation run's rows (results and paired differences), in a stable order."""
    return m.query(
        "SELECT task, encoder, metric, value, ci_low, ci_high, n_subjects, n_volumes, note FROM evaluations "
        "WHERE run_id = ? ORDER BY task, encoder",
        [run_id],
    )


def cohort_by_id(m: Manifest, cohort_id: str) -> dict[str, Any] | None:
    rows = m.query("SELECT * FROM cohorts WHERE cohort_id = ?", [cohort_id])
    return rows[0] if rows else None


def snapshot_size(m: Manifest, snapshot_id: str | None) -> int:
    """Members of a snapshot (0 for None or an unknown id)."""
    if snapshot_id is None:
        return 0
    return int(m.scalar("SELECT count(*) FROM snapshot_volumes WHERE snapshot_id = ?", [snapshot_id]) or 0)
