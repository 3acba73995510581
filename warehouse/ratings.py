"""Human QC ratings: the vocabulary, the writes and the export (pseudonyms only).

A rating overrides the automatic QC decision of a volume; the dashboard writes them and the shard
queries honour them (`warehouse.queries.EFFECTIVE_DECISION`). Split from `review_queries` (the
dashboard's read side) so each file holds one concern.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from warehouse.manifest import Manifest, now

DECISIONS: tuple[str, ...] = ("pass", "fail", "review")
"""Automatic decisions and human ratings share one vocabulary ("review" = review later)."""

ARTIFACT_TAGS: tuple[str, ...] = (
    "motion",
    "ghosting",
    "wrap-around",
    "susceptibility",
    "inhomogeneity",
    "noise",
    "truncated-fov",
    "bad-skullstrip",
    "bad-registration",
    "wrong-class",
    "other",
)
"""Closed tag vocabulary, so exported ratings can be counted per artifact without cleaning."""

MAX_NOTE = 2000
MAX_RATER = 64
_RATER_RE = re.compile(r"^[\w .@+-]{1,64}$")


def upsert_rating(
    m: Manifest,
    volume_id: str,
    rating: str,
    rater: str,
    tags: Sequence[str] = (),
    note: str | None = None,
) -> dict[str, Any]:
    """Store (or replace) the human rating of a volume; it overrides the automatic decision.

    Raises:
        ValueError: a rating outside DECISIONS, an unknown tag, a bad rater name or an over-long note.
        LookupError: the volume is not in the manifest (a typo, or the manifest of another warehouse).
    """
    if rating not in DECISIONS:
        raise ValueError(f"rating {rating!r} is not one of {', '.join(DECISIONS)}")
    if not _RATER_RE.match(rater or ""):
        raise ValueError(
            f"rater {rater!r} must be 1-{MAX_RATER} letters, digits, spaces or . @ + - _ (a name, not an id)"
        )
    bad = sorted(set(tags) - set(ARTIFACT_TAGS))
    if bad:
        raise ValueError(f"unknown artifact tag(s) {bad}; valid tags: {', '.join(ARTIFACT_TAGS)}")
    if note is not None and len(note) > MAX_NOTE:
        raise ValueError(f"note has {len(note)} characters; shorten it to at most {MAX_NOTE}")
    if not m.scalar("SELECT count(*) FROM volumes WHERE volume_id = ?", [volume_id]):
        raise LookupError(f"volume {volume_id!r} is not in the manifest at {m.path}")
    row = {
        "volume_id": volume_id,
        "rating": rating,
        "rater": rater,
        "tags": sorted(set(tags), key=ARTIFACT_TAGS.index),
        "note": (note or "").strip() or None,
        "updated_at": now(),
    }
    m.upsert("ratings", [row])
    return row


def clear_rating(m: Manifest, volume_id: str) -> bool:
    """Remove a volume's rating so the automatic decision applies again; True when one existed."""
    existed = bool(m.scalar("SELECT count(*) FROM ratings WHERE volume_id = ?", [volume_id]))
    if existed:
        m.execute("DELETE FROM ratings WHERE volume_id = ?", [volume_id])
    return existed


EXPORT_COLUMNS: tuple[str, ...] = (
    "volume_id",
    "subject_id",
    "label",
    "model_name",
    "auto_decision",
    "rating",
    "rater",
    "tags",
    "note",
    "rated_at",
)


def export_ratings(m: Manifest) -> list[dict[str, Any]]:
    """All human ratings with the automatic decision they override, oldest first (pseudonyms only)."""
    return m.query(
        """
        SELECT r.volume_id, v.subject_id, v.label, v.model_name, q.decision AS auto_decision, r.rating,
               r.rater, coalesce(r.tags, []) AS tags, r.note, r.updated_at AS rated_at
        FROM ratings r LEFT JOIN volumes v USING (volume_id) LEFT JOIN qc q USING (volume_id)
        ORDER BY r.updated_at, r.volume_id
        """
    )
