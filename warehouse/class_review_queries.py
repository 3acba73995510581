"""Named manifest queries and writes for sequence-class review (held series and reviewers' labels).

Shared by `tasks.review` (Python and the `review` CLI) and the dashboard's class-review view, which
may not import tasks: both record a label through `record_class_review`, so a label set from either
place has the same effect (it wins over the classifier and reopens the series for the next run).

Only pseudonymised header facts are returned: no series description, no institution, no dates
other than the shifted study date. The classifier's explanation names the evidence it used.
"""

from __future__ import annotations

from typing import Any

from warehouse.manifest import Manifest, now
from warehouse.queries import reopen_series_for_review, series_exists

MAX_NOTE_CHARS = 2000
MAX_REVIEWER_CHARS = 64

_FACTS = """
    c.series_key, s.subject_id, s.study_id, s.series_number, s.state, s.reason, s.modality, s.manufacturer,
    s.model_name, s.field_strength, s.n_instances, s.study_date_shifted AS study_date,
    c.label AS auto_label, c.contrast_enhanced, c.confidence, c.explanation, c.needs_review,
    r.label AS review_label, r.reviewer, r.note AS review_note, r.updated_at AS reviewed_at
"""


def record_class_review(
    m: Manifest, series_key: str, label: str, reviewer: str, note: str = "", *, run_id: str = "review"
) -> dict[str, Any]:
    """Store a reviewer's class for one series and take the series out of the finished set.

    `label` must already be canonical (one of the classifier's labels); callers normalise it, since
    the vocabulary belongs to the classifier. The series is set to state "review" unless ingest
    rejected it, so the next curation run re-records it under the new label.

    Returns:
        The stored row: series_key, label, reviewer, note, updated_at.

    Raises:
        ValueError: empty or over-long reviewer, over-long note.
        LookupError: no series with that key in this warehouse.
    """
    reviewer = (reviewer or "").strip()
    if not reviewer:
        raise ValueError("reviewer is empty; pass who made the decision (kept with the label for audit)")
    if len(reviewer) > MAX_REVIEWER_CHARS:
        raise ValueError(f"reviewer has {len(reviewer)} characters; keep it under {MAX_REVIEWER_CHARS}")
    note = (note or "").strip()
    if len(note) > MAX_NOTE_CHARS:
        raise ValueError(f"note has {len(note)} characters; keep it under {MAX_NOTE_CHARS}")
    if not series_key or not series_exists(m, series_key):
        raise LookupError(
            f"no series {series_key!r} in {m.path}; take the key from the review queue "
            f"(tasks.review.pending_reviews, `mrifoundry review list` or the dashboard)"
        )
    row = {"series_key": series_key, "label": label, "reviewer": reviewer, "note": note, "updated_at": now()}
    m.upsert("class_reviews", [row])
    reopen_series_for_review(m, series_key, run_id=run_id, when=row["updated_at"])
    return row


def held_series(m: Manifest, limit: int = 500) -> list[dict[str, Any]]:
    """Flagged series without a reviewer's label, least confident first, with their header facts."""
    return m.query(
        f"""
        SELECT {_FACTS}
        FROM classification c LEFT JOIN series s USING (series_key) LEFT JOIN class_reviews r USING (series_key)
        WHERE c.needs_review AND r.series_key IS NULL
        ORDER BY c.confidence, c.series_key
        LIMIT ?
        """,
        [limit],
    )


def count_held_series(m: Manifest) -> int:
    return int(
        m.scalar(
            "SELECT count(*) FROM classification c LEFT JOIN class_reviews r USING (series_key) "
            "WHERE c.needs_review AND r.series_key IS NULL"
        )
        or 0
    )


def class_review_item(m: Manifest, series_key: str) -> dict[str, Any] | None:
    """Header facts, classification and any reviewer label of one series, plus the warehouse-relative
    path of its converted image when one exists (a curated volume's native image), else None."""
    rows = m.query(
        f"""
        SELECT {_FACTS}, (SELECT v.native_path FROM volumes v WHERE v.series_key = c.series_key
                          ORDER BY v.updated_at DESC LIMIT 1) AS native_path
        FROM classification c LEFT JOIN series s USING (series_key) LEFT JOIN class_reviews r USING (series_key)
        WHERE c.series_key = ?
        """,
        [series_key],
    )
    return rows[0] if rows else None
