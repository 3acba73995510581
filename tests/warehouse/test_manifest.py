"""Manifest: schema registry, idempotent upserts, snapshots, named queries."""

from __future__ import annotations

import duckdb
import pytest

from warehouse.manifest import Manifest
from warehouse.queries import latest_snapshot, status, volumes_to_shard
from warehouse.schema import TABLES, table


@pytest.fixture()
def manifest(tmp_path):
    return Manifest(tmp_path).init()


def test_every_registered_table_exists_with_its_columns(manifest):
    with manifest.connect(read_only=True) as con:
        for t in TABLES.values():
            cols = [r[0] for r in con.execute(f"DESCRIBE {t.name}").fetchall()]
            assert tuple(cols) == t.column_names


def test_init_is_idempotent(manifest):
    manifest.upsert("labels", [{"subject_id": "sub-1", "lesion": 1, "enlarged_ventricles": 0}])
    manifest.init()
    assert manifest.count("labels") == 1


def test_upsert_replaces_by_primary_key(manifest):
    manifest.upsert("labels", [{"subject_id": "sub-1", "lesion": 1, "enlarged_ventricles": 0}])
    manifest.upsert("labels", [{"subject_id": "sub-1", "lesion": 0, "enlarged_ventricles": 1}])
    rows = manifest.query("SELECT * FROM labels")
    assert len(rows) == 1 and rows[0]["lesion"] == 0 and rows[0]["enlarged_ventricles"] == 1


def test_upsert_rejects_unknown_columns(manifest):
    with pytest.raises(ValueError, match="no column"):
        manifest.upsert("labels", [{"subject_id": "x", "PatientName": "DOE^JOHN"}])


def test_unknown_table_names_valid_ones():
    with pytest.raises(KeyError, match="valid tables"):
        table("nope")


def test_snapshot_id_is_content_addressed(manifest):
    a, created_a = manifest.commit_snapshot(["vol-2", "vol-1"])
    b, created_b = manifest.commit_snapshot(["vol-1", "vol-2", "vol-1"])
    c, _ = manifest.commit_snapshot(["vol-1"])
    assert a == b and created_a and not created_b and c != a
    assert manifest.count("snapshots") == 2
    assert manifest.count("snapshot_volumes") == 3
    assert latest_snapshot(manifest) in {a, c}


def test_empty_snapshot_is_refused(manifest):
    with pytest.raises(ValueError, match="empty"):
        manifest.commit_snapshot([])


def test_rating_overrides_automatic_decision_for_sharding(manifest):
    manifest.upsert("volumes", [{"volume_id": v, "subject_id": "s", "label": "T1w"} for v in ("a", "b")])
    manifest.upsert("qc", [{"volume_id": "a", "decision": "pass"}, {"volume_id": "b", "decision": "fail"}])
    assert [r["volume_id"] for r in volumes_to_shard(manifest)] == ["a"]
    manifest.upsert(
        "ratings",
        [
            {"volume_id": "a", "rating": "fail", "rater": "r1"},
            {"volume_id": "b", "rating": "pass", "rater": "r1"},
        ],
    )
    assert [r["volume_id"] for r in volumes_to_shard(manifest)] == ["b"]


def test_status_on_empty_manifest(manifest):
    st = status(manifest)
    assert st["shards"] == 0 and st["latest_checkpoint"] is None and st["series_by_state"] == []


def test_read_only_connect_without_manifest_explains(tmp_path):
    with pytest.raises(FileNotFoundError, match="mrifoundry curate"), Manifest(tmp_path / "missing").connect(True):
        pass


def test_manifest_file_is_real_duckdb(manifest):
    con = duckdb.connect(str(manifest.path), read_only=True)
    assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
    con.close()


def test_init_adds_columns_registered_later(tmp_path):
    m = Manifest(tmp_path)
    with m.connect() as con:
        con.execute("CREATE TABLE labels (subject_id VARCHAR PRIMARY KEY, lesion INTEGER)")
        con.execute("INSERT INTO labels VALUES ('sub-1', 1)")
    m.init()
    rows = m.query("SELECT * FROM labels")
    assert rows == [{"subject_id": "sub-1", "lesion": 1, "enlarged_ventricles": None, "updated_at": None}]
