"""Manifest: schema registry, idempotent upserts, snapshots, named queries."""

from __future__ import annotations

import hashlib

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
    assert manifest.scalar("SELECT count(*) FROM snapshot_volumes") == 3  # {1, 2} and {1}
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
    added = {c: None for c in table("labels").column_names if c not in ("subject_id", "lesion")}
    assert rows == [{"subject_id": "sub-1", "lesion": 1, **added}] and added


def _old_commit(con: duckdb.DuckDBPyConnection, volume_ids: list[str]) -> str:
    """The row-by-row commit this replaced (full copy of the members per snapshot), as the reference."""
    ids = sorted(set(volume_ids))
    snap = "snap-" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    con.executemany("INSERT OR REPLACE INTO old_members VALUES (?, ?)", [[snap, v] for v in ids])
    return snap


HISTORY = [  # curate runs: growth, a rating removing a volume, the same set again, a volume back, a subset
    [f"vol-{i}" for i in range(5)],
    [f"vol-{i}" for i in range(8)],
    [f"vol-{i}" for i in range(8) if i != 3],
    [f"vol-{i}" for i in range(8) if i != 3],
    [f"vol-{i}" for i in range(10)],
    ["vol-1", "vol-9"],
]


def test_set_based_commit_equals_the_old_row_by_row_commit_and_stores_membership_once(manifest):
    ref = duckdb.connect()
    ref.execute(
        "CREATE TABLE old_members (snapshot_id VARCHAR, volume_id VARCHAR, PRIMARY KEY (snapshot_id, volume_id))"
    )
    for ids in HISTORY:
        snap, _ = manifest.commit_snapshot(ids)
        assert snap == _old_commit(ref, ids)  # the same content address as before
    new = manifest.query("SELECT snapshot_id, volume_id FROM snapshot_volumes ORDER BY ALL")
    old = ref.execute("SELECT snapshot_id, volume_id FROM old_members ORDER BY ALL").fetchall()
    assert [(r["snapshot_id"], r["volume_id"]) for r in new] == old and len(old) == 5 + 8 + 7 + 10 + 2
    assert manifest.count("snapshots") == 5
    # one row per unbroken run of membership: one per volume, plus vol-3's second run after its removal
    spans = manifest.query("SELECT volume_id, first_seq, last_seq FROM snapshot_spans ORDER BY ALL")
    assert len(spans) == 10 + 1 and {"volume_id": "vol-3", "first_seq": 1, "last_seq": 2} in spans
    assert {r["volume_id"] for r in spans if r["last_seq"] is None} == {"vol-1", "vol-9"}
    rows = {r["volume_id"] for r in snapshot_members_of(manifest, manifest.commit_snapshot(HISTORY[2])[0])}
    assert rows == set(HISTORY[2])


def snapshot_members_of(m: Manifest, snap: str) -> list[dict]:
    return m.query("SELECT volume_id FROM snapshot_volumes WHERE snapshot_id = ?", [snap])


def test_an_old_full_copy_warehouse_is_migrated_to_spans(tmp_path):
    m = Manifest(tmp_path)
    with m.connect() as con:  # the layout before spans: a full copy of the members per snapshot
        con.execute("CREATE TABLE snapshots (snapshot_id VARCHAR PRIMARY KEY, n_volumes INTEGER, created_at TIMESTAMP)")
        con.execute("CREATE TABLE snapshot_volumes (snapshot_id VARCHAR, volume_id VARCHAR)")
        for k, ids in enumerate(HISTORY[:3]):
            snap = _old_commit_id(ids)
            con.execute(
                "INSERT INTO snapshots VALUES (?, ?, TIMESTAMP '2026-01-01' + INTERVAL (?) DAY)", [snap, len(ids), k]
            )
            con.executemany("INSERT INTO snapshot_volumes VALUES (?, ?)", [[snap, v] for v in ids])
        before = con.execute("SELECT * FROM snapshot_volumes ORDER BY ALL").fetchall()
    m.init()
    m.init()  # idempotent
    after = m.query("SELECT snapshot_id, volume_id FROM snapshot_volumes ORDER BY ALL")
    assert [(r["snapshot_id"], r["volume_id"]) for r in after] == before
    assert m.count("snapshot_spans") == 8  # one run each (vol-3's ends at the second snapshot), not 5 + 8 + 7 rows
    snap, created = m.commit_snapshot(HISTORY[4])  # and the migrated lineage continues
    assert created and {r["volume_id"] for r in snapshot_members_of(m, snap)} == set(HISTORY[4])


def _old_commit_id(ids: list[str]) -> str:
    return "snap-" + hashlib.sha256("\n".join(sorted(set(ids))).encode()).hexdigest()[:16]
