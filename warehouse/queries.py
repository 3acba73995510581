"""Named manifest queries (bound parameters only) used by tasks, the CLI and reports."""

from __future__ import annotations

from typing import Any

from warehouse.manifest import Manifest

# Effective QC decision: a human rating wins over the automatic decision.
EFFECTIVE_DECISION = "coalesce(r.rating, q.decision)"


def done_series(m: Manifest, pipeline_version: str) -> dict[str, str]:
    """series_key -> sop_hash for series already finished by this pipeline version."""
    rows = m.query(
        "SELECT series_key, sop_hash FROM series WHERE pipeline_version = ? "
        "AND state IN ('rejected', 'curated', 'failed', 'skipped')",
        [pipeline_version],
    )
    return {r["series_key"]: r["sop_hash"] for r in rows}


def volumes_to_shard(m: Manifest) -> list[dict[str, Any]]:
    """Passing (or human-approved) volumes that are not in any shard yet, in a stable order."""
    return m.query(
        f"""
        SELECT v.volume_id, v.subject_id, v.label, v.registered_path, v.mask_path
        FROM volumes v JOIN qc q USING (volume_id) LEFT JOIN ratings r USING (volume_id)
        LEFT JOIN shard_volumes s USING (volume_id)
        WHERE {EFFECTIVE_DECISION} = 'pass' AND s.volume_id IS NULL
        ORDER BY v.volume_id
        """
    )


def sharded_passing_volumes(m: Manifest) -> list[str]:
    """Volumes in shards whose effective decision is still pass (a later 'fail' rating drops them)."""
    rows = m.query(
        f"""
        SELECT s.volume_id FROM shard_volumes s JOIN qc q USING (volume_id)
        LEFT JOIN ratings r USING (volume_id)
        WHERE {EFFECTIVE_DECISION} = 'pass' ORDER BY s.volume_id
        """
    )
    return [r["volume_id"] for r in rows]


def latest_snapshot(m: Manifest) -> str | None:
    return m.scalar("SELECT snapshot_id FROM snapshots ORDER BY created_at DESC, snapshot_id LIMIT 1")


def snapshot_members(m: Manifest, snapshot_id: str) -> list[dict[str, Any]]:
    """Where each volume of a snapshot lives, with its subject and class, in a stable order."""
    rows = m.query(
        """
        SELECT sv.volume_id, v.subject_id, v.label, sh.path AS shard_path, s.batch_index
        FROM snapshot_volumes sv JOIN shard_volumes s USING (volume_id)
        JOIN shards sh USING (shard_id) JOIN volumes v USING (volume_id)
        WHERE sv.snapshot_id = ? ORDER BY sv.volume_id
        """,
        [snapshot_id],
    )
    if not rows:
        raise LookupError(f"snapshot {snapshot_id!r} not found or empty; `mrifoundry status` lists snapshots")
    return rows


def latest_checkpoint(m: Manifest) -> dict[str, Any] | None:
    rows = m.query("SELECT * FROM checkpoints ORDER BY created_at DESC LIMIT 1")
    return rows[0] if rows else None


def labels(m: Manifest) -> dict[str, dict[str, int]]:
    rows = m.query("SELECT subject_id, lesion, enlarged_ventricles FROM labels")
    return {r["subject_id"]: {"lesion": r["lesion"], "enlarged_ventricles": r["enlarged_ventricles"]} for r in rows}


