"""The qc table row built from a volume's metrics, stored in a real manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging.qc import QC_METRIC_COLUMNS
from tasks.qc_rows import qc_row
from tests.imaging.test_qc import GOOD


def test_qc_row_fills_every_qc_column_and_nulls_nan(tmp_path: Path) -> None:
    from warehouse.manifest import Manifest
    from warehouse.schema import table

    metrics = {**GOOD, "snr": float("nan"), "qi1": 0.001, "inu": 0.12, "efc": 0.55, "extra": 3.0}
    row = qc_row("vol-1", metrics, "pass", [])
    assert set(row) == set(table("qc").column_names)
    assert row["snr"] is None and row["qi1"] == 0.001 and row["outlier_score"] is None
    assert '"snr": null' in row["metrics_json"] and '"extra": 3.0' in row["metrics_json"]
    assert set(QC_METRIC_COLUMNS) <= set(table("qc").column_names)
    m = Manifest(tmp_path).init()
    m.upsert("qc", [row, qc_row("vol-2", GOOD, "review", ["snr_below_10"])])
    stored = m.query("SELECT volume_id, decision, reasons, snr, inu FROM qc ORDER BY volume_id")
    assert stored[0] == {"volume_id": "vol-1", "decision": "pass", "reasons": [], "snr": None, "inu": 0.12}
    assert stored[1]["reasons"] == ["snr_below_10"]
    with pytest.raises(ValueError, match="'ok' is not one of pass, review, fail"):
        qc_row("vol-3", GOOD, "ok", [])
