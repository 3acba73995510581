"""The class review queue on a real export: flagged series wait, reviewers' labels win and persist."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from imaging.classify import Classification, classify_series
from imaging.deid import Pseudonymizer
from imaging.dicom import ScanResult, scan_source
from tasks.context import open_warehouse
from tasks.record import record_scan
from tasks.review import (
    MAX_NOTE_CHARS,
    REVIEW_STATE,
    apply_overrides,
    curation_state,
    pending_reviews,
    review_label,
    set_review_label,
)
from warehouse.manifest import Manifest

KEY = bytes(range(32))


def _conflicting(scan: ScanResult) -> ScanResult:
    """The real Philips scan with the MPRAGE described as a T2: physics and keywords now disagree."""
    series = tuple(
        dataclasses.replace(s, header=dataclasses.replace(s.header, series_description="T2 sag"))
        if s.header.series_number == 1301
        else s
        for s in scan.series
    )
    return dataclasses.replace(scan, series=series)


@pytest.fixture(scope="module")
def conflicting_scan(philips_flat_gunzipped: Path) -> ScanResult:
    return _conflicting(scan_source(philips_flat_gunzipped))


@pytest.fixture()
def warehouse(
    philips_flat_gunzipped: Path, conflicting_scan: ScanResult, tmp_path: Path
) -> tuple[Manifest, str, ScanResult]:
    scan = conflicting_scan
    ctx = open_warehouse(tmp_path / "wh", run_id="run-1")
    record_scan(ctx, philips_flat_gunzipped, scan, Pseudonymizer(KEY))
    key = Pseudonymizer(KEY).series(next(s.series_uid for s in scan.series if s.header.series_number == 1301))
    return ctx.manifest, key, scan


def test_conflict_is_queued_and_a_reviewer_label_wins(warehouse: tuple[Manifest, str, ScanResult]) -> None:
    m, key, scan = warehouse
    (item,) = pending_reviews(m)  # only the conflicting series; the confident ones are not queued
    assert item.series_key == key and item.auto_label == "T1w" and item.series_number == 1301
    assert "physics says T1w" in item.explanation and "says T2w" in item.explanation
    auto = classify_series(next(s.header for s in scan.series if s.header.series_number == 1301))
    assert auto.needs_review and curation_state(auto) == (REVIEW_STATE, "needs_review")

    saved = set_review_label(m, key, "t1w", "dr. reviewer", "MPRAGE on inspection; description typo")
    assert saved.label == "T1w"
    assert pending_reviews(m) == []
    final = apply_overrides(m, key, auto)
    assert final.label == "T1w" and final.confidence == 1.0 and not final.needs_review
    assert "reviewer dr. reviewer" in final.explanation and "automatic: " + auto.explanation in final.explanation
    assert curation_state(final) == ("classified", None)
    # the series leaves the finished set so the next run re-records it under the reviewer's label
    assert m.scalar("SELECT state FROM series WHERE series_key = ?", [key]) == REVIEW_STATE


def test_reviewer_label_survives_a_rerun_and_a_new_handle(
    warehouse: tuple[Manifest, str, ScanResult], philips_flat_gunzipped: Path
) -> None:
    m, key, scan = warehouse
    set_review_label(m, key, "FLAIR", "r2")
    ctx = open_warehouse(m.root, run_id="run-2")
    record_scan(ctx, philips_flat_gunzipped, scan, Pseudonymizer(KEY))  # rerun rewrites classification rows
    again = Manifest(m.root)
    assert review_label(again, key).label == "FLAIR"  # type: ignore[union-attr]
    assert apply_overrides(again, key, classify_series(scan.series[0].header)).label == "FLAIR"
    set_review_label(again, key, "other", "r3", "actually a test scan")  # a later decision replaces it
    assert review_label(again, key).reviewer == "r3"  # type: ignore[union-attr]
    assert again.count("class_reviews") == 1


def test_no_review_label_leaves_the_classification_alone(warehouse: tuple[Manifest, str, ScanResult]) -> None:
    m, _, scan = warehouse
    other_key = Pseudonymizer(KEY).series(next(s.series_uid for s in scan.series if s.header.series_number == 1901))
    c = Classification("other", False, 0.95, "other because 'asl' in SeriesDescription", False)
    assert apply_overrides(m, other_key, c) is c
    assert curation_state(c) == ("skipped", "class_other")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"label": "T3w"}, ValueError, "unknown sequence class 'T3w'; use one of: T1w, T2w, FLAIR, other"),
        ({"reviewer": "  "}, ValueError, "reviewer is empty"),
        ({"note": "x" * (MAX_NOTE_CHARS + 1)}, ValueError, f"keep it under {MAX_NOTE_CHARS}"),
        ({"series_key": "ser-doesnotexist"}, LookupError, "no series 'ser-doesnotexist'"),
    ],
)
def test_invalid_review_input_is_refused(
    warehouse: tuple[Manifest, str, ScanResult], kwargs: dict, error: type, message: str
) -> None:
    m, key, _ = warehouse
    args = {"series_key": key, "label": "T1w", "reviewer": "r", "note": "", **kwargs}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        set_review_label(m, **args)
    assert m.count("class_reviews") == 0


def test_preloaded_overrides_give_the_same_answer(warehouse: tuple[Manifest, str, ScanResult]) -> None:
    from tasks.review import load_overrides

    m, key, scan = warehouse
    auto = classify_series(next(s.header for s in scan.series if s.header.series_number == 1301))
    assert load_overrides(m) == {}
    set_review_label(m, key, "T1w", "r")
    overrides = load_overrides(m)
    assert set(overrides) == {key}
    assert apply_overrides(m, key, auto, overrides) == apply_overrides(m, key, auto)
