"""`curate` on a real export: the Philips flat folder (several series in one folder, gunzipped)."""

from __future__ import annotations

import gzip

import pytest

from tests.conftest import SHARED_DATA
from warehouse.manifest import Manifest

SHARED = SHARED_DATA


@pytest.fixture(scope="module")
def philips_source(tmp_path_factory):
    src = SHARED / "dicom" / "philips_flat_folder"
    out = tmp_path_factory.mktemp("philips")
    for f in sorted(src.glob("*.dcm.gz")):
        (out / f.name[: -len(".gz")]).write_bytes(gzip.decompress(f.read_bytes()))
    assert len(list(out.iterdir())) > 600
    return out


def test_curate_real_philips_export(philips_source, tmp_path, prefect_harness):
    from flows.curate import curate_flow

    out = curate_flow(str(philips_source), str(tmp_path / "wh"))
    m = Manifest(tmp_path / "wh")
    rows = m.query(
        "SELECT s.series_description AS d, s.state, c.label FROM series s "
        "LEFT JOIN classification c USING (series_key) ORDER BY s.series_number"
    )
    mprage = [r for r in rows if "MPRAGE" in (r["d"] or "")]
    assert len(mprage) == 1 and mprage[0]["label"] == "T1w" and mprage[0]["state"] == "curated"
    others = [r for r in rows if r not in mprage]
    assert others and all(r["label"] == "other" and r["state"] == "skipped" for r in others)
    vols = m.query(
        "SELECT v.label, q.decision, q.fov_coverage, q.similarity FROM volumes v JOIN qc q USING (volume_id)"
    )
    assert len(vols) == 1 and vols[0]["label"] == "T1w"
    assert vols[0]["decision"] == "pass", vols
    assert out["snapshot_volumes"] == 1
