"""Named queries of the scaled-out curation: T1w reference masks for resume, the failures listing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from warehouse.manifest import Manifest

FAILURE_KINDS = ("file", "series", "qc")
"""What `failures` lists: unreadable/duplicate files, series rejected or failed in a stage, and
volumes whose effective QC decision is fail."""


def curated_t1w_masks(m: Manifest, study_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The recorded T1w volumes (series state curated) of these studies, with the series' SOP hash."""
    if not study_ids:
        return []
    return m.query(
        """
        SELECT v.study_id, v.series_key, v.volume_id, v.mask_path, v.skullstrip_backend, s.sop_hash
        FROM volumes v JOIN series s USING (series_key)
        WHERE v.label = 'T1w' AND s.state = 'curated' AND list_contains(?, v.study_id)
        ORDER BY v.study_id, v.series_key
        """,
        [list(study_ids)],
    )


def failures(m: Manifest, reason: str | None = None) -> list[dict[str, Any]]:
    """Every rejected file, rejected/failed series and QC-failed volume, with its reason and a path.

    Paths carry pseudonyms only: a file's `relpath` is pseudonymised at ingest (tasks.record), a
    series is named by `<subject>/<study>/<series>` keys. `reason` keeps the rows with that reason
    (for a QC failure: one of its reasons).
    """
    rows = m.query(
        """
        SELECT 'file' AS kind, reason, relpath AS path, detail, NULL AS label, run_id, updated_at
        FROM rejected_files
        UNION ALL
        SELECT 'series', s.reason, s.subject_id || '/' || s.study_id || '/' || s.series_key, s.detail,
               c.label, s.run_id, s.updated_at
        FROM series s LEFT JOIN classification c USING (series_key)
        WHERE s.state IN ('rejected', 'failed')
        UNION ALL
        SELECT 'qc', array_to_string(q.reasons, ','), v.subject_id || '/' || v.study_id || '/' || v.series_key,
               'volume ' || v.volume_id, v.label, s.run_id, q.updated_at
        FROM volumes v JOIN qc q USING (volume_id) JOIN series s USING (series_key)
        LEFT JOIN ratings r USING (volume_id)
        WHERE coalesce(r.rating, q.decision) = 'fail' AND s.state = 'curated'
        ORDER BY kind, reason, path
        """
    )
    if reason is None:
        return rows
    return [r for r in rows if reason in (r["reason"] or "").split(",")]