def status(m: Manifest) -> dict[str, Any]:
    """Everything `mrifoundry status` shows, as plain data."""
    if not m.path.exists():
        raise FileNotFoundError(f"no manifest at {m.path}; run `mrifoundry curate SOURCE --warehouse {m.root}` first")
    return {
        "series_by_state": m.query(
            "SELECT state, coalesce(reason, '') AS reason, count(*) AS n FROM series "
            "GROUP BY ALL ORDER BY state, reason"
        ),
        "series_by_class": m.query(
            "SELECT label, count(*) AS n, sum(CASE WHEN needs_review THEN 1 ELSE 0 END) AS needs_review "
            "FROM classification GROUP BY label ORDER BY label"
        ),
        "rejected_files": m.query("SELECT reason, count(*) AS n FROM rejected_files GROUP BY reason ORDER BY reason"),
        "volumes_by_decision": m.query(
            f"""
            SELECT v.label, {EFFECTIVE_DECISION} AS decision, count(*) AS n
            FROM volumes v JOIN qc q USING (volume_id) LEFT JOIN ratings r USING (volume_id)
            GROUP BY ALL ORDER BY v.label, decision
            """
        ),
        "qc_reasons": m.query(
            "SELECT unnest(reasons) AS reason, count(*) AS n FROM qc GROUP BY reason ORDER BY n DESC, reason"
        ),
        "shards": m.scalar("SELECT count(*) FROM shards"),
        "snapshots": m.query("SELECT snapshot_id, n_volumes, created_at FROM snapshots ORDER BY created_at"),
        "runs": m.query(
            "SELECT run_id, flow, status, started_at, finished_at, error FROM runs ORDER BY started_at DESC LIMIT 10"
        ),
        "latest_checkpoint": latest_checkpoint(m),
        "evaluations": m.query(
            "SELECT task, encoder, metric, value, ci_low, ci_high, n_subjects, n_volumes FROM evaluations "
            "WHERE run_id = (SELECT run_id FROM evaluations ORDER BY created_at DESC LIMIT 1) ORDER BY encoder"
        ),
    }


# --- Sequence-class review queue (tasks.review) ---------------------------------------------------


def pending_class_reviews(m: Manifest) -> list[dict[str, Any]]:
    """Series whose automatic class needs a human and that no reviewer has labelled yet, least sure first.

    Pseudonymised columns only (like the QC dashboard's queries): the classifier's explanation names
    the evidence, the free-text SeriesDescription itself stays out.
    """
    return m.query(
        """
        SELECT c.series_key, s.subject_id, s.study_id, s.series_number, s.state,
               c.label AS auto_label, c.confidence, c.explanation, c.updated_at
        FROM classification c LEFT JOIN series s USING (series_key)
        LEFT JOIN class_reviews r USING (series_key)
        WHERE c.needs_review AND r.series_key IS NULL
        ORDER BY c.confidence, c.series_key
        """
    )


def class_review(m: Manifest, series_key: str) -> dict[str, Any] | None:
    """The reviewer's label of one series, or None."""
    rows = m.query(
        "SELECT series_key, label, reviewer, note, updated_at FROM class_reviews WHERE series_key = ?", [series_key]
    )
    return rows[0] if rows else None


def class_reviews(m: Manifest) -> list[dict[str, Any]]:
    """Every reviewer label with the automatic one beside it, newest first."""
    return m.query(
        """
        SELECT r.series_key, r.label, c.label AS auto_label, r.reviewer, r.note, r.updated_at
        FROM class_reviews r LEFT JOIN classification c USING (series_key)
        ORDER BY r.updated_at DESC, r.series_key
        """
    )


def series_exists(m: Manifest, series_key: str) -> bool:
    return bool(m.scalar("SELECT count(*) FROM series WHERE series_key = ?", [series_key]))


def reopen_series_for_review(m: Manifest, series_key: str, run_id: str, when: Any) -> None:
    """Take a finished series out of the done set so the next curation run applies its new label.

    `done_series` only skips final states; 'review' is not one, so the next `record_scan` re-classifies
    the series and honours the reviewer's label. Rejected series stay rejected: ingest, not the
    classifier, refused them.
    """
    m.execute(
        "UPDATE series SET state = 'review', reason = 'review_label', run_id = ?, updated_at = ? "
        "WHERE series_key = ? AND state <> 'rejected'",
        [run_id, when, series_key],
    )


# --- Series state and run summaries (tasks.record, tasks.report) ------------------------------------


def set_series_state(
    m: Manifest, series_key: str, *, state: str, reason: str | None, detail: str, run_id: str, when: Any
) -> None:
    """Move a series to its final state (curated / failed) without touching its other columns."""
    m.execute(
        "UPDATE series SET state = ?, reason = ?, detail = ?, run_id = ?, updated_at = ? WHERE series_key = ?",
        [state, reason, detail, run_id, when, series_key],
    )
