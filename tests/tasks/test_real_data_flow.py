"""The curation flow end to end on the real gzipped Philips flat folder, as it ships (slow: registration
and skull stripping run for real)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging.deid import find_phi, phi_values
from warehouse.manifest import Manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    """A temporary Prefect API (SQLite) for this module's flow run."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_curate_gzipped_philips_flat_folder(dicom_data: Path, tmp_path: Path, prefect_api: None) -> None:
    from flows.curate import curate_flow

    source = dicom_data / "philips_flat_folder"
    out = curate_flow(str(source), str(tmp_path / "wh"))
    m = Manifest(tmp_path / "wh")
    rows = {
        r["series_number"]: r
        for r in m.query(
            "SELECT s.series_number, s.state, s.reason, c.label, c.needs_review FROM series s "
            "LEFT JOIN classification c USING (series_key)"
        )
    }
    assert set(rows) == {1301, 1901, 1903, 2001}
    assert (rows[1301]["label"], rows[1301]["state"]) == ("T1w", "curated")  # MPRAGE -> curated T1w volume
    for asl_or_fieldmap in (1901, 1903, 2001):
        r = rows[asl_or_fieldmap]
        assert (r["label"], r["state"], r["reason"]) == ("other", "skipped", "class_other"), r
    vols = m.query("SELECT v.label, q.decision FROM volumes v JOIN qc q USING (volume_id)")
    assert vols == [{"label": "T1w", "decision": "pass"}]
    assert out["snapshot_volumes"] == 1
    # and nothing identifying from the inputs anywhere in the warehouse
    from tests.tasks.test_real_data_deid import warehouse_outputs

    values = phi_values(sorted(source.iterdir()))
    assert values["PatientName"] and values["PatientBirthDate"]
    assert find_phi(values, warehouse_outputs(tmp_path / "wh")) == []
