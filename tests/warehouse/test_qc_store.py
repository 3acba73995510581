"""Named QC / series / run queries that moved out of tasks/: each reads or writes exactly what it says."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from warehouse.manifest import Manifest, now
from warehouse.qc_store import (
    QCVerdictUpdate,
    qc_group_rows,
    qc_outlier_scores,
    qc_report_rows,
    update_qc_verdicts,
)
from warehouse.queries import set_series_state
from warehouse.runs import latest_completed_summary


@pytest.fixture()
def manifest(tmp_path) -> Manifest:
    m = Manifest(tmp_path).init()
    m.upsert(
        "volumes",
        [
            {"volume_id": "v1", "label": "T2w", "model_name": "Prisma"},
            {"volume_id": "v2", "label": "T1w", "model_name": None},
        ],
    )
    m.upsert(
        "qc",
        [
            {"volume_id": "v1", "decision": "pass", "reasons": [], "snr": 30.0, "metrics_json": "{}"},
            {"volume_id": "v2", "decision": "review", "reasons": ["snr_below_10"], "snr": 5.0},
        ],
    )
    return m


def test_update_qc_verdicts_writes_only_the_named_volumes(manifest: Manifest) -> None:
    when = datetime(2026, 1, 2, 3, 4, 5)
    n = update_qc_verdicts(
        manifest,
        [
            QCVerdictUpdate("v1", "review", ("outlier_snr_z-4.1",), 4.1, when),
            QCVerdictUpdate("v-missing", "fail", (), None, when),  # no qc row: ignored, not inserted
        ],
    )
    assert n == 2
    rows = {r["volume_id"]: r for r in qc_group_rows(manifest)}
    assert set(rows) == {"v1", "v2"}
    assert rows["v1"]["decision"] == "review" and list(rows["v1"]["reasons"]) == ["outlier_snr_z-4.1"]
    assert rows["v2"]["decision"] == "review" and list(rows["v2"]["reasons"]) == ["snr_below_10"]
    assert qc_outlier_scores(manifest) == {"v1": 4.1, "v2": None}
    assert manifest.scalar("SELECT updated_at FROM qc WHERE volume_id = 'v1'") == when
    assert update_qc_verdicts(manifest, []) == 0


def test_qc_group_rows_carry_the_group_columns(manifest: Manifest) -> None:
    rows = qc_group_rows(manifest)
    assert [r["volume_id"] for r in rows] == ["v1", "v2"]
    assert (rows[0]["model_name"], rows[0]["label"]) == ("Prisma", "T2w")
    assert rows[1]["model_name"] is None


def test_qc_report_rows_are_ordered_by_decision_then_class(manifest: Manifest) -> None:
    rows = qc_report_rows(manifest)
    assert [(r["decision"], r["label"], r["volume_id"]) for r in rows] == [
        ("pass", "T2w", "v1"),
        ("review", "T1w", "v2"),
    ]
    assert rows[1]["reasons"] == "snr_below_10" and rows[1]["snr"] == 5.0


def test_set_series_state_changes_only_the_state_columns(manifest: Manifest) -> None:
    manifest.upsert(
        "series",
        [{"series_key": "s1", "subject_id": "sub-1", "state": "pending", "sop_hash": "h", "updated_at": now()}],
    )
    when = datetime(2026, 1, 2)
    set_series_state(manifest, "s1", state="failed", reason="register", detail="no overlap", run_id="r9", when=when)
    row = manifest.query("SELECT * FROM series WHERE series_key = 's1'")[0]
    assert (row["state"], row["reason"], row["detail"], row["run_id"], row["updated_at"]) == (
        "failed",
        "register",
        "no overlap",
        "r9",
        when,
    )
    assert (row["subject_id"], row["sop_hash"]) == ("sub-1", "h")


def test_latest_completed_summary_skips_failed_and_other_flows(manifest: Manifest) -> None:
    assert latest_completed_summary(manifest, "pretrain") is None
    base = {"started_at": datetime(2026, 1, 1)}
    manifest.upsert(
        "runs",
        [
            {**base, "run_id": "a", "flow": "pretrain", "status": "completed",
             "finished_at": datetime(2026, 1, 2), "summary_json": json.dumps({"losses": [1.0, 0.5]})},
            {**base, "run_id": "b", "flow": "pretrain", "status": "failed",
             "finished_at": datetime(2026, 1, 3), "summary_json": json.dumps({"losses": [9.0]})},
            {**base, "run_id": "c", "flow": "curate", "status": "completed",
             "finished_at": datetime(2026, 1, 4), "summary_json": json.dumps({"losses": [7.0]})},
        ],
    )  # fmt: skip
    assert latest_completed_summary(manifest, "pretrain") == {"losses": [1.0, 0.5]}
