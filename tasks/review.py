"""Human review of sequence classes: the queue, reviewers' labels, and how curation honours them.

The classifier flags a series (`Classification.needs_review`) when it is unsure (confidence below
`imaging.classify.REVIEW_BELOW`) or when the header physics and the description disagree. Those
series wait here for a person. A reviewer's label goes to the manifest table `class_reviews`, keyed
by the series pseudonym; reruns never overwrite it, and every place that classifies a series passes
the automatic result through `apply_overrides`, so the human label wins from then on.

Policy for flagged series without a review label (`curation_state`): they are *held*, not curated
with the automatic label. A wrong class costs more than a late one: a FLAIR curated as T2w is
registered to the wrong template and trains the model on a mislabeled volume, while a held series
only waits for one click in the dashboard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imaging.classify import LABELS, STRUCTURAL, Classification
from warehouse.class_review_queries import MAX_NOTE_CHARS as MAX_NOTE_CHARS  # re-exported for callers
from warehouse.class_review_queries import record_class_review
from warehouse.manifest import Manifest
from warehouse.queries import class_review, class_reviews, pending_class_reviews

REVIEW_STATE = "review"


@dataclass(frozen=True)
class ReviewItem:
    """A series waiting for a reviewer: where it is and what the classifier thought, and why."""

    series_key: str
    subject_id: str | None
    study_id: str | None
    series_number: int | None
    state: str | None
    auto_label: str
    confidence: float
    explanation: str


@dataclass(frozen=True)
class ReviewLabel:
    series_key: str
    label: str
    reviewer: str
    note: str
    updated_at: datetime


def pending_reviews(manifest: Manifest) -> list[ReviewItem]:
    """Flagged series that no reviewer has labelled yet, least confident first (the dashboard queue)."""
    fields = {f.name for f in dataclasses.fields(ReviewItem)}
    return [ReviewItem(**{k: v for k, v in row.items() if k in fields}) for row in pending_class_reviews(manifest)]


def _normalise_label(label: str) -> str:
    by_lower = {valid.lower(): valid for valid in LABELS}
    canonical = by_lower.get(str(label).strip().lower())
    if canonical is None:
        raise ValueError(f"unknown sequence class {label!r}; use one of: {', '.join(LABELS)}")
    return canonical


def set_review_label(manifest: Manifest, series_key: str, label: str, reviewer: str, note: str = "") -> ReviewLabel:
    """Record a reviewer's class for one series; it overrides the classifier from now on.

    The series is also taken out of the finished set (state "review") unless ingest rejected it, so
    the next curation run re-records it under the new label (curating it when the label is T1w/T2w/
    FLAIR, skipping it when "other").

    Args:
        manifest: the warehouse manifest.
        series_key: the series pseudonym ("ser-..."), as shown in the review queue.
        label: one of T1w, T2w, FLAIR, other (case-insensitive).
        reviewer: who decided (kept with the label for audit).
        note: optional free text, at most `MAX_NOTE_CHARS` characters.

    Raises:
        ValueError: the label, reviewer or note is invalid (the message says which and why).
        LookupError: no series with that key in this warehouse.
    """
    row = record_class_review(manifest, series_key, _normalise_label(label), reviewer, note)
    return ReviewLabel(**row)


def review_label(manifest: Manifest, series_key: str) -> ReviewLabel | None:
    row: dict[str, Any] | None = class_review(manifest, series_key)
    return ReviewLabel(**row) if row else None


def load_overrides(manifest: Manifest) -> dict[str, ReviewLabel]:
    """Every reviewer label by series key, read once (for a loop over many series)."""
    return {
        row["series_key"]: ReviewLabel(row["series_key"], row["label"], row["reviewer"], row["note"], row["updated_at"])
        for row in class_reviews(manifest)
    }


def apply_overrides(
    manifest: Manifest,
    series_key: str,
    classification: Classification,
    overrides: dict[str, ReviewLabel] | None = None,
) -> Classification:
    """The classification with a reviewer's label applied, if there is one; otherwise unchanged.

    The automatic explanation is kept after the reviewer's, so the dashboard can still show why the
    classifier thought otherwise.

    Args:
        overrides: `load_overrides(manifest)`, when classifying many series in a loop (one query
            instead of one per series); without it the manifest is asked for this series.
    """
    review = overrides.get(series_key) if overrides is not None else review_label(manifest, series_key)
    if review is None:
        return classification
    note = f" ({review.note})" if review.note else ""
    return Classification(
        label=review.label,
        contrast_enhanced=classification.contrast_enhanced,
        confidence=1.0,
        explanation=(
            f"{review.label} because reviewer {review.reviewer} set it{note}; automatic: {classification.explanation}"
        ),
        needs_review=False,
    )


def curation_state(classification: Classification) -> tuple[str, str | None]:
    """(series state, reason) the curation should record for a classified series.

    "classified" (goes on to conversion) for a confident structural class, "skipped"/"class_other"
    for other, and "review"/"needs_review" for a flagged series without a reviewer's label: held,
    and re-examined by every run until someone labels it (see the module notes).
    """
    if classification.needs_review:
        return REVIEW_STATE, "needs_review"
    if classification.label in STRUCTURAL:
        return "classified", None
    return "skipped", "class_other"
